"""A tenant's pods cannot reach outside what the tenant was given, checked by the real
apiserver: the ValidatingAdmissionPolicy ``ensure_tenant`` installs refuses, in a tenant's
namespace and for every creator (here the cluster admin, so RBAC is not what refuses), the
node's network, PID and IPC namespaces, privileged containers, capabilities beyond the baseline
set, host ports, and any hostPath but the directories the tenant was granted, exactly.
Another namespace is not bound by it. Pods name a scheduler nobody runs: they stay Pending,
untouched."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import juliarun
from juliarun.backends.kubernetes import KubeClient
from juliarun.backends.kubernetes import tenants as tn
from juliarun.backends.kubernetes.client import KubeApiError, ns_path
from juliarun.backends.kubernetes.manifests import MANAGED_BY, TENANT_LABEL
from juliarun.blocks import KubernetesCluster
from juliarun.errors import JuliaRunError
from juliarun.specs import Batch, TenantSpec
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.integration.test_tenants import block_context

pytestmark = pytest.mark.kubernetes


@pytest.fixture
def tenant(admin: KubeClient, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A tenant granted one directory (``granted``); removed after."""
    name = f"tp-{uuid.uuid4().hex[:6]}"
    granted = tmp_path / "granted"
    (granted / "sub").mkdir(parents=True)
    tn.ensure_tenant(admin, TenantSpec(name=name, host_paths=[str(granted)]))
    yield name, granted
    selector = f"{MANAGED_BY}=juliarun,{TENANT_LABEL}={name}"
    for ns in admin.get("/api/v1/namespaces", labelSelector=selector).get("items") or []:
        tn.remove_tenant(admin, ns["metadata"]["name"])


def pod(name: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "c", "image": "pause", **spec.pop("container", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "schedulerName": "juliarun.io/no-such-scheduler",
            "containers": [container],
            **spec,
        },
    }


def host_path(path: str | Path) -> dict[str, Any]:
    return {"volumes": [{"name": "h", "hostPath": {"path": str(path)}}]}


def refused(admin: KubeClient, namespace: str, body: dict[str, Any]) -> str:
    """The apiserver's message for a refused ``body`` (403, naming the policy)."""
    with pytest.raises(KubeApiError) as err:
        admin.post(ns_path(namespace, "pods"), body)
    assert err.value.status == 403, err.value
    message = str(err.value.body.get("message"))
    assert f"ValidatingAdmissionPolicy '{tn.POD_POLICY}'" in message, message
    return message


def test_a_tenant_pod_gets_only_what_the_tenant_was_given(
    admin: KubeClient, tenant: tuple[str, Path], kube_namespace: str
) -> None:
    ns, granted = tenant
    escapes = {
        "hostnet": {"hostNetwork": True},
        "hostpid": {"hostPID": True},
        "hostipc": {"hostIPC": True},
        "priv": {"container": {"securityContext": {"privileged": True}}},
        "sysadmin": {"container": {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}},
        "hostport": {"container": {"ports": [{"containerPort": 80, "hostPort": 8080}]}},
        "root": host_path("/"),
        "below": host_path(granted / "sub"),  # a symlink there would lead anywhere
        "seccomp": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        "seccomp-c": {"container": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}},
        "apparmor": {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}},
        "selinux": {"container": {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}},
        "selinux-user": {"securityContext": {"seLinuxOptions": {"user": "system_u"}}},
        "unmasked": {
            "hostUsers": False,
            "container": {"securityContext": {"procMount": "Unmasked"}},
        },
        "sysctl": {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]}},
    }  # (a hostPath with '..' the apiserver's own validation refuses)
    messages = {name: refused(admin, ns, pod(name, **spec)) for name, spec in escapes.items()}
    assert "hostNetwork, hostPID, hostIPC: a tenant's pods may not use" in messages["hostnet"]
    assert "securityContext.privileged" in messages["priv"]
    assert "securityContext.capabilities.add" in messages["sysadmin"]
    assert "ports[].hostPort" in messages["hostport"]
    assert (
        f"volumes[].hostPath: / is not a directory tenant {ns} may mount (its host_paths: "
        f"{granted})"
    ) in messages["root"]
    assert f"volumes[].hostPath: {granted}/sub is not a directory" in messages["below"]
    assert "securityContext.seccompProfile" in messages["seccomp"]
    assert "securityContext.seccompProfile" in messages["seccomp-c"]
    assert "securityContext.appArmorProfile" in messages["apparmor"]
    assert "securityContext.seLinuxOptions" in messages["selinux"]
    assert "securityContext.seLinuxOptions" in messages["selinux-user"]
    assert "securityContext.procMount" in messages["unmasked"]
    assert "securityContext.sysctls" in messages["sysctl"]
    # the AppArmor annotation (older than the field) is checked too
    annotated = pod("apparmor-annotation")
    annotated["metadata"]["annotations"] = {
        "container.apparmor.security.beta.kubernetes.io/c": "unconfined"
    }
    assert "securityContext.appArmorProfile" in refused(admin, ns, annotated)
    # an init container is a container too
    init = pod("init-priv")
    init["spec"]["initContainers"] = [
        {"name": "i", "image": "pause", "securityContext": {"privileged": True}}
    ]
    assert "securityContext.privileged" in refused(admin, ns, init)

    # what the tenant was given, and the baseline capabilities, are admitted
    admitted = {
        "granted": host_path(granted),
        "bind": {"container": {"securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}},
        "port": {"container": {"ports": [{"containerPort": 80}]}},
        "profiles": {
            "securityContext": {
                "seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "RuntimeDefault"},
                "seLinuxOptions": {"type": "container_t"},
                "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 0"}],
            }
        },
    }
    for name, spec in admitted.items():
        admin.post(ns_path(ns, "pods"), pod(name, **spec))
    names = {p["metadata"]["name"] for p in admin.get(ns_path(ns, "pods"))["items"]}
    assert names == set(admitted)

    # the same escape in a namespace that is no tenant's: the policy does not bind there
    admin.post(ns_path(kube_namespace, "pods"), pod("hostnet", hostNetwork=True))


def test_a_job_outside_the_granted_directories_is_refused_at_submit(
    admin: KubeClient,
    tenant: tuple[str, Path],
    kube_namespace: str,
    juliarun_home: Path,
    tmp_path: Path,
) -> None:
    """Through juliarun: a job of the tenant whose host storage was not granted is refused
    when it is submitted (its Job is checked, not only its pods later), the message naming
    the path; nothing is created."""
    ns, granted = tenant
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    block = KubernetesCluster.from_kubeconfig(kubeconfig_path(), namespace=kube_namespace)
    ctx = block_context(block, juliarun_home, "admin")
    try:
        juliarun.define_storage(ctx, name="data", kind="host", path=str(elsewhere))
        job = Batch("reach", ["ls", "/mnt/data"], storage=["data"], tenant=ns, cpu="10m")
        with pytest.raises(JuliaRunError) as err:
            juliarun.submit(ctx, job)
        assert f"{elsewhere} is not a directory tenant {ns} may mount" in str(err.value)
        assert "TenantSpec.host_paths" in str(err.value)  # the hint: not an RBAC matter
        assert admin.get(f"/apis/batch/v1/namespaces/{ns}/jobs")["items"] == []
        # the same job on storage in the granted directory is admitted
        juliarun.define_storage(ctx, name="data", kind="host", path=str(granted))
        juliarun.submit(ctx, job)
        assert juliarun.delete(ctx, "reach", force=True)
    finally:
        ctx.close()
