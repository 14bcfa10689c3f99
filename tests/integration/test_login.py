"""``juliarun login`` against the real test issuers: the command's browser sign-in (PKCE through
its loopback redirect, the URL printed when no browser opens), ``whoami`` and ``logout``; the
device grant (issuer 2 offers it: hydra v2.3.0 does not); refresh at hydra (which rotates the
refresh token and refuses the old one); and the token cache's permissions.

A headless browser plays the person: it follows the printed URL through the issuer and its
login app, naming the test user in ``login_hint``.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from juliarun.auth import (
    AuthError,
    DeviceCode,
    Issuer,
    NotSignedInError,
    OAuthError,
    OIDCClient,
    TokenCache,
    TokenSource,
    login_browser,
    login_device,
)
from tests.integration.fixtures._service import require
from tests.integration.fixtures.oidc import OIDCIssuers
from tests.integration.login_browser import HeadlessBrowser, hint

pytestmark = pytest.mark.oidc

ROOT = Path(__file__).resolve().parents[2]


def issuer_client(issuers: OIDCIssuers, issuer: str, url: str | None = None) -> OIDCClient:
    conf = issuers.config["issuers"][issuer]
    client_id = conf["default_client"]
    return OIDCClient(
        issuer=url or conf["issuer"],
        client_id=client_id,
        client_secret=conf["clients"][client_id]["secret"],
        scopes=conf["scope"].split(),
        ca_file=str(issuers.ca),
    )


@pytest.fixture
def browser(oidc_issuers: OIDCIssuers) -> Iterator[HeadlessBrowser]:
    b = HeadlessBrowser(oidc_issuers.ca)
    yield b
    b.close()


def cli(home: Path, issuers: OIDCIssuers, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "JULIARUN_HOME": str(home),
        "JULIARUN_OIDC_CA": str(issuers.ca),
        "JULIARUN_OIDC_ISSUER": issuers.issuer_url("1"),
        "JULIARUN_OIDC_CLIENT_ID": issuers.config["issuers"]["1"]["default_client"],
        "JULIARUN_OIDC_SCOPES": "openid offline_access profile email",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "juliarun.cli_login", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_login_whoami_logout_from_the_command_line(
    oidc_issuers: OIDCIssuers, browser: HeadlessBrowser, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    proc = cli(home, oidc_issuers, "login", "--no-browser", "--timeout", "60")
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("Open this URL in a browser")
    url = proc.stderr.readline().strip()
    assert url.startswith(oidc_issuers.issuer_url("1") + "/oauth2/auth?")
    assert "code_challenge_method=S256" in url
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in url
    assert browser.sign_in(url, "carol", ["team-c", "ops"]) == 200
    out, errs = proc.communicate(timeout=60)
    assert proc.returncode == 0, errs
    cache = TokenCache(home)
    path = cache.path(oidc_issuers.issuer_url("1"), "juliarun-cli")
    assert out == f"signed in as carol at {oidc_issuers.issuer_url('1')} (tokens in {path})\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    tokens = cache.load(oidc_issuers.issuer_url("1"), "juliarun-cli")
    assert tokens is not None
    assert tokens.claims["sub"] == "carol"
    assert tokens.refresh_token

    who = cli(home, oidc_issuers, "whoami")
    out, errs = who.communicate(timeout=60)
    assert who.returncode == 0, errs
    assert out.startswith(
        f"carol at {oidc_issuers.issuer_url('1')} (client juliarun-cli); groups: team-c, ops; "
        "ID token valid until "
    )

    bye = cli(home, oidc_issuers, "logout")
    out, errs = bye.communicate(timeout=60)
    assert (bye.returncode, out) == (0, f"signed out of {oidc_issuers.issuer_url('1')}\n"), errs
    assert not path.exists()
    # hydra revoked the refresh token: it no longer refreshes
    issuer = Issuer(issuer_client(oidc_issuers, "1"))
    try:
        with pytest.raises(OAuthError) as refused:
            issuer.refresh(tokens)
        assert refused.value.error in {"invalid_grant", "token_inactive"}
    finally:
        issuer.close()
    who = cli(home, oidc_issuers, "whoami")
    out, errs = who.communicate(timeout=60)
    assert (who.returncode, errs.strip()) == (1, "not signed in (run `juliarun login`)")


def test_a_refused_sign_in_is_a_clear_error(oidc_issuers: OIDCIssuers, tmp_path: Path) -> None:
    """The issuer sends the browser back with an error (the person refused): the command
    prints it as one juliarun error (no traceback) and caches nothing."""
    home = tmp_path / "home"
    proc = cli(home, oidc_issuers, "login", "--no-browser", "--timeout", "30")
    assert proc.stderr is not None
    proc.stderr.readline()
    query = parse_qs(urlsplit(proc.stderr.readline().strip()).query)
    back = httpx.get(
        query["redirect_uri"][0],
        params={
            "error": "access_denied",
            "error_description": "The resource owner denied the request",
            "state": query["state"][0],
        },
        timeout=15,
    )
    assert back.status_code == 400
    assert "The sign-in failed: The resource owner denied the request" in back.text
    out, errs = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (1, "")
    assert errs.splitlines() == [
        "error: the sign-in was refused: access_denied: The resource owner denied the request",
        "hint: run `juliarun login` again",
    ]
    assert not (home / "auth").exists() or list((home / "auth").glob("*.json")) == []


def test_a_forged_redirect_to_the_loopback_is_ignored(
    oidc_issuers: OIDCIssuers, browser: HeadlessBrowser
) -> None:
    """A page that knows the loopback port sends the browser there with its own code (login
    CSRF): the state does not match, so it is turned away and the real sign-in still ends it."""
    client = issuer_client(oidc_issuers, "1")
    forged: list[httpx.Response] = []
    real = browser.opener("ivy", ["team-i"])

    def open_url(url: str) -> None:
        redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        forged.append(httpx.get(redirect, params={"code": "attacker", "state": "guess"}))
        real(url)

    tokens = login_browser(client, open_url, timeout=60)
    assert forged[0].status_code == 400
    assert "the state does not match" in forged[0].text
    assert tokens.claims["sub"] == "ivy"
    assert browser.errors == []


def device_issuer(issuers: OIDCIssuers) -> OIDCClient:
    """Issuer 2 (``JULIARUN_OIDC_DEVICE_ISSUER`` may name another build of it), once it
    offers the device grant."""
    client = issuer_client(issuers, "2", os.environ.get("JULIARUN_OIDC_DEVICE_ISSUER"))

    def probe() -> str | None:
        issuer = Issuer(client)
        try:
            if "device_authorization_endpoint" not in issuer.discovery:
                return f"{client.issuer} offers no device grant (an older issuer 2 build)"
        finally:
            issuer.close()
        return None

    require("oidc", probe)
    return client


def test_device_grant_signs_in_on_a_machine_without_a_browser(
    oidc_issuers: OIDCIssuers, tmp_path: Path
) -> None:
    client = device_issuer(oidc_issuers)
    shown: list[DeviceCode] = []
    http = httpx.Client(verify=ssl.create_default_context(cafile=str(oidc_issuers.ca)), timeout=15)

    def show(code: DeviceCode) -> None:
        shown.append(code)

        # the person, elsewhere, a moment later: enters the code and signs in as dave
        def approve() -> None:
            time.sleep(1.5)
            http.get(
                code.verification_uri,
                params={"user_code": code.user_code, "login_hint": hint("dave", ["team-d"])},
            ).raise_for_status()

        threading.Thread(target=approve, daemon=True).start()

    try:
        tokens = login_device(client, show)
        [code] = shown
        assert code.verification_uri == client.issuer + "/device"
        assert len(code.user_code) == 9 and code.user_code[4] == "-"
        assert tokens.claims["preferred_username"] == "dave"
        assert tokens.claims["groups"] == ["team-d"]
        assert tokens.refresh_token
        path = TokenCache(tmp_path).save(tokens)
        assert oct(path.stat().st_mode & 0o777) == "0o600"

        # a refused sign-in ends the polling with the issuer's access_denied
        def deny(code: DeviceCode) -> None:
            http.get(code.verification_uri, params={"user_code": code.user_code, "deny": "1"})

        with pytest.raises(OAuthError) as refused:
            login_device(client, deny)
        assert refused.value.error == "access_denied"
        assert refused.value.hint == "the sign-in was refused"
    finally:
        http.close()


def test_login_device_from_the_command_line(oidc_issuers: OIDCIssuers, tmp_path: Path) -> None:
    client = device_issuer(oidc_issuers)
    assert client.client_secret is not None
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "JULIARUN_HOME": str(tmp_path),
        "JULIARUN_OIDC_CA": str(oidc_issuers.ca),
        "JULIARUN_OIDC_ISSUER": client.issuer,
        "JULIARUN_OIDC_CLIENT_ID": client.client_id,
        "JULIARUN_OIDC_CLIENT_SECRET": client.client_secret.get_secret_value(),
        "JULIARUN_OIDC_SCOPES": "openid profile email groups",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "juliarun.cli_login", "login", "--device"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert proc.stderr.readline() == f"To sign in, open {client.issuer}/device\n"
    prompt = proc.stderr.readline()
    assert prompt.startswith("and enter the code: ")
    code = prompt.split(": ", 1)[1].strip()
    ctx = ssl.create_default_context(cafile=str(oidc_issuers.ca))
    approved = httpx.get(
        f"{client.issuer}/device",
        params={"user_code": code, "login_hint": hint("hana", ["team-h"])},
        verify=ctx,
        timeout=15,
    )
    assert approved.status_code == 200
    out, errs = proc.communicate(timeout=60)
    assert proc.returncode == 0, errs
    path = TokenCache(tmp_path).path(client.issuer, client.client_id)
    assert out == f"signed in as hana at {client.issuer} (tokens in {path})\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_device_grant_at_an_issuer_without_it_says_so(oidc_issuers: OIDCIssuers) -> None:
    with pytest.raises(AuthError) as err:
        login_device(issuer_client(oidc_issuers, "1"), lambda code: None)
    assert f"the issuer {oidc_issuers.issuer_url('1')} offers no device_authorization_endpoint" in (
        str(err.value)
    )


def test_hydra_refreshes_rotates_and_the_cache_follows(
    oidc_issuers: OIDCIssuers, browser: HeadlessBrowser, tmp_path: Path
) -> None:
    """hydra's ID tokens live an hour: the token source's clock is moved to 10 s before expiry
    (inside its leeway), so it refreshes for real; hydra rotates the refresh token."""
    client = issuer_client(oidc_issuers, "1")
    first = login_browser(client, browser.opener("erin", ["team-e"]), timeout=60)
    cache = TokenCache(tmp_path)
    cache.save(first)

    now = TokenSource(client, cache)
    assert now.id_token() == first.id_token
    assert now.refreshes == 0

    later = TokenSource(client, cache, clock=lambda: first.expires_at - 10)
    token = later.id_token()
    assert later.refreshes == 1
    assert token != first.id_token
    saved = cache.load(client.issuer, client.client_id)
    assert saved is not None
    assert saved.id_token == token
    assert saved.refresh_token not in (None, first.refresh_token)
    assert saved.claims["sub"] == "erin"
    assert oct(cache.path(client.issuer, client.client_id).stat().st_mode & 0o777) == "0o600"

    # the old refresh token is spent: a source still holding it is told to sign in again
    cache.save(first)
    with pytest.raises(NotSignedInError) as expired:
        TokenSource(client, cache, clock=lambda: first.expires_at - 10).id_token()
    assert "the session expired (invalid_grant)" in str(expired.value)


def test_concurrent_refreshes_refresh_once_and_keep_the_session(
    oidc_issuers: OIDCIssuers, browser: HeadlessBrowser, tmp_path: Path
) -> None:
    """Four token sources on one cache (as four processes would be) find the token about to
    expire at once: the cache's lock lets one refresh at hydra and the others read its tokens
    (hydra rotates refresh tokens, and a spent one presented again may cost the session).

    Their clocks run 1.5 s short of hydra's hour minus the 30 s leeway: the token signed in 3 s
    ago is due, one refreshed now is not."""
    client = issuer_client(oidc_issuers, "1")
    first = login_browser(client, browser.opener("gina"), timeout=60)
    cache = TokenCache(tmp_path)
    cache.save(first)
    time.sleep(3)
    ahead = first.expires_at - first.issued_at - 30 - 1.5
    sources = [TokenSource(client, cache, clock=lambda: time.time() + ahead) for _ in range(4)]
    got: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(sources))

    def use(source: TokenSource) -> None:
        start.wait()
        try:
            got.append(source.id_token())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(s.refreshes for s in sources) == 1
    assert len(set(got)) == 1 and got[0] != first.id_token
    # the session lives on: the next refresh (later still) is accepted
    saved = cache.load(client.issuer, client.client_id)
    assert saved is not None
    later = TokenSource(client, cache, clock=lambda: saved.expires_at - 10)
    assert later.id_token() not in (first.id_token, got[0])
    assert later.refreshes == 1


def test_a_token_cache_others_can_read_is_refused(
    oidc_issuers: OIDCIssuers, browser: HeadlessBrowser, tmp_path: Path
) -> None:
    client = issuer_client(oidc_issuers, "2")
    cache = TokenCache(tmp_path)
    path = cache.save(login_browser(client, browser.opener("frank"), timeout=60))
    path.chmod(0o644)
    with pytest.raises(AuthError) as err:
        TokenSource(client, cache).id_token()
    assert f"the token cache {path} is open to other users (mode 0o644)" in str(err.value)
