"""Tenants on the real test cluster: namespaces with quota, limits, roles and bindings; client
certificates issued through a real CertificateSigningRequest; and the real apiserver's RBAC
deciding what each tenant's user may do. Jobs run on a kwok node of this test.

Every tenant gets a unique name per run; namespaces and any CSR left over are deleted by label.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

import juliarun
from juliarun.api import Context
from juliarun.backends.kubernetes import KubeClient, NodeTypeRule, Toleration
from juliarun.backends.kubernetes import tenants as tn
from juliarun.backends.kubernetes.manifests import MANAGED_BY, TENANT_LABEL
from juliarun.blocks import KubernetesCluster
from juliarun.errors import JobNotFoundError, PermissionDeniedError, QuotaExceededError
from juliarun.settings import load_settings
from juliarun.specs import Batch, JuliaParBatchWorkers, TenantSpec
from juliarun.storage import StorageCatalog
from tests.integration.fixtures.kubernetes import NodeFactory, kubeconfig_path, wait_for

pytestmark = pytest.mark.kubernetes

NODE_LABEL = "juliarun.io/tenant-test"


@pytest.fixture
def tenant_names(admin: KubeClient, kube_api: client.ApiClient) -> Iterator[tuple[str, str]]:
    """Two unique tenant names; their namespaces (and any CSR of theirs) are deleted after."""
    run = uuid.uuid4().hex[:6]
    names = (f"ta-{run}", f"tb-{run}")
    yield names
    selector = f"{MANAGED_BY}=juliarun,{TENANT_LABEL} in ({','.join(names)})"
    for ns in admin.get("/api/v1/namespaces", labelSelector=selector).get("items") or []:
        tn.remove_tenant(admin, ns["metadata"]["name"])
    for csr in admin.get(tn.CSR_PATH, labelSelector=selector).get("items") or []:
        admin.delete(f"{tn.CSR_PATH}/{csr['metadata']['name']}")


def spec_for(name: str, user: str) -> TenantSpec:
    return TenantSpec(
        name=name,
        quota={"cpu": "1", "memory": "2Gi", "pods": 5, "jobs": 3},
        users=[{"name": user, "role": "edit"}, {"name": f"{name}-viewers", "kind": "Group"}],
    )


@pytest.fixture
def fake_node(kwok_nodes: NodeFactory) -> dict[str, NodeTypeRule]:
    """One kwok node of this test, and a node-type map whose ``spot`` type means that node."""
    tag = uuid.uuid4().hex[:8]
    kwok_nodes(1, labels={NODE_LABEL: tag})
    rule = NodeTypeRule(
        labels={NODE_LABEL: tag},
        tolerations=[Toleration(key="kwok.x-k8s.io/node", value="fake", effect="NoSchedule")],
    )
    return {"spot": rule}


def block_context(block: KubernetesCluster, home: Path, name: str) -> Context:
    """What ``juliarun.init(<saved block name>)`` gives, for a block not saved."""
    settings = load_settings()
    return Context(
        name,
        block.backend(),
        block.log_store(),
        block.metric_store(),
        StorageCatalog(home / "storage.json"),
        settings,
    )


def job(name: str, **extra: Any) -> Batch:
    return Batch(name, ["sleep", "600"], cpu="100m", memory="64Mi", node_type="spot", **extra)


@pytest.mark.kwok
# its jobs in a tenant namespace are in every admin context's juliarun.list(): not beside others
@pytest.mark.serial
def test_tenant_users_manage_their_own_jobs_and_are_denied_elsewhere(
    admin: KubeClient,
    tenant_names: tuple[str, str],
    fake_node: dict[str, NodeTypeRule],
    juliarun_home: Path,
    kube_core: client.CoreV1Api,
) -> None:
    a, b = tenant_names
    created = tn.ensure_tenant(admin, spec_for(a, "alice"))
    tn.ensure_tenant(admin, spec_for(b, "bob"))
    assert [(o.kind, o.action) for o in created] == [
        ("Namespace", "created"),
        ("ResourceQuota", "created"),
        ("LimitRange", "created"),
        ("Role", "created"),
        ("Role", "created"),
        ("RoleBinding", "created"),
        ("RoleBinding", "created"),
    ]
    alice_kc = tn.issue_credentials(admin, a, "alice")
    bob_kc = tn.issue_credentials(admin, b, "bob")
    assert alice_kc["contexts"][0]["context"]["namespace"] == a
    assert admin.get(tn.CSR_PATH, labelSelector=tn.tenant_selector(a))["items"] == []

    def ctx_for(kc: dict[str, Any], namespace: str) -> Context:
        block = KubernetesCluster(kubeconfig=kc, namespace=namespace, node_types=fake_node)
        return block_context(block, juliarun_home, f"{namespace}-ctx")

    alice, bob = ctx_for(alice_kc, a), ctx_for(bob_kc, b)
    alice_in_b = ctx_for(alice_kc, b)
    try:
        # alice: submit, list, status, delete in her own namespace, with her own certificate
        juliarun.submit(alice, job("alice-job"))
        assert kube_core.read_namespace(a).metadata.labels[TENANT_LABEL] == a
        assert [j.name for j in juliarun.list(alice)] == ["alice-job"]
        wait_for(lambda: juliarun.status(alice, "alice-job").workers, 60, 0.5, "alice's worker")
        juliarun.submit(bob, job("bob-job"))
        assert [j.name for j in juliarun.list(bob)] == ["bob-job"]

        # alice against B: the real apiserver says 403, surfaced with the verb and namespace
        with pytest.raises(PermissionDeniedError) as denied:
            juliarun.list(alice_in_b)
        assert (denied.value.user, denied.value.verb, denied.value.namespace) == (
            "alice",
            "list",
            b,
        )
        assert f"may not list jobs.batch in namespace {b}" in str(denied.value)
        with pytest.raises(PermissionDeniedError) as denied:
            juliarun.delete(alice_in_b, "bob-job", force=True)
        assert (denied.value.verb, denied.value.namespace) == ("delete", b)
        with pytest.raises(PermissionDeniedError) as denied:  # a job naming B's tenant
            juliarun.submit(alice, job("sneaky", tenant=b))
        assert (denied.value.verb, denied.value.namespace) == ("create", b)
        # alice's own context sees only her namespace; bob's job is untouched
        with pytest.raises(JobNotFoundError):
            juliarun.status(alice, "bob-job")
        assert [j.name for j in juliarun.list(bob)] == ["bob-job"]

        # over A's quota (1 cpu): refused before anything is created, naming the quota
        greedy = JuliaParBatchWorkers(
            "greedy", "/mnt/x/w.jl", nworkers=3, cpu="500m", memory="64Mi", node_type="spot"
        )
        with pytest.raises(QuotaExceededError) as over:
            juliarun.submit(alice, greedy)
        assert over.value.quota == tn.QUOTA_NAME
        assert over.value.namespace == a
        assert ("requests.cpu", "1.5", "1") in over.value.problems
        assert f"ResourceQuota 'juliarun-tenant' in namespace '{a}'" in str(over.value)
        assert [j.name for j in juliarun.list(alice)] == ["alice-job"]

        assert juliarun.delete(alice, "alice-job", force=True)
        assert juliarun.list(alice) == []
        assert juliarun.delete(bob, "bob-job", force=True)
    finally:
        for ctx in (alice, bob, alice_in_b):
            ctx.close()


@pytest.mark.kwok
# its jobs in a tenant namespace are in every admin context's juliarun.list(): not beside others
@pytest.mark.serial
def test_a_tenant_job_submitted_by_the_admin_lands_in_the_tenant_namespace(
    admin: KubeClient,
    tenant_names: tuple[str, str],
    fake_node: dict[str, NodeTypeRule],
    kube_namespace: str,
    juliarun_home: Path,
) -> None:
    a, _ = tenant_names
    tn.ensure_tenant(admin, spec_for(a, "alice"))
    block = KubernetesCluster.from_kubeconfig(
        kubeconfig_path(), namespace=kube_namespace, node_types=fake_node
    )
    ctx = block_context(block, juliarun_home, "admin")
    try:
        juliarun.submit(ctx, job("team-job", tenant=a))
        placed = admin.get(f"/apis/batch/v1/namespaces/{a}/jobs/team-job")
        assert placed["metadata"]["labels"][TENANT_LABEL] == a
        fresh = block_context(block, juliarun_home, "admin")  # finds it without being told
        try:
            assert [(j.name, j.tenant) for j in juliarun.list(fresh)] == [("team-job", a)]
            assert juliarun.status(fresh, "team-job").name == "team-job"
            assert juliarun.delete(fresh, "team-job", force=True)
        finally:
            fresh.close()
        assert admin.get_or_none(f"/apis/batch/v1/namespaces/{a}/jobs/team-job") is None
    finally:
        ctx.close()


def test_ensure_tenant_converges_and_removes_stale_bindings(
    admin: KubeClient, tenant_names: tuple[str, str]
) -> None:
    a, _ = tenant_names
    tn.ensure_tenant(admin, spec_for(a, "alice"))
    changed = TenantSpec(
        name=a, quota={"cpu": "2", "pods": 5}, users=[{"name": "alice", "role": "view"}]
    )
    actions = {(o.kind, o.name): o.action for o in tn.ensure_tenant(admin, changed)}
    assert actions[("ResourceQuota", tn.QUOTA_NAME)] == "updated"
    assert actions[("RoleBinding", "juliarun-view-user-alice")] == "created"
    assert actions[("RoleBinding", "juliarun-edit-user-alice")] == "deleted"
    assert actions[("RoleBinding", f"juliarun-edit-group-{a}-viewers")] == "deleted"
    quota = admin.get(f"/api/v1/namespaces/{a}/resourcequotas/{tn.QUOTA_NAME}")
    assert quota["spec"]["hard"] == {"requests.cpu": "2", "pods": "5"}
    assert {o.action for o in tn.ensure_tenant(admin, changed)} == {"unchanged"}


@pytest.mark.prefect_server
def test_tenant_flow_is_idempotent(
    admin: KubeClient,
    tenant_names: tuple[str, str],
    kube_namespace: str,
    prefect_api_url: str,
    juliarun_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from juliarun.flows import ensure_tenant_flow

    monkeypatch.setenv("JULIARUN_KUBECONFIG", str(kubeconfig_path()))
    monkeypatch.setenv("JULIARUN_KUBE_NAMESPACE", kube_namespace)
    spec = spec_for(tenant_names[0], "alice")
    first = ensure_tenant_flow(spec, cluster="kubernetes")
    second = ensure_tenant_flow(spec, cluster="kubernetes")
    assert first["namespace"] == spec.name
    assert {row["action"] for row in first["objects"]} == {"created"}
    assert {row["action"] for row in second["objects"]} == {"unchanged"}
    key = ("kind", "name", "namespace")
    assert [[r[k] for k in key] for r in first["objects"]] == [
        [r[k] for k in key] for r in second["objects"]
    ]
    roles = admin.get(f"/apis/{tn.RBAC}/namespaces/{spec.name}/roles")["items"]
    assert sorted(r["metadata"]["name"] for r in roles) == ["juliarun-edit", "juliarun-view"]

    # the tenant's context as users get it: a saved block with alice's kubeconfig
    block_name = f"{spec.name}-alice"
    KubernetesCluster(
        kubeconfig=tn.issue_credentials(admin, spec.name, "alice"), namespace=spec.name
    ).save(block_name)
    try:
        ctx = juliarun.init(block_name)
        try:
            assert juliarun.list(ctx) == []
            with pytest.raises(PermissionDeniedError):
                juliarun.submit(ctx, Batch("elsewhere", ["true"], tenant=tenant_names[1]))
        finally:
            ctx.close()
    finally:
        KubernetesCluster.delete(block_name)
