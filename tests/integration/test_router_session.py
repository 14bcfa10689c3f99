"""Browser sign-in through the router: the authorization-code flow with PKCE against the real
hydra (the router's confidential client), ending in a secure host-only cookie; the session
reaches the tenant's service, and the sign-in cannot be bent into an open redirect.

The "browser" is an HTTP client that follows the issuer's redirects (the test issuer signs in
whoever ``login_hint`` names, standing for the user typing their name) and stops at the router's
registered redirect URI (``https://127.0.0.1/oauth2/callback``), whose query it hands to the
router's callback path, as a front proxy on port 443 would.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from juliarun.backends.kubernetes import KubeClient, api_client
from juliarun.backends.kubernetes import tenants as tn
from juliarun.router import FileRoutes, Route
from juliarun.specs import TenantSpec
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.integration.fixtures.oidc import OIDCIssuers
from tests.integration.router_env import RouterProcess, echo_server, router_config, start_router

pytestmark = [pytest.mark.kubernetes, pytest.mark.oidc]

REDIRECT = "https://127.0.0.1/oauth2/callback"
HTML = {"Accept": "text/html,application/xhtml+xml"}


@dataclass
class Env:
    router: RouterProcess
    a: str
    alice: str
    issuers: OIDCIssuers

    def url(self, path: str) -> str:
        return self.router.url + path


@pytest.fixture(scope="module")
def env(
    oidc_issuers: OIDCIssuers, kube_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    run = uuid.uuid4().hex[:6]
    a, alice = f"router-ca-{run}", f"alice-{run}"
    admin = KubeClient(api_client(kubeconfig=kubeconfig_path()))
    tn.ensure_tenant(admin, TenantSpec(name=a, users=[{"name": f"oidc1:{alice}"}]))
    tmp = tmp_path_factory.mktemp("router-session")
    routes = FileRoutes(tmp / "routes.json")
    issuer1 = oidc_issuers.config["issuers"]["1"]
    session = {
        "issuer": issuer1["issuer"],
        "client_id": "juliarun-router",
        "client_secret": issuer1["clients"]["juliarun-router"]["secret"],
        "redirect_uri": REDIRECT,
        "token_auth": "client_secret_post",  # as scripts/testenv.d/oidc.sh registers it
    }
    config = router_config(
        tmp,
        routes={"kind": "file", "path": str(routes.path)},
        kubeconfig=str(kubeconfig_path()),
        session=session,
    )
    router = start_router(config)
    try:
        with echo_server() as upstream:
            routes.put(Route(namespace=a, name="echo", upstream=upstream))
            yield Env(router, a, alice, oidc_issuers)
    finally:
        router.stop()
        tn.remove_tenant(admin, a)
        admin.close()


def set_cookies(resp: httpx.Response) -> dict[str, str]:
    """name → the whole Set-Cookie value."""
    return {v.split("=", 1)[0]: v for v in resp.headers.get_list("set-cookie")}


def value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def sign_in_at_issuer(env: Env, authorize_url: str, user: str) -> str:
    """Follow the issuer's redirects for ``user``; the callback URL it sends the browser to."""
    url = authorize_url + "&login_hint=" + user
    ca = ssl.create_default_context(cafile=str(env.issuers.ca))
    with httpx.Client(verify=ca, timeout=15) as browser:
        for _ in range(20):
            if url.startswith(REDIRECT):
                return url
            resp = browser.get(url)
            assert resp.status_code in (302, 303), (url, resp.status_code, resp.text[:300])
            url = str(httpx.URL(url).join(resp.headers["location"]))
    raise AssertionError("the issuer never sent the browser back")


def test_a_browser_signs_in_and_its_session_reaches_the_service(env: Env) -> None:
    page = f"/s/{env.a}/echo/page?x=1"
    start = httpx.get(env.url(page), headers=HTML)
    assert start.status_code == 302
    authorize = start.headers["location"]
    assert authorize.startswith(env.issuers.issuer_url("1") + "/oauth2/auth?")
    assert "code_challenge_method=S256" in authorize and "client_id=juliarun-router" in authorize
    pending = set_cookies(start)["__Host-juliarun-login"]
    assert "; Secure" in pending and "; HttpOnly" in pending and "SameSite=Lax" in pending
    assert "Path=/" in pending and "Domain" not in pending

    callback = sign_in_at_issuer(env, authorize, env.alice)
    query = urlsplit(callback).query
    login_cookie = {"Cookie": f"__Host-juliarun-login={value(pending)}"}

    # a state that is not the pending sign-in's, or no pending sign-in: refused
    tampered = query.replace("state=", "state=x")
    assert (
        httpx.get(env.url(f"/oauth2/callback?{tampered}"), headers=login_cookie).status_code == 400
    )
    assert httpx.get(env.url(f"/oauth2/callback?{query}")).status_code == 400

    done = httpx.get(env.url(f"/oauth2/callback?{query}"), headers=login_cookie)
    assert done.status_code == 302, done.text
    assert done.headers["location"] == page  # back where the browser started, a local path
    session = set_cookies(done)["__Host-juliarun"]
    assert "; Secure" in session and "; HttpOnly" in session
    assert set_cookies(done)["__Host-juliarun-login"].startswith("__Host-juliarun-login=;")

    resp = httpx.get(
        env.url(page), headers={"Cookie": f"__Host-juliarun={value(session)}; theme=dark"}
    )
    assert resp.status_code == 200, resp.text
    seen = resp.json()["headers"]
    assert seen["x-remote-user"] == [f"oidc1:{env.alice}"]
    assert seen["cookie"] == ["theme=dark"]  # the router's cookie is not passed on

    # the code was used: a replay is refused by the issuer
    replay = httpx.get(env.url(f"/oauth2/callback?{query}"), headers=login_cookie)
    assert replay.status_code == 400


def test_a_session_of_a_non_member_is_refused(env: Env) -> None:
    start = httpx.get(env.url(f"/s/{env.a}/echo/"), headers=HTML)
    callback = sign_in_at_issuer(env, start.headers["location"], f"mallory-{uuid.uuid4().hex[:4]}")
    pending = value(set_cookies(start)["__Host-juliarun-login"])
    done = httpx.get(
        env.url(f"/oauth2/callback?{urlsplit(callback).query}"),
        headers={"Cookie": f"__Host-juliarun-login={pending}"},
    )
    assert done.status_code == 302
    session = value(set_cookies(done)["__Host-juliarun"])
    resp = httpx.get(env.url(f"/s/{env.a}/echo/"), headers={"Cookie": f"__Host-juliarun={session}"})
    assert resp.status_code == 403


@pytest.mark.parametrize(
    "rd",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "/%2F%2Fevil.example/",
        "/s/a/../../evil",
        "javascript:alert(1)",
        "/%5cevil.example",
        "/s/a/\r\nLocation: https://evil.example/",
    ],
)
def test_the_sign_in_is_no_open_redirect(env: Env, rd: str) -> None:
    resp = httpx.get(env.url("/.juliarun/login"), params={"rd": rd})
    assert resp.status_code == 400
    assert "location" not in resp.headers


def test_a_local_return_path_starts_a_sign_in(env: Env) -> None:
    resp = httpx.get(env.url("/.juliarun/login"), params={"rd": f"/s/{env.a}/echo/"})
    assert resp.status_code == 302
    assert resp.headers["location"].startswith(env.issuers.issuer_url("1") + "/oauth2/auth?")


def test_a_forged_session_cookie_is_refused(env: Env, tmp_path: Path) -> None:
    key = ECKey.generate_key("P-256")
    forged = jwt.encode(
        {"alg": "ES256", "kid": key.thumbprint()},
        {
            "iss": "http://127.0.0.1:8080",
            "aud": "juliarun-router-session",
            "sub": "oidc1:x",
            "groups": [],
            "exp": 2_000_000_000,
        },
        key,
    )
    cookie = {"Cookie": f"__Host-juliarun={forged}"}
    assert httpx.get(env.url(f"/s/{env.a}/echo/"), headers=cookie).status_code == 401
    # a browser with a bad cookie is sent to sign in again, an API client gets 401
    again = httpx.get(env.url(f"/s/{env.a}/echo/"), headers={**cookie, **HTML})
    assert again.status_code == 302
