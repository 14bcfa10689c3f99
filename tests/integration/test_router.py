"""The authenticating router against the real test issuers (hydra and mockoidc) and the real
apiserver (SubjectAccessReviews against tenants' RoleBindings): every refusal of issue 12's list
that a bearer client can reach, the identity the upstream gets, streaming and websockets.

A router replica runs as its own process (``python -m juliarun.router``) with a file route table;
the upstream is an echo server that answers with the headers it received.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc import jwt
from joserfc.jwk import KeySet

from juliarun.backends.kubernetes import KubeClient, api_client
from juliarun.backends.kubernetes import tenants as tn
from juliarun.router import FileRoutes, Route
from juliarun.specs import TenantSpec
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.integration.fixtures.oidc import OIDCIssuers, claims
from tests.integration.router_env import (
    EchoHandler,
    RouterProcess,
    echo_server,
    raw_request,
    router_config,
    start_router,
)

pytestmark = [pytest.mark.kubernetes, pytest.mark.oidc]

HYDRA_ADMIN = "http://127.0.0.1:4445"


@dataclass
class Setup:
    router: RouterProcess
    routes: FileRoutes
    upstream: str
    a: str  # tenant of alice (issuer 1, a User binding, edit)
    b: str  # tenant of bob's group (issuer 2, a Group binding, view)
    alice: str
    bob: str

    def get(self, path: str, token: str | None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(self.router.url + path, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def setup(
    oidc_issuers: OIDCIssuers, kube_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    run = uuid.uuid4().hex[:6]
    a, b = f"router-a-{run}", f"router-b-{run}"
    alice, bob = f"alice-{run}", f"bob-{run}"
    admin = KubeClient(api_client(kubeconfig=kubeconfig_path()))
    tn.ensure_tenant(admin, TenantSpec(name=a, users=[{"name": f"oidc1:{alice}"}]))
    tn.ensure_tenant(
        admin,
        TenantSpec(name=b, users=[{"name": f"oidc2:team-{run}", "kind": "Group", "role": "view"}]),
    )
    tmp = tmp_path_factory.mktemp("router")
    routes = FileRoutes(tmp / "routes.json")
    config = router_config(
        tmp, routes={"kind": "file", "path": str(routes.path)}, kubeconfig=str(kubeconfig_path())
    )
    router = start_router(config)
    try:
        with echo_server() as upstream:
            routes.put(Route(namespace=a, name="echo", upstream=upstream))
            routes.put(Route(namespace=b, name="echo", upstream=upstream))
            yield Setup(router, routes, upstream, a, b, alice, bob)
    finally:
        router.stop()
        for name in (a, b):
            tn.remove_tenant(admin, name)
        admin.close()


@pytest.fixture(scope="module")
def alice_token(setup: Setup, oidc_issuers: OIDCIssuers) -> str:
    return oidc_issuers.token(setup.alice, ["staff"], issuer="1")


@pytest.fixture(scope="module")
def bob_token(setup: Setup, oidc_issuers: OIDCIssuers) -> str:
    run = setup.a.rsplit("-", 1)[1]
    return oidc_issuers.token(setup.bob, [f"team-{run}"], issuer="2")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "=="))
    return header, claims(token)


def forge(header: dict[str, Any], payload: dict[str, Any], key: rsa.RSAPrivateKey | None) -> str:
    """A JWT with ``header`` and ``payload``, RS256-signed by ``key`` (none: empty signature)."""
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if key is None:
        return signing + "."
    signature = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing}.{_b64(signature)}"


def test_the_owner_reaches_the_service_with_its_identity_and_nothing_spoofed(
    setup: Setup, alice_token: str
) -> None:
    resp = setup.get(
        f"/s/{setup.a}/echo/some/path?x=1",
        alice_token,
        **{
            "X-Forwarded-For": "10.6.6.6",
            "X-Forwarded-User": "admin",
            "X-Remote-User": "system:admin",
            "X-Remote-Group": "system:masters",
            "X_Remote_User": "admin",
            "X-Auth-Request-Email": "root@example.com",
            "Forwarded": "for=10.6.6.6",
            "X-JuliaRun-Assertion": "forged",
            "X-Kept": "yes",
        },
    )
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    headers = seen["headers"]
    assert seen["path"] == "/some/path?x=1"
    assert headers["x-remote-user"] == [f"oidc1:{setup.alice}"]
    assert headers["x-remote-group"] == ["oidc1:staff"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-prefix"] == [f"/s/{setup.a}/echo"]
    assert headers["x-kept"] == ["yes"]
    for gone in ("authorization", "forwarded", "x-forwarded-user", "x-auth-request-email"):
        assert gone not in headers
    assert "x_remote_user" not in headers
    # the assertion: signed by the router, for this service, short-lived
    [assertion] = headers["x-juliarun-assertion"]
    keys = KeySet.import_key_set(httpx.get(setup.router.url + "/.juliarun/jwks.json").json())
    token = jwt.decode(assertion, keys, algorithms=["ES256"])
    assert token.claims["sub"] == f"oidc1:{setup.alice}"
    assert token.claims["aud"] == f"{setup.a}/echo"
    assert token.claims["groups"] == ["oidc1:staff"]
    assert 0 < token.claims["exp"] - token.claims["iat"] <= 60


def test_a_request_body_is_passed_on_with_its_length(setup: Setup, alice_token: str) -> None:
    resp = httpx.post(
        f"{setup.router.url}/s/{setup.a}/echo/form",
        content=b"a=1&b=2",
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    assert (seen["method"], seen["body"]) == ("POST", "a=1&b=2")
    assert seen["headers"]["content-length"] == ["7"]
    assert "transfer-encoding" not in seen["headers"]


def test_a_group_member_of_the_second_issuer_reaches_its_tenant_only(
    setup: Setup, bob_token: str, alice_token: str
) -> None:
    resp = setup.get(f"/s/{setup.b}/echo/", bob_token)
    assert resp.status_code == 200, resp.text
    assert resp.json()["headers"]["x-remote-user"] == [f"oidc2:{setup.bob}"]
    # another tenant's service: refused, and so is a name that does not exist there (no probing)
    assert setup.get(f"/s/{setup.a}/echo/", bob_token).status_code == 403
    assert setup.get(f"/s/{setup.a}/nothing-here/", bob_token).status_code == 403
    assert setup.get(f"/s/{setup.b}/echo/", alice_token).status_code == 403
    # a member asking for a route that does not exist gets 404
    assert setup.get(f"/s/{setup.b}/nothing-here/", bob_token).status_code == 404


def test_requests_without_a_valid_token_are_refused(
    setup: Setup, oidc_issuers: OIDCIssuers, alice_token: str
) -> None:
    path = f"/s/{setup.a}/echo/"
    header, payload = _parts(alice_token)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong_audience = oidc_issuers.token(setup.alice, issuer="1", client="juliarun-router")
    assert claims(wrong_audience)["aud"] == ["juliarun-router"]
    refused = {
        "no token": None,
        "not a JWT": "abc",
        "alg none": forge({**header, "alg": "none"}, payload, None),
        "alg HS256": forge({**header, "alg": "HS256"}, payload, stranger),
        "unknown key, issuer's kid": forge(header, payload, stranger),
        "unknown kid": forge({**header, "kid": "not-published"}, payload, stranger),
        "untrusted issuer": forge(header, {**payload, "iss": "https://evil.example"}, stranger),
        "claims of issuer 2, key of nobody": forge(
            header, {**payload, "iss": oidc_issuers.issuer_url("2")}, stranger
        ),
        "wrong audience": wrong_audience,
        "system: user": forge(header, {**payload, "sub": "system:admin"}, stranger),
    }
    for why, token in refused.items():
        resp = setup.get(path, token)
        assert resp.status_code == 401, (why, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer"), why
    assert setup.get(path, alice_token).status_code == 200
    assert setup.get(path, None, Authorization=f"Basic {alice_token}").status_code == 401


def test_an_expired_token_is_refused_even_after_it_was_accepted(
    setup: Setup, oidc_issuers: OIDCIssuers
) -> None:
    run = setup.a.rsplit("-", 1)[1]
    token = oidc_issuers.token(setup.bob, [f"team-{run}"], issuer="2", ttl=3)
    assert setup.get(f"/s/{setup.b}/echo/", token).status_code == 200
    time.sleep(max(0.0, claims(token)["exp"] + 1.2 - time.time()))
    assert setup.get(f"/s/{setup.b}/echo/", token).status_code == 401


def test_a_key_rotated_at_the_issuer_is_picked_up_without_a_restart(
    setup: Setup, oidc_issuers: OIDCIssuers
) -> None:
    before = oidc_issuers.token(setup.alice, issuer="1")
    assert setup.get(f"/s/{setup.a}/echo/", before).status_code == 200
    created = httpx.post(
        f"{HYDRA_ADMIN}/admin/keys/hydra.openid.id-token",
        json={"alg": "RS256", "use": "sig", "kid": f"router-test-{uuid.uuid4().hex[:8]}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    after = oidc_issuers.token(setup.alice, issuer="1")
    assert _parts(after)[0]["kid"] != _parts(before)[0]["kid"]
    assert _parts(after)[0]["kid"] == created.json()["keys"][0]["kid"]
    assert setup.get(f"/s/{setup.a}/echo/", after).status_code == 200
    assert setup.get(f"/s/{setup.a}/echo/", before).status_code == 200  # until it expires


@pytest.mark.parametrize(
    "target",
    [
        "/s/{a}/echo/x/../../{b}/echo/",
        "/s/{a}/echo/%2e%2e/y",
        "/s/{a}/echo/x%2Fy",
        "/s/{a}/echo/x%5cy",
    ],
)
def test_dot_segments_and_encoded_slashes_are_refused(
    setup: Setup, alice_token: str, target: str
) -> None:
    assert raw_request(setup.router.port, target.format(a=setup.a, b=setup.b), alice_token) == 400


def test_a_streamed_response_passes_through_as_it_comes(setup: Setup, alice_token: str) -> None:
    EchoHandler.release.clear()
    url = f"{setup.router.url}/s/{setup.a}/echo/stream"
    with httpx.stream(
        "GET", url, headers={"Authorization": f"Bearer {alice_token}"}, timeout=30
    ) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(lines) == "one"  # the upstream holds "two" back until we have "one"
        EchoHandler.release.set()
        assert next(lines) == "two"


def test_a_websocket_passes_through_for_members_only(
    setup: Setup, alice_token: str, bob_token: str
) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    from websockets.sync.server import ServerConnection, serve

    def echo(ws: ServerConnection) -> None:
        user = ws.request.headers["X-Remote-User"] if ws.request else "?"
        for message in ws:
            ws.send(f"{user}: {message}")

    with serve(echo, "127.0.0.1", 0) as server:
        port = server.socket.getsockname()[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        setup.routes.put(Route(namespace=setup.a, name="ws", upstream=f"http://127.0.0.1:{port}"))
        url = setup.router.url.replace("http", "ws") + f"/s/{setup.a}/ws/chat"
        deadline = time.monotonic() + 5
        while True:  # the file route table is re-read within milliseconds
            status = httpx.get(setup.router.url + f"/.juliarun/routes/{setup.a}/ws").status_code
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        with connect(url, additional_headers={"Authorization": f"Bearer {alice_token}"}) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == f"oidc1:{setup.alice}: hi"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers={"Authorization": f"Bearer {bob_token}"})
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            connect(url)
        server.shutdown()


def test_the_router_keys_and_routes_are_published(setup: Setup) -> None:
    jwks = httpx.get(setup.router.url + "/.juliarun/jwks.json").json()
    assert [(k["kty"], k["crv"], k["alg"]) for k in jwks["keys"]] == [("EC", "P-256", "ES256")]
    assert "d" not in jwks["keys"][0]
    version = httpx.get(setup.router.url + f"/.juliarun/routes/{setup.a}/echo").json()["version"]
    assert version == setup.routes.read()[f"{setup.a}.echo"].version
    assert httpx.get(setup.router.url + "/.juliarun/routes/x/y").status_code == 404
