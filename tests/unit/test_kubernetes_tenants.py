"""The tenant objects as pure dicts, the quota check's arithmetic, TenantSpec's rules, and the
403 error's parsing — no cluster."""

from __future__ import annotations

from decimal import Decimal

import pytest

from juliarun.backends.kubernetes import tenants as tn
from juliarun.backends.kubernetes.client import KubeApiError, KubeForbiddenError, api_error
from juliarun.backends.kubernetes.manifests import job_manifest
from juliarun.errors import PermissionDeniedError, QuotaExceededError, SpecError
from juliarun.specs import JuliaParBatchWorkers, TenantSpec


def spec(**extra: object) -> TenantSpec:
    return TenantSpec(
        name="team-a",
        quota={"cpu": 4, "memory": "8Gi", "gpu": 1, "pods": 10, "jobs": 5},
        users=[
            {"name": "alice"},
            {"name": "Data.Team@corp", "kind": "Group", "role": "view"},
        ],
        **extra,
    )


def test_every_object_is_labelled_and_in_the_tenant_namespace() -> None:
    objs = tn.tenant_manifests(spec())
    assert [o["kind"] for o in objs] == [
        "Namespace",
        "ResourceQuota",
        "LimitRange",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
    ]
    for obj in objs:
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "juliarun",
            "juliarun.io/tenant": "team-a",
        }
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "team-a"
    assert objs[0]["metadata"]["name"] == "team-a"


def test_quota_maps_each_limit() -> None:
    assert tn.quota_manifest(spec())["spec"]["hard"] == {
        "requests.cpu": "4",
        "requests.memory": "8Gi",
        "limits.memory": "8Gi",
        "requests.nvidia.com/gpu": "1",
        "pods": "10",
        "count/jobs.batch": "5",
    }
    assert tn.quota_hard(TenantSpec(name="t")) == {}


def test_limit_range_defaults() -> None:
    limits = tn.limit_range_manifest(spec())["spec"]["limits"]
    assert limits == [
        {
            "type": "Container",
            "default": {"memory": "1Gi"},
            "defaultRequest": {"cpu": "100m", "memory": "256Mi"},
        }
    ]
    custom = spec(defaults={"cpu_limit": "2", "cpu_request": None, "memory_request": None})
    assert tn.limit_range_manifest(custom)["spec"]["limits"][0] == {
        "type": "Container",
        "default": {"cpu": "2", "memory": "1Gi"},
    }


def test_roles_are_least_privilege() -> None:
    def grants(role: str) -> set[tuple[str, str]]:
        rules = tn.role_manifest("team-a", role)["rules"]
        return {(res, verb) for r in rules for res in r["resources"] for verb in r["verbs"]}

    edit, view = grants("edit"), grants("view")
    assert ("jobs", "create") in edit and ("jobs", "delete") in edit and ("jobs", "patch") in edit
    assert ("pods", "deletecollection") in edit and ("pods/log", "get") in edit
    assert ("resourcequotas", "list") in edit
    assert view <= edit
    assert not {v for _, v in view} & {"create", "delete", "deletecollection", "patch", "update"}
    for rule in tn.role_manifest("team-a", "edit")["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]


def test_one_binding_per_user_or_group() -> None:
    bindings = tn.role_binding_manifests(spec())
    names = [b["metadata"]["name"] for b in bindings]
    assert names[0] == "juliarun-edit-user-alice"
    assert names[1].startswith("juliarun-view-group-data-team-corp-")  # slug + hash
    assert bindings[1]["roleRef"]["name"] == "juliarun-view"
    assert bindings[1]["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "Data.Team@corp"}
    ]


def test_tenant_spec_rules() -> None:
    for bad, field in [
        ({"name": "default"}, "name"),
        ({"name": "kube-system"}, "name"),
        ({"name": "Team_A"}, "name"),
        ({"name": "t", "quota": {"cpu": "lots"}}, "quota.cpu"),
        ({"name": "t", "quota": {"pods": -1}}, "quota.pods"),
        ({"name": "t", "defaults": {"memory_request": "2Gi"}}, "defaults.memory_request"),
        ({"name": "t", "users": [{"name": "a"}, {"name": "a", "role": "view"}]}, "users"),
        ({"name": "t", "users": [{"name": "a", "role": "admin"}]}, "users.0.role"),
    ]:
        with pytest.raises(SpecError) as err:
            TenantSpec(**bad)  # type: ignore[arg-type]
        assert field in [f for f, _ in err.value.errors], (bad, err.value.errors)


def test_job_needs_and_quota_problems() -> None:
    job = JuliaParBatchWorkers("w", "/mnt/x/w.jl", nworkers=3, cpu="500m", memory="1Gi", gpu=1)
    needs = tn.job_needs(job_manifest(job, {}, namespace="team-a", image="julia"))
    assert needs["requests.cpu"] == Decimal("1.5")
    assert needs["limits.memory"] == needs["requests.memory"] == 3 * 2**30
    assert needs["requests.nvidia.com/gpu"] == 3
    assert needs["pods"] == 3 and needs["count/jobs.batch"] == 1
    quota = tn.quota_manifest(spec())
    assert tn.quota_problems(needs, quota) == [("requests.nvidia.com/gpu", "3", "1")]
    err = QuotaExceededError("w", "team-a", tn.QUOTA_NAME, tn.quota_problems(needs, quota))
    assert "ResourceQuota 'juliarun-tenant' in namespace 'team-a'" in str(err)
    assert "requests.nvidia.com/gpu needs 3 > hard 1" in str(err)


def test_rbac_denial_is_a_permission_error_naming_verb_and_namespace() -> None:
    body = {
        "reason": "Forbidden",
        "message": 'jobs.batch "x" is forbidden: User "alice" cannot delete resource "jobs" '
        'in API group "batch" in the namespace "team-b"',
    }
    err = api_error("DELETE", "/apis/batch/v1/namespaces/team-b/jobs/x", 403, body)
    assert isinstance(err, KubeForbiddenError)
    assert isinstance(err, PermissionDeniedError) and isinstance(err, KubeApiError)
    assert (err.user, err.verb, err.resource, err.namespace) == (
        "alice",
        "delete",
        "jobs.batch",
        "team-b",
    )
    assert "user alice may not delete jobs.batch in namespace team-b" in err.hint
    quota = api_error("POST", "/x", 403, {"message": "exceeded quota: q, requested: pods=1"})
    assert type(quota) is KubeApiError
    plain = PermissionDeniedError("no", user="u", verb="get", resource="pods", namespace="n")
    assert "lack `get` on pods in namespace n" in plain.hint


def test_quantities_compare_by_value() -> None:
    assert tn._quantities_equal({"cpu": "1000m"}, {"cpu": "1"})
    assert not tn._quantities_equal({"cpu": "2"}, {"cpu": "1"})
    assert tn._quantities_equal([{"a": "x"}], [{"a": "x"}])
