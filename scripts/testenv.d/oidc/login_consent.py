"""The login and consent app of the test environment's hydra (scripts/testenv.d/oidc.sh).

Hydra is headless: it sends each browser to this app to sign in and to consent. This app is for
tests only and signs in whoever it is told:

- ``GET /login?login_challenge=...``: when the authorization request carried ``login_hint``
  ``USER[;GROUP,GROUP...]`` the user is accepted at once (headless flows, ``scripts/testenv
  token``); otherwise a form asks for a user name and groups (a browser).
- ``GET /consent?consent_challenge=...``: every requested scope is granted, and the ID token and
  access token get the user's ``groups``, ``email`` (``USER@issuer1.test``) and
  ``preferred_username``.
- ``GET /logout?logout_challenge=...``: accepted.
- ``GET /healthz``: ``ok``.

Standard library only; HTTPS with the test CA's certificate; hydra's admin API on loopback.
"""

from __future__ import annotations

import argparse
import html
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# hydra's admin API (--admin).
ADMIN = ["http://127.0.0.1:4445"]


def admin(method: str, path: str, challenge_key: str, challenge: str, body: Any = None) -> Any:
    """Call hydra's admin API; return the decoded JSON answer."""
    query = urllib.parse.urlencode({challenge_key: challenge})
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{ADMIN[0]}{path}?{query}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def parse_hint(hint: str) -> tuple[str, list[str]]:
    """``"alice;team-a,admins"`` -> ``("alice", ["team-a", "admins"])``."""
    user, _, groups = hint.partition(";")
    return user.strip(), [g.strip() for g in groups.split(",") if g.strip()]


FORM = """<!doctype html>
<html><head><meta charset="utf-8"><title>juliarun test sign-in</title></head>
<body><h1>juliarun test identity provider</h1>
<p>Test users only: any name is accepted.</p>
<form method="post" action="/login">
<input type="hidden" name="login_challenge" value="{challenge}">
<label>User <input name="user" id="user" autofocus></label>
<label>Groups (comma-separated) <input name="groups" id="groups"></label>
<button type="submit" id="submit">Sign in</button>
</form></body></html>
"""


class Handler(BaseHTTPRequestHandler):
    server_version = "juliarun-test-login/1"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

    def _redirect(self, url: str) -> None:
        self.send_response(302)
        self.send_header("Location", url)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _accept_login(self, challenge: str, user: str, groups: list[str]) -> None:
        if not user:
            self._text(400, "a user name is required")
            return
        answer = admin(
            "PUT",
            "/admin/oauth2/auth/requests/login/accept",
            "login_challenge",
            challenge,
            {"subject": user, "remember": False, "context": {"groups": groups}},
        )
        self._redirect(answer["redirect_to"])

    def _login(self, query: dict[str, list[str]]) -> None:
        challenge = query.get("login_challenge", [""])[0]
        if not challenge:
            self._text(400, "login_challenge is missing")
            return
        request = admin("GET", "/admin/oauth2/auth/requests/login", "login_challenge", challenge)
        if request.get("skip"):
            self._accept_login(challenge, request["subject"], [])
            return
        hint = (request.get("oidc_context") or {}).get("login_hint") or ""
        if hint:
            self._accept_login(challenge, *parse_hint(hint))
            return
        self._text(200, FORM.format(challenge=html.escape(challenge)), "text/html")

    def _consent(self, query: dict[str, list[str]]) -> None:
        challenge = query.get("consent_challenge", [""])[0]
        if not challenge:
            self._text(400, "consent_challenge is missing")
            return
        request = admin(
            "GET", "/admin/oauth2/auth/requests/consent", "consent_challenge", challenge
        )
        user = request["subject"]
        groups = list((request.get("context") or {}).get("groups") or [])
        claims = {"groups": groups, "email": f"{user}@issuer1.test", "preferred_username": user}
        answer = admin(
            "PUT",
            "/admin/oauth2/auth/requests/consent/accept",
            "consent_challenge",
            challenge,
            {
                "grant_scope": request.get("requested_scope") or [],
                "grant_access_token_audience": request.get("requested_access_token_audience") or [],
                "remember": False,
                "session": {"id_token": claims, "access_token": {"groups": groups}},
            },
        )
        self._redirect(answer["redirect_to"])

    def _logout(self, query: dict[str, list[str]]) -> None:
        challenge = query.get("logout_challenge", [""])[0]
        if not challenge:
            self._text(400, "logout_challenge is missing")
            return
        answer = admin(
            "PUT", "/admin/oauth2/auth/requests/logout/accept", "logout_challenge", challenge
        )
        self._redirect(answer["redirect_to"])

    def _dispatch(self, path: str, query: dict[str, list[str]]) -> None:
        try:
            if path == "/healthz":
                self._text(200, "ok")
            elif path == "/login":
                self._login(query)
            elif path == "/consent":
                self._consent(query)
            elif path == "/logout":
                self._logout(query)
            else:
                self._text(404, "not found")
        except urllib.error.HTTPError as exc:
            self._text(502, f"hydra answered {exc.code}: {exc.read().decode(errors='replace')}")
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            self._text(502, f"hydra's admin API failed: {exc}")

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self._dispatch(url.path, urllib.parse.parse_qs(url.query))

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        if url.path != "/login":
            self._text(404, "not found")
            return
        try:
            groups = [g.strip() for g in form.get("groups", [""])[0].split(",") if g.strip()]
            self._accept_login(
                form.get("login_challenge", [""])[0], form.get("user", [""])[0].strip(), groups
            )
        except urllib.error.HTTPError as exc:
            self._text(502, f"hydra answered {exc.code}: {exc.read().decode(errors='replace')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:4446", help="host:port (HTTPS)")
    parser.add_argument("--cert", required=True, help="TLS certificate (PEM)")
    parser.add_argument("--key", required=True, help="TLS private key (PEM)")
    parser.add_argument("--admin", default=ADMIN[0], help="hydra's admin API")
    args = parser.parse_args()
    ADMIN[0] = args.admin.rstrip("/")
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"login/consent app on https://{args.listen} (hydra admin {ADMIN[0]})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
