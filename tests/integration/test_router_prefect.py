"""Sign-in in front of Prefect (issue 12, item 5): the router fronts a Prefect server's UI and
API, so an open-source Prefect gets OpenID Connect sign-in.

One Prefect server of the module's own (served under ``/prefect``, its UI calling the API through
the router), a router process in front of it, and a tenant of the real apiserver: a member with
the ``edit`` role gets in (bearer ID token as ``PREFECT_API_KEY``, or a browser session), a
``view`` member and a stranger are refused (the default rule: may create Jobs in the tenant),
and identity headers a client sends are not passed on (checked at an echoing upstream fronted
the same way). The browser test signs in at the real issuer in Chromium and opens a deployment's
page of the Prefect UI through the router; on failure its last page stays under test-output/.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from websockets.typing import Subprotocol

from juliarun.backends.kubernetes import KubeClient, api_client
from juliarun.backends.kubernetes import tenants as tn
from juliarun.specs import TenantSpec
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.integration.fixtures.oidc import OIDCIssuers, claims
from tests.integration.router_env import (
    RouterProcess,
    echo_server,
    free_port,
    prefect_server,
    raw_request,
    router_config,
    start_router,
)

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = [pytest.mark.kubernetes, pytest.mark.oidc, pytest.mark.prefect_server]

HTML = {"Accept": "text/html,application/xhtml+xml"}


@dataclass
class Env:
    router: RouterProcess
    direct_api: str  # the Prefect server itself, not through the router
    tenant: str
    alice: str  # edit
    bob: str  # view
    issuers: OIDCIssuers

    @property
    def api(self) -> str:
        return self.router.url + "/prefect/api"


@contextmanager
def router_client(redirect_uri: str) -> Iterator[tuple[str, str]]:
    """A confidential client of the module's own at hydra (issuer 1) whose redirect is this
    router's callback, so a real browser's sign-in comes back to it; (id, secret), deleted
    after."""
    admin = os.environ.get("JULIARUN_OIDC_ISSUER1_ADMIN") or "http://127.0.0.1:4445"
    client_id, secret = f"gate-router-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(24)
    body = {
        "client_id": client_id,
        "client_secret": secret,
        "token_endpoint_auth_method": "client_secret_post",
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "scope": "openid profile email",
        "redirect_uris": [redirect_uri],
    }
    resp = httpx.post(f"{admin}/admin/clients", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    try:
        yield client_id, secret
    finally:
        httpx.delete(f"{admin}/admin/clients/{client_id}", timeout=10)


@pytest.fixture(scope="module")
def env(
    oidc_issuers: OIDCIssuers,
    kube_api: Any,
    prefect_api_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    run = uuid.uuid4().hex[:6]
    tenant, alice, bob = f"gate-pf-{run}", f"alice-{run}", f"bob-{run}"
    admin = KubeClient(api_client(kubeconfig=kubeconfig_path()))
    spec = TenantSpec(
        name=tenant,
        users=[{"name": f"oidc1:{alice}"}, {"name": f"oidc1:{bob}", "role": "view"}],
    )
    tn.ensure_tenant(admin, spec)
    tmp = tmp_path_factory.mktemp("router-prefect")
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = {
        "PREFECT_SERVER_UI_SERVE_BASE": "/prefect",
        "PREFECT_SERVER_UI_API_URL": f"{public}/prefect/api",
        # the UI's files with this base path written in: its own copy (by default they go to
        # the installed package, where any other server rewrites them with its base)
        "PREFECT_SERVER_UI_STATIC_DIRECTORY": str(tmp / "ui"),
    }
    try:
        with (
            prefect_server(tmp, free_port(), **settings) as direct,
            echo_server() as echo,
            router_client(f"{public}/oauth2/callback") as (client_id, secret),
        ):
            session = {
                "issuer": oidc_issuers.issuer_url("1"),
                "client_id": client_id,
                "client_secret": secret,
                "redirect_uri": f"{public}/oauth2/callback",
                "token_auth": "client_secret_post",
            }
            rule = {"namespace": tenant}
            config = router_config(
                tmp,
                routes={"kind": "file", "path": str(tmp / "routes.json")},
                kubeconfig=str(kubeconfig_path()),
                public_url=public,
                session=session,
                prefect=[
                    {"path": "/prefect", "upstream": direct.removesuffix("/api"), **rule},
                    {"path": "/team/echo", "upstream": echo, **rule},
                ],
            )
            router = start_router(config, port)
            try:
                yield Env(router, direct, tenant, alice, bob, oidc_issuers)
            finally:
                router.stop()
    finally:
        tn.remove_tenant(admin, tenant)
        admin.close()


async def _create_and_read_a_run(api: str, key: str, name: str) -> tuple[str, str, str]:
    """With Prefect's own client at ``api`` (key sent as a bearer token): create a flow, a
    deployment and a run of it, read the run back; (run id, its deployment id, flow name)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_KEY: key}):
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(name)
            deployment_id = await client.create_deployment(flow_id=flow_id, name=f"{name}-dep")
            run = await client.create_flow_run_from_deployment(deployment_id, name=f"{name}-run")
            again = await client.read_flow_run(run.id)
            assert again.name == f"{name}-run" and again.deployment_id == deployment_id
            return str(run.id), str(deployment_id), name


def test_no_credentials_get_a_401_or_a_sign_in(env: Env) -> None:
    resp = httpx.get(env.api + "/health")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer, Cookie realm="juliarun"'
    assert httpx.post(env.api + "/flow_runs/filter", json={}).status_code == 401
    page = httpx.get(env.router.url + "/prefect/v2/dashboard", headers=HTML)
    assert page.status_code == 302
    assert page.headers["location"].startswith(env.issuers.issuer_url("1") + "/oauth2/auth?")
    # a client's identity headers are no credentials
    spoofed = {"X-Remote-User": f"oidc1:{env.alice}", "X-Forwarded-User": f"oidc1:{env.alice}"}
    assert httpx.get(env.api + "/health", headers=spoofed).status_code == 401


def test_a_member_uses_prefects_own_client_through_the_router(env: Env) -> None:
    token = env.issuers.token(env.alice)
    name = f"gate-flow-{uuid.uuid4().hex[:6]}"
    run_id, _, _ = asyncio.run(_create_and_read_a_run(env.api, token, name))
    # the run is on the Prefect server behind the router
    direct = httpx.get(f"{env.direct_api}/flow_runs/{run_id}", timeout=10)
    assert direct.status_code == 200 and direct.json()["name"] == f"{name}-run"
    # the UI's settings, through the router, name the router's API address
    ui = httpx.get(
        env.router.url + "/prefect/ui-settings", headers={"Authorization": f"Bearer {token}"}
    )
    assert ui.status_code == 200 and ui.json()["api_url"] == env.api


def test_a_viewer_and_a_stranger_are_refused_whatever_they_claim(env: Env) -> None:
    spoofed = {
        "X-Remote-User": f"oidc1:{env.alice}",
        "X-Remote-Group": "system:masters",
        "Impersonate-User": f"oidc1:{env.alice}",
    }
    for user in (env.bob, f"mallory-{uuid.uuid4().hex[:4]}"):
        headers = {"Authorization": f"Bearer {env.issuers.token(user)}", **spoofed}
        assert httpx.get(env.api + "/health", headers=headers).status_code == 403
        assert httpx.get(env.router.url + "/prefect/", headers=headers).status_code == 403
    with pytest.raises(httpx.HTTPStatusError, match="403"):
        asyncio.run(_create_and_read_a_run(env.api, env.issuers.token(env.bob), "gate-no"))


def test_the_upstream_gets_the_routers_identity_not_the_clients(env: Env) -> None:
    token = env.issuers.token(env.alice, ["team"])
    sent = {
        "Authorization": f"Bearer {token}",
        "X-Remote-User": "oidc1:someone-else",
        "X_Remote_Group": "system:masters",
        "X-Forwarded-Prefix": "/elsewhere",
        "X-Trace": "kept",
    }
    api = httpx.get(env.router.url + "/team/echo/api/flows?limit=1", headers=sent).json()
    assert api["path"] == "/api/flows?limit=1"  # <path>/api/... is the server's /api/...
    seen = api["headers"]
    assert seen["x-remote-user"] == [f"oidc1:{env.alice}"]
    assert seen["x-remote-group"] == ["oidc1:team"]
    assert seen["x-forwarded-prefix"] == ["/team/echo"]
    assert seen["x-trace"] == ["kept"]
    assert "authorization" not in seen and "x-remote-group" in seen
    ui = httpx.get(env.router.url + "/team/echo/v2/runs", headers=sent).json()
    assert ui["path"] == "/team/echo/v2/runs"  # the UI keeps its path (its serve base)
    # sent byte for byte: a prefix spelled with escapes is no prefix, dot segments are refused
    assert raw_request(env.router.port, "/team/ech%6f/api/flows", token) == 404
    assert raw_request(env.router.port, "/team/echo/api/../../../s/x/y/", token) == 400
    assert raw_request(env.router.port, "/team/echo/api%2f..%2fx", token) == 400


def test_the_event_stream_websocket_passes_for_members_only(env: Env) -> None:
    """The UI's live events: ``<path>/api/events/out`` is relayed to the server's websocket."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = "ws" + env.api.removeprefix("http") + "/events/out"
    member = {"Authorization": f"Bearer {env.issuers.token(env.alice)}"}
    with connect(url, subprotocols=[Subprotocol("prefect")], additional_headers=member) as ws:
        ws.send(json.dumps({"type": "auth", "token": None}))  # Prefect's own handshake
        assert json.loads(ws.recv(timeout=30)) == {"type": "auth_success"}
    viewer = {"Authorization": f"Bearer {env.issuers.token(env.bob)}"}
    for headers in ({}, viewer):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, subprotocols=[Subprotocol("prefect")], additional_headers=headers)
        assert refused.value.response.status_code == 403


@pytest.fixture
def chrome_flags() -> tuple[str, ...]:
    return ("--ignore-certificate-errors",)  # the test issuers' own CA


@pytest.mark.browser
def test_a_browser_signs_in_and_opens_a_deployment_in_the_prefect_ui(
    env: Env, chrome: WebDriver
) -> None:
    from selenium.webdriver.common.by import By

    from tests.integration.prefect_ui import open_page, page_text, wait_for

    name = f"gate-ui-{uuid.uuid4().hex[:6]}"
    run_id, deployment_id, _ = asyncio.run(
        _create_and_read_a_run(env.api, env.issuers.token(env.alice), name)
    )
    page = f"{env.router.url}/prefect/v2/deployments/deployment/{deployment_id}"
    chrome.get(page)  # not signed in: the router sends the browser to the issuer
    user = wait_for(
        chrome, "the issuer's sign-in form", lambda: chrome.find_elements(By.ID, "user")
    )
    assert chrome.current_url.startswith(env.issuers.issuer_url("1").replace("4444", "4446"))
    user[0].send_keys(env.alice)
    chrome.find_element(By.ID, "submit").click()
    wait_for(chrome, "the way back to the UI", lambda: chrome.current_url.startswith(page))
    session = next(c for c in chrome.get_cookies() if c["name"] == "__Host-juliarun")
    assert session["httpOnly"] and session["secure"]
    # the UI renders the deployment from the API it calls through the router, with the session
    # (open_page loads it again if the first render stalls, as a person would on a busy machine)
    open_page(chrome, page, f"deployment {name}-dep", lambda: f"{name}-dep" in page_text(chrome))
    run_page = f"{env.router.url}/prefect/v2/runs/flow-run/{run_id}"
    open_page(chrome, run_page, f"run {name}-run", lambda: f"{name}-run" in page_text(chrome))


def test_prefects_command_line_with_juliarun_token_as_its_key(env: Env, tmp_path: Path) -> None:
    """``PREFECT_API_KEY=$(juliarun token)`` after ``juliarun login``: the cached session's ID
    token (the one session, no issuer named) is Prefect's key at the router."""
    from juliarun.auth import OIDCClient, TokenCache, login_browser
    from tests.integration.login_browser import HeadlessBrowser

    conf = env.issuers.config["issuers"]["1"]
    client = OIDCClient(
        issuer=conf["issuer"],
        client_id=conf["default_client"],
        scopes=conf["scope"].split(),
        ca_file=str(env.issuers.ca),
    )
    browser = HeadlessBrowser(env.issuers.ca)
    try:
        TokenCache(tmp_path).save(login_browser(client, browser.opener(env.alice), timeout=60))
    finally:
        browser.close()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JULIARUN_OIDC", "PREFECT"))}
    base["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    token = subprocess.run(
        [sys.executable, "-m", "juliarun.cli_login", "token"],
        env={**base, "JULIARUN_HOME": str(tmp_path), "JULIARUN_OIDC_CA": str(env.issuers.ca)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert claims(token)["sub"] == env.alice
    name = f"gate-cli-{uuid.uuid4().hex[:6]}"
    run_id, _, _ = asyncio.run(_create_and_read_a_run(env.api, token, name))

    shown = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "inspect", run_id],
        env={**base, "PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": env.api,
             "PREFECT_API_KEY": token},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shown.returncode == 0 and f"{name}-run" in shown.stdout, shown.stderr[-2000:]
