"""The test apiserver trusts two real OpenID Connect issuers at once (structured authentication
configuration): each issuer's users and groups arrive prefixed, RBAC applies to them, and tokens
that are not right are refused — a ``system:`` name, another audience, an expired token, a token
signed by a key the issuer never published.

Tokens come from the real issuers (``scripts/testenv token``: hydra and mockoidc through their
authorization-code flow with PKCE); only the unknown-key token is re-signed here, on purpose. The
apiserver is ``JULIARUN_OIDC_KUBE_API`` (default the test cluster's).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.integration.fixtures.kubernetes import MANAGED_BY, TEST_LABEL, wait_for
from tests.integration.fixtures.oidc import PREFIXES, OIDCIssuers, OIDCKube, claims

pytestmark = [pytest.mark.kubernetes, pytest.mark.oidc]

SSR_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def unique_user(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:6]}"


@pytest.mark.parametrize("issuer", ["1", "2"])
def test_a_user_of_each_issuer_is_authenticated_with_its_prefix(
    oidc_issuers: OIDCIssuers, oidc_kube: OIDCKube, issuer: str
) -> None:
    user = unique_user("alice")
    token = oidc_issuers.token(user, ["team-a", "admins"], issuer=issuer)
    assert claims(token)["iss"] == oidc_issuers.issuer_url(issuer)

    resp = oidc_kube.review(token)

    assert resp.status_code == 201, resp.text
    info = resp.json()["status"]["userInfo"]
    prefix = PREFIXES[issuer]
    assert info["username"] == f"{prefix}{user}"
    assert info["groups"] == [f"{prefix}team-a", f"{prefix}admins", "system:authenticated"]
    assert info["uid"] == (user if issuer == "1" else f"issuer2|{user}")
    assert info["extra"] == {
        "authentication.kubernetes.io/credential-id": [f"JTI={claims(token)['jti']}"]
    }


@pytest.fixture
def other_namespace(kube_core: client.CoreV1Api) -> Iterator[str]:
    name = f"jr-oidc-other-{uuid.uuid4().hex[:6]}"
    kube_core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=name, labels={MANAGED_BY: "juliarun", TEST_LABEL: name}
            )
        )
    )
    yield name
    try:
        kube_core.delete_namespace(name, grace_period_seconds=0)
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_rbac_binds_an_issuers_group_in_one_namespace_only(
    oidc_issuers: OIDCIssuers,
    oidc_kube: OIDCKube,
    kube_api: client.ApiClient,
    kube_namespace: str,
    other_namespace: str,
) -> None:
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        kube_namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        kube_namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="team-a-reads-pods"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
            ),
            subjects=[
                client.RbacV1Subject(
                    api_group="rbac.authorization.k8s.io", kind="Group", name="oidc1:team-a"
                )
            ],
        ),
    )
    member = unique_user("bob")
    member_token = oidc_issuers.token(member, ["team-a"], issuer="1")
    pods = f"/api/v1/namespaces/{kube_namespace}/pods"

    # The apiserver under test sees the binding once its informer has it.
    resp = wait_for(
        lambda: (r := oidc_kube.request("GET", pods, member_token)).status_code == 200 and r,
        30,
        0.2,
        f"{member} of oidc1:team-a to list pods in {kube_namespace}",
    )
    assert resp.json()["kind"] == "PodList"

    elsewhere = oidc_kube.request("GET", f"/api/v1/namespaces/{other_namespace}/pods", member_token)
    assert elsewhere.status_code == 403
    assert elsewhere.json()["message"] == (
        f'pods is forbidden: User "oidc1:{member}" cannot list resource "pods" in API group "" '
        f'in the namespace "{other_namespace}"'
    )

    # Not a member, and the same group name from the other issuer: neither is bound.
    outsider = unique_user("carol")
    for issuer, groups in (("1", ["team-b"]), ("2", ["team-a"])):
        token = oidc_issuers.token(outsider, groups, issuer=issuer)
        denied = oidc_kube.request("GET", pods, token)
        assert denied.status_code == 403, (issuer, denied.text)
        assert f'User "{PREFIXES[issuer]}{outsider}" cannot list' in denied.json()["message"]


@pytest.mark.parametrize("issuer", ["1", "2"])
@pytest.mark.parametrize(
    ("user", "groups"),
    [("system:admin", []), ("system:kube-controller-manager", []), ("mallory", ["system:masters"])],
)
def test_system_names_are_rejected(
    oidc_issuers: OIDCIssuers, oidc_kube: OIDCKube, issuer: str, user: str, groups: list[str]
) -> None:
    token = oidc_issuers.token(user, groups, issuer=issuer)
    payload = claims(token)
    # The issuer did sign these names; the apiserver's validation rules refuse them.
    assert payload["preferred_username"] == user
    assert payload.get("groups", []) == groups

    resp = oidc_kube.review(token)

    assert resp.status_code == 401, resp.text
    assert resp.json()["reason"] == "Unauthorized"


def test_a_token_for_another_audience_is_rejected(
    oidc_issuers: OIDCIssuers, oidc_kube: OIDCKube
) -> None:
    user = unique_user("dave")
    router_token = oidc_issuers.token(user, ["team-a"], issuer="1", client="juliarun-router")
    cli_token = oidc_issuers.token(user, ["team-a"], issuer="1")
    assert claims(router_token)["aud"] == ["juliarun-router"]
    assert claims(cli_token)["aud"] == ["juliarun-cli"]

    assert oidc_kube.review(router_token).status_code == 401
    assert oidc_kube.review(cli_token).status_code == 201


# a 3 s token lifetime: minting two tokens and a review must fit in it, so not on a loaded machine
@pytest.mark.serial
def test_an_expired_token_is_rejected(oidc_issuers: OIDCIssuers, oidc_kube: OIDCKube) -> None:
    user = unique_user("erin")
    fresh = oidc_issuers.token(user, ["team-a"], issuer="2", ttl=3)
    later = oidc_issuers.token(user, ["team-a"], issuer="2", ttl=3)
    assert claims(later)["exp"] - claims(later)["iat"] == 3

    # Valid while fresh (the apiserver never saw `later`, so nothing about it is cached).
    assert oidc_kube.review(fresh).status_code == 201
    time.sleep(max(0.0, claims(later)["exp"] + 1.5 - time.time()))

    resp = oidc_kube.review(later)

    assert resp.status_code == 401, resp.text


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def resign(token: str, key: rsa.RSAPrivateKey) -> str:
    """The same header (the issuer's kid) and claims, signed RS256 with ``key``."""
    header, payload, _ = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["alg"] == "RS256"
    signature = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


@pytest.mark.parametrize("issuer", ["1", "2"])
def test_a_token_signed_by_an_unknown_key_is_rejected(
    oidc_issuers: OIDCIssuers, oidc_kube: OIDCKube, issuer: str
) -> None:
    user = unique_user("frank")
    genuine = oidc_issuers.token(user, ["team-a"], issuer=issuer)
    other = oidc_issuers.token(user, ["team-a"], issuer=issuer)
    forged = resign(other, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert forged.split(".")[:2] == other.split(".")[:2]

    assert oidc_kube.review(genuine).status_code == 201
    resp = oidc_kube.review(forged)

    assert resp.status_code == 401, resp.text


def test_a_refused_sign_in_says_to_sign_in_again(
    oidc_issuers: OIDCIssuers, oidc_kube: OIDCKube
) -> None:
    """A signed-in user's 401 names their sign-in and `juliarun login`, not the kubeconfig
    (whose own credentials were never sent)."""
    from juliarun.backends.kubernetes import bearer_api_client
    from juliarun.backends.kubernetes.client import KubeApiError, KubeClient
    from juliarun.blocks import KubernetesCluster, OIDCCredentials
    from tests.integration.fixtures.kubernetes import kubeconfig_path

    issuer = claims(oidc_issuers.token(unique_user("gina"), issuer="1"))["iss"]
    cluster = KubernetesCluster(
        oidc=OIDCCredentials(issuer=issuer, client_id="juliarun-cli"),
        kubeconfig_path=str(kubeconfig_path()),
    )
    genuine = oidc_issuers.token(unique_user("gina"), ["team-a"], issuer="1")
    forged = resign(genuine, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    kube = KubeClient(
        bearer_api_client(lambda: forged, kubeconfig=kubeconfig_path()),
        unauthorized_hint=cluster.unauthorized_hint(),
        retries=0,
    )
    with pytest.raises(KubeApiError) as caught:
        kube.get("/api/v1/namespaces/default/pods")
    assert caught.value.status == 401
    assert caught.value.hint == (
        f"the apiserver refused your sign-in at {issuer} (expired, revoked or not trusted by "
        f"this cluster): run `juliarun login --issuer {issuer}` again"
    )
