"""``scripts/testenv token``: a valid ID token for a test user, from a real test issuer.

A test helper only. It signs the user in through the issuer's own authorization-code flow with
PKCE, headlessly: the user and groups travel in ``login_hint`` (``USER;GROUP,GROUP``), which the
test issuers honour (hydra through the test login/consent app; issuer 2 directly). Nothing is
signed here; the token is the issuer's.

    token.py CONFIG USER [GROUP...] [--issuer 1|2] [--client ID] [--ttl SECONDS] [--json]

CONFIG is the JSON file scripts/testenv.d/oidc.sh writes ($TE_HOME/oidc/oidc.json). Prints the ID
token (or, with --json, the whole token response) on stdout. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.cookiejar
import json
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class TransientError(Exception):
    """The issuer failed in a way a second try gets past: hydra on SQLite answers concurrent
    sign-ins now and then with "database is locked" (a 500 from the token endpoint, or a
    redirect with ``error=error``, "The error is unrecognizable"), and a connection can drop."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def sign_in(
    config: dict[str, Any],
    issuer_name: str,
    user: str,
    groups: list[str],
    *,
    client_id: str | None = None,
    ttl: int | None = None,
) -> dict[str, Any]:
    """Run the authorization-code flow with PKCE for ``user``; return the token response."""
    issuer = config["issuers"][issuer_name]
    client_id = client_id or issuer["default_client"]
    client = issuer["clients"].get(client_id)
    if client is None:
        raise SystemExit(f"issuer {issuer_name} has no test client {client_id!r}")
    ctx = ssl.create_default_context(cafile=config["ca"])
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(jar),
        urllib.request.HTTPSHandler(context=ctx),
        _NoRedirect(),
    )
    with opener.open(issuer["issuer"] + "/.well-known/openid-configuration", timeout=10) as r:
        discovery = json.load(r)

    verifier = _b64url(secrets.token_bytes(32))
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = {
        "client_id": client_id,
        "response_type": "code",
        "scope": issuer["scope"],
        "redirect_uri": client["redirect_uri"],
        "state": state,
        "nonce": nonce,
        "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
        "login_hint": user + (";" + ",".join(groups) if groups else ""),
    }
    if ttl is not None:
        if not issuer.get("per_user_ttl"):
            raise SystemExit(f"--ttl is supported by issuer 2 only, not issuer {issuer_name}")
        params["id_token_ttl"] = str(ttl)
    url = discovery["authorization_endpoint"] + "?" + urllib.parse.urlencode(params)
    for _ in range(20):
        if url.startswith(client["redirect_uri"]):
            break
        try:
            with opener.open(url, timeout=15) as resp:
                raise SystemExit(f"sign-in stopped at {url} ({resp.status}, no redirect)")
        except urllib.error.HTTPError as exc:
            if exc.code not in (301, 302, 303, 307, 308):
                body = exc.read().decode(errors="replace")[:500]
                if exc.code >= 500:
                    raise TransientError(f"sign-in failed at {url}: {exc.code} {body}") from exc
                raise SystemExit(f"sign-in failed at {url}: {exc.code} {body}") from exc
            url = urllib.parse.urljoin(url, exc.headers["Location"])
    else:
        raise SystemExit("sign-in did not come back to the redirect URI")
    answer = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if answer.get("error") in (["error"], ["server_error"], ["temporarily_unavailable"]):
        why = f"{answer['error'][0]}: {answer.get('error_description')}"
        raise TransientError(f"sign-in refused: {why}")
    if "error" in answer:
        raise SystemExit(
            f"sign-in refused: {answer['error'][0]}: {answer.get('error_description')}"
        )
    if answer.get("state") != [state]:
        raise SystemExit("sign-in answered with another state")
    form = {
        "grant_type": "authorization_code",
        "code": answer["code"][0],
        "redirect_uri": client["redirect_uri"],
        "code_verifier": verifier,
        "client_id": client_id,
    }
    if client.get("secret"):
        form["client_secret"] = client["secret"]
    req = urllib.request.Request(
        discovery["token_endpoint"],
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    try:
        with opener.open(req, timeout=15) as resp:
            tokens: dict[str, Any] = json.load(resp)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:500]
        if exc.code >= 500:
            raise TransientError(f"token request failed: {exc.code} {body}") from exc
        raise SystemExit(f"token request failed: {exc.code} {body}") from exc
    if _claims(tokens["id_token"]).get("nonce") != nonce:
        raise SystemExit("the ID token carries another nonce")
    return tokens


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="scripts/testenv token", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config")
    parser.add_argument("user")
    parser.add_argument("groups", nargs="*")
    parser.add_argument("--issuer", choices=["1", "2"], default="1")
    parser.add_argument("--client", help="the issuer's test client (default: the CLI's)")
    parser.add_argument("--ttl", type=int, help="ID token lifetime in seconds (issuer 2 only)")
    parser.add_argument("--json", action="store_true", help="print the whole token response")
    args = parser.parse_intermixed_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    attempts = 4
    for attempt in range(1, attempts + 1):
        try:
            tokens = sign_in(
                config, args.issuer, args.user, args.groups, client_id=args.client, ttl=args.ttl
            )
            break
        except (TransientError, ssl.SSLError, OSError) as exc:  # URLError, timeouts: OSError
            if attempt == attempts:
                raise SystemExit(f"{exc} (after {attempts} attempts)") from exc
            print(f"token: {exc}; trying again", file=sys.stderr)
            time.sleep(0.5 * attempt)
    print(json.dumps(tokens) if args.json else tokens["id_token"])


if __name__ == "__main__":
    main(sys.argv[1:])
