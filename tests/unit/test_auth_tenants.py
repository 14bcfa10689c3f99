"""Tenants by identity: members are the apiserver's names for signed-in people (issuer-prefixed
users and groups) next to certificate users; Kubernetes' own system: names are refused."""

from __future__ import annotations

import pytest

from juliarun.backends.kubernetes import tenants as tn
from juliarun.errors import SpecError
from juliarun.specs import TenantSpec


def test_oidc_groups_of_two_issuers_and_a_certificate_user_are_bound() -> None:
    spec = TenantSpec(
        name="team-a",
        users=[
            {"name": "oidc1:team-a", "kind": "Group"},
            {"name": "oidc2:team-a", "kind": "Group", "role": "view"},
            {"name": "oidc1:alice"},
            {"name": "carol"},
        ],
    )
    bindings = tn.role_binding_manifests(spec)
    assert [(b["roleRef"]["name"], b["subjects"]) for b in bindings] == [
        (
            "juliarun-edit",
            [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "oidc1:team-a"}],
        ),
        (
            "juliarun-view",
            [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "oidc2:team-a"}],
        ),
        (
            "juliarun-edit",
            [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "oidc1:alice"}],
        ),
        (
            "juliarun-edit",
            [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"}],
        ),
    ]
    names = [b["metadata"]["name"] for b in bindings]
    # the same group name at two issuers: two bindings, DNS-safe names that never collide
    assert names[0].startswith("juliarun-edit-group-oidc1-team-a-")
    assert names[1].startswith("juliarun-view-group-oidc2-team-a-")
    assert names[3] == "juliarun-edit-user-carol"
    assert len(set(names)) == 4


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("system:authenticated", "Group"),
        ("system:masters", "Group"),
        ("SYSTEM:anonymous", "User"),
        ("system:serviceaccount:kube-system:default", "User"),
    ],
)
def test_kubernetes_system_names_are_refused(name: str, kind: str) -> None:
    with pytest.raises(SpecError) as err:
        TenantSpec(name="team-a", users=[{"name": name, "kind": kind}])
    [(field, rule)] = err.value.errors
    assert field == "users.0.name"
    assert rule.startswith(f"{name!r} is a Kubernetes system name")
