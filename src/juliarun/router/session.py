"""Browser sessions: the OpenID Connect authorization-code flow with PKCE, ending in a secure
cookie.

Stateless, so any replica can finish a sign-in another one started: the pending sign-in (state,
nonce, PKCE verifier, where to return) travels in a short-lived cookie signed by the router's
key, and the session is a router-signed JWT in ``__Host-juliarun`` (``Secure; HttpOnly;
SameSite=Lax; Path=/``). The page to return to is a local path only (no scheme, no host, no
``//``, no backslash, no dot segments), so the sign-in cannot be turned into an open redirect.

>>> safe_return("/s/team-a/web/?x=1"), safe_return("//evil.example/"), safe_return("https://e/")
('/s/team-a/web/?x=1', None, None)
>>> safe_return("/\\\\evil.example"), safe_return("/s/a/../b")
(None, None)
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from juliarun.errors import JuliaRunError
from juliarun.router.config import SessionConfig
from juliarun.router.tokens import Identity, TokenRejectedError, TokenValidator

SESSION_COOKIE = "__Host-juliarun"
LOGIN_COOKIE = "__Host-juliarun-login"
SESSION_AUD = "juliarun-router-session"
LOGIN_AUD = "juliarun-router-login"


class SessionError(JuliaRunError):
    """A sign-in that cannot be finished (bad state, code refused, token not valid)."""

    default_hint = "start the sign-in again"


def safe_return(target: str | None) -> str | None:
    """``target`` if it is a local path to return to after sign-in, else ``None``."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(c) < 0x21 for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    lowered = target.lower()
    if "%2f" in lowered or "%5c" in lowered:
        return None
    if any(seg in (".", "..", "%2e", "%2e%2e", ".%2e", "%2e.") for seg in lowered.split("/")):
        return None
    return target


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Sessions:
    """Starts and finishes sign-ins, and reads session cookies."""

    config: SessionConfig
    validator: TokenValidator
    key: ECKey
    issuer_name: str  # the router's own iss in its session tokens
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.kid = self.key.thumbprint()
        issuer = self.validator.issuers[self.config.issuer]
        verify: ssl.SSLContext | bool = True
        if issuer.ca_pem:
            verify = ssl.create_default_context(cadata=issuer.ca_pem)
        self.http = httpx.AsyncClient(verify=verify, timeout=15)
        self._discovery: dict[str, Any] | None = None
        self.callback_path = urlsplit(self.config.redirect_uri).path

    async def aclose(self) -> None:
        await self.http.aclose()

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            resp = await self.http.get(self.config.issuer + "/.well-known/openid-configuration")
            self._discovery = dict(resp.json())
        return self._discovery

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode({"alg": "ES256", "kid": self.kid}, claims, self.key)

    def _verify(self, token: str, audience: str) -> dict[str, Any]:
        try:
            claims = dict(jwt.decode(token, self.key, algorithms=["ES256"]).claims)
        except (JoseError, ValueError) as exc:
            raise SessionError("cookie not signed by this router") from exc
        if claims.get("aud") != audience or claims.get("iss") != self.issuer_name:
            raise SessionError("cookie for another purpose")
        if float(claims.get("exp", 0)) < self.clock():
            raise SessionError("cookie expired")
        return claims

    async def start(self, return_to: str) -> tuple[str, str]:
        """(the issuer's authorization URL, the pending sign-in's cookie value)."""
        found = await self.discovery()
        verifier = _b64(secrets.token_bytes(32))
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        now = int(self.clock())
        pending = self._sign(
            {
                "iss": self.issuer_name,
                "aud": LOGIN_AUD,
                "state": state,
                "nonce": nonce,
                "verifier": verifier,
                "rd": return_to,
                "iat": now,
                "exp": now + 600,
            }
        )
        params = {
            "client_id": self.config.client_id,
            "response_type": "code",
            "scope": self.config.scope,
            "redirect_uri": self.config.redirect_uri,
            "state": state,
            "nonce": nonce,
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
        }
        return f"{found['authorization_endpoint']}?{urlencode(params)}", pending

    async def finish(self, code: str, state: str, pending: str) -> tuple[str, str, int]:
        """(the session cookie value, the local path to return to, its max-age)."""
        login = self._verify(pending, LOGIN_AUD)
        if not secrets.compare_digest(str(login.get("state")), state):
            raise SessionError("state does not match the pending sign-in")
        return_to = safe_return(str(login.get("rd")))
        if return_to is None:
            raise SessionError("no local page to return to")
        found = await self.discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.config.redirect_uri,
            "code_verifier": str(login["verifier"]),
        }
        secret = self.config.client_secret.get_secret_value()
        if self.config.token_auth == "client_secret_post":
            form |= {"client_id": self.config.client_id, "client_secret": secret}
            resp = await self.http.post(found["token_endpoint"], data=form)
        else:
            resp = await self.http.post(
                found["token_endpoint"], data=form, auth=(self.config.client_id, secret)
            )
        if resp.status_code != 200:
            raise SessionError(f"the issuer refused the code ({resp.status_code})")
        id_token = resp.json().get("id_token")
        if not isinstance(id_token, str):
            raise SessionError("the issuer sent no ID token")
        try:
            who, claims = await self.validator.validate_claims(
                id_token, audience=self.config.client_id
            )
        except TokenRejectedError as exc:
            raise SessionError(f"the ID token is not valid: {exc}") from exc
        if claims.get("nonce") != login.get("nonce"):
            raise SessionError("the ID token carries another nonce")
        now = int(self.clock())
        exp = min(int(who.expires), now + self.config.lifetime)
        session = self._sign(
            {
                "iss": self.issuer_name,
                "aud": SESSION_AUD,
                "sub": who.user,
                "groups": list(who.groups),
                "idp": who.issuer,
                "iat": now,
                "exp": exp,
            }
        )
        return session, return_to, max(0, exp - now)

    def identity(self, cookie: str) -> Identity:
        claims = self._verify(cookie, SESSION_AUD)
        return Identity(
            str(claims["sub"]),
            tuple(str(g) for g in claims.get("groups") or []),
            str(claims.get("idp")),
            float(claims["exp"]),
        )
