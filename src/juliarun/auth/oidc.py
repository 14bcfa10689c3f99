"""OpenID Connect sign-in for people: the authorization-code flow with PKCE through a loopback
redirect (RFC 8252), the device authorization grant (RFC 8628) for machines without a browser,
and refresh with the refresh token. Plain: no Prefect.

An :class:`OIDCClient` says which issuer and client; the flows return a :class:`TokenSet`
whose ID token was verified here (signature by the issuer's published keys, issuer, audience,
expiry and, for a sign-in, the nonce).

>>> client = OIDCClient(issuer="https://id.example.org", client_id="juliarun-cli")
>>> client.scopes
['openid', 'offline_access', 'profile', 'email', 'groups']
>>> OIDCClient(issuer="http://id.example.org", client_id="x")
Traceback (most recent call last):
...
juliarun.errors.SpecError: invalid OIDCClient: issuer: must be an https:// URL...
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator

from juliarun.auth.errors import AuthError
from juliarun.specs import _Model

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_SCOPES = ["openid", "offline_access", "profile", "email", "groups"]
CALLBACK_PATH = "/callback"


class OIDCClient(_Model):
    """Which issuer to sign in at, as which OAuth2 client."""

    issuer: str = Field(description="The issuer URL (https), exactly as its tokens name it.")
    client_id: str = Field(min_length=1, max_length=255, description="The OAuth2 client id.")
    client_secret: SecretStr | None = Field(
        None, description="The client secret of a confidential client (None: a public client)."
    )
    scopes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SCOPES),
        description="Scopes to ask for; 'openid' is required.",
    )
    ca_file: str | None = Field(
        None, description="A CA bundle (PEM) that signs the issuer's certificate (default: system)."
    )

    @field_validator("issuer")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"must be an https:// URL without query or fragment (got {value!r})")
        return value.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("must include 'openid' (the ID token is what signs you in)")
        for scope in value:
            if not scope or any(c.isspace() for c in scope):
                raise ValueError(f"{scope!r} is not a scope")
        return value

    def ssl_context(self) -> ssl.SSLContext:
        return (
            ssl.create_default_context(cafile=self.ca_file)
            if self.ca_file
            else (ssl.create_default_context())
        )

    def http(self) -> httpx.Client:
        return httpx.Client(verify=self.ssl_context(), timeout=15, follow_redirects=False)

    def auth_form(self) -> dict[str, str]:
        """The client's credentials as token-endpoint form fields (client_secret_post)."""
        form = {"client_id": self.client_id}
        if self.client_secret is not None:
            form["client_secret"] = self.client_secret.get_secret_value()
        return form


@dataclass(frozen=True)
class TokenSet:
    """What a sign-in gives: the ID token (the bearer the apiserver checks), the refresh token,
    and when the ID token expires (epoch seconds)."""

    issuer: str
    client_id: str
    id_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False, default=None)
    access_token: str | None = field(repr=False, default=None)
    expires_at: float = 0.0
    issued_at: float = 0.0

    @property
    def claims(self) -> dict[str, Any]:
        """The ID token's claims (verified when the token was received)."""
        return jwt_parts(self.id_token)[1]

    def fresh(self, now: float, leeway: float = 30.0) -> bool:
        """Still good at ``now``: before expiry less ``leeway`` (at most half its lifetime).

        >>> t = TokenSet("https://i", "c", "x.y.z", expires_at=1000.0, issued_at=400.0)
        >>> t.fresh(900), t.fresh(980), t.fresh(990, leeway=5)
        (True, False, True)
        """
        margin = min(leeway, max(0.0, (self.expires_at - self.issued_at) / 2))
        return now < self.expires_at - margin

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "client_id": self.client_id,
            "id_token": self.id_token,
            "refresh_token": self.refresh_token,
            "access_token": self.access_token,
            "expires_at": self.expires_at,
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenSet:
        return cls(
            issuer=str(data["issuer"]),
            client_id=str(data["client_id"]),
            id_token=str(data["id_token"]),
            refresh_token=data.get("refresh_token"),
            access_token=data.get("access_token"),
            expires_at=float(data.get("expires_at") or 0),
            issued_at=float(data.get("issued_at") or 0),
        )


# ---------------------------------------------------------------------------------------------
# ID token verification (RS256 / ES256 with the issuer's JWKS)
# ---------------------------------------------------------------------------------------------


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """A JWT's header, claims and signature, decoded and not verified.

    >>> h, c, _ = jwt_parts("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.")
    >>> h, c
    ({'alg': 'none'}, {'sub': 'a'})
    """
    try:
        head, body, sig = token.split(".")
        header, claims = json.loads(_b64decode(head)), json.loads(_b64decode(body))
        signature = _b64decode(sig)
    except (ValueError, TypeError) as exc:
        raise AuthError("the ID token is not a JWT", hint="sign in again") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthError("the ID token is not a JWT", hint="sign in again")
    return header, claims, signature


def _public_key(jwk: Mapping[str, Any]) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def num(name: str) -> int:
        return int.from_bytes(_b64decode(str(jwk[name])), "big")

    if jwk.get("kty") == "RSA":
        return rsa.RSAPublicNumbers(num("e"), num("n")).public_key()
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        return ec.EllipticCurvePublicNumbers(num("x"), num("y"), ec.SECP256R1()).public_key()
    return None


def verify_id_token(
    token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    now: float,
    nonce: str | None = None,
    leeway: float = 60.0,
) -> dict[str, Any]:
    """The claims of ``token`` once its signature (RS256 or ES256, by a key of ``jwks``), issuer,
    audience, expiry and (when given) nonce are right; :class:`AuthError` naming what is not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    header, claims, signature = jwt_parts(token)
    alg = header.get("alg")
    if alg not in {"RS256", "ES256"}:
        raise AuthError(f"the ID token is signed with {alg!r}; only RS256 and ES256 are accepted")
    kty = "RSA" if alg == "RS256" else "EC"
    keys = [
        k
        for k in jwks.get("keys") or []
        if k.get("kty") == kty
        and k.get("use", "sig") == "sig"
        and ("kid" not in header or k.get("kid") == header["kid"])
    ]
    if not keys:
        raise AuthError(
            f"the ID token's key {header.get('kid')!r} is not among the issuer's keys",
            issuer=issuer,
        )
    signed = token.rsplit(".", 1)[0].encode()
    for jwk in keys:
        key = _public_key(jwk)
        try:
            if alg == "RS256":
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            else:
                if len(signature) != 64:
                    continue
                der = utils.encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
                key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            break
        except (InvalidSignature, AttributeError, ValueError):
            continue
    else:
        raise AuthError("the ID token's signature does not verify", issuer=issuer)
    if claims.get("iss") != issuer:
        raise AuthError(f"the ID token names issuer {claims.get('iss')!r}, not {issuer!r}")
    aud = claims.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise AuthError(f"the ID token is for {aud!r}, not client {audience!r}", issuer=issuer)
    if float(claims.get("exp") or 0) + leeway < now:
        raise AuthError("the ID token has expired", issuer=issuer)
    if nonce is not None and claims.get("nonce") != nonce:
        raise AuthError("the ID token carries another nonce", issuer=issuer)
    return claims


# ---------------------------------------------------------------------------------------------
# The issuer: discovery, token endpoint
# ---------------------------------------------------------------------------------------------


class Issuer:
    """One issuer, as a client talks to it: its discovery document, keys and token endpoint."""

    def __init__(
        self,
        client: OIDCClient,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.http = http or client.http()
        self.clock = clock
        self._discovery: dict[str, Any] | None = None
        self._jwks: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            resp = self.http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise AuthError(
                f"cannot reach the issuer at {url}: {exc}",
                issuer=self.client.issuer,
                hint="check the issuer URL and, for a private CA, the CA file (--ca)",
            ) from exc
        if resp.status_code != 200:
            raise AuthError(f"{url} answered {resp.status_code}", issuer=self.client.issuer)
        data = resp.json()
        if not isinstance(data, dict):
            raise AuthError(f"{url} did not answer a JSON object", issuer=self.client.issuer)
        return data

    @property
    def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            doc = self._get_json(self.client.issuer + "/.well-known/openid-configuration")
            if doc.get("issuer") != self.client.issuer:
                raise AuthError(
                    f"the discovery document names issuer {doc.get('issuer')!r}, not "
                    f"{self.client.issuer!r}",
                    issuer=self.client.issuer,
                    hint="give the issuer URL exactly as its tokens name it",
                )
            self._discovery = doc
        return self._discovery

    def endpoint(self, name: str) -> str:
        url = self.discovery.get(name)
        if not isinstance(url, str) or not url:
            raise AuthError(
                f"the issuer {self.client.issuer} offers no {name}",
                issuer=self.client.issuer,
                hint="use another sign-in flow (without --device when it has no device grant)",
            )
        return url

    def jwks(self, refresh: bool = False) -> dict[str, Any]:
        if self._jwks is None or refresh:
            self._jwks = self._get_json(self.endpoint("jwks_uri"))
        return self._jwks

    def verify(self, id_token: str, nonce: str | None = None) -> dict[str, Any]:
        def check(jwks: Mapping[str, Any]) -> dict[str, Any]:
            return verify_id_token(
                id_token,
                jwks,
                issuer=self.client.issuer,
                audience=self.client.client_id,
                now=self.clock(),
                nonce=nonce,
            )

        try:
            return check(self.jwks())
        except AuthError:  # the issuer may have rotated its keys since they were fetched
            return check(self.jwks(refresh=True))

    def token_request(self, form: Mapping[str, str]) -> dict[str, Any]:
        """POST to the token endpoint; the JSON answer, or :class:`OAuthError`."""
        try:
            resp = self.http.post(
                self.endpoint("token_endpoint"),
                data={**form, **self.client.auth_form()},
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise AuthError(
                f"cannot reach the token endpoint of {self.client.issuer}: {exc}",
                issuer=self.client.issuer,
            ) from exc
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.status_code != 200 or not isinstance(data, dict) or "error" in data:
            raise OAuthError(
                self.client.issuer, resp.status_code, data if isinstance(data, dict) else {}
            )
        return data

    def token_set(
        self, answer: Mapping[str, Any], *, nonce: str | None, previous: TokenSet | None = None
    ) -> TokenSet:
        id_token = answer.get("id_token") or (previous.id_token if previous else None)
        if not isinstance(id_token, str):
            raise AuthError(
                f"{self.client.issuer} sent no ID token",
                issuer=self.client.issuer,
                hint="ask for the 'openid' scope",
            )
        claims = self.verify(id_token, nonce=nonce)
        return TokenSet(
            issuer=self.client.issuer,
            client_id=self.client.client_id,
            id_token=id_token,
            refresh_token=answer.get("refresh_token")
            or (previous.refresh_token if previous else None),
            access_token=answer.get("access_token"),
            expires_at=float(claims.get("exp") or 0),
            issued_at=float(claims.get("iat") or self.clock()),
        )

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """New tokens for ``tokens``' refresh token (the issuer may rotate it)."""
        if not tokens.refresh_token:
            raise AuthError(
                f"the session at {self.client.issuer} has no refresh token",
                issuer=self.client.issuer,
                hint="sign in again; ask for the 'offline_access' scope to stay signed in",
            )
        answer = self.token_request(
            {
                "grant_type": "refresh_token",
                "refresh_token": tokens.refresh_token,
                "scope": " ".join(self.client.scopes),
            }
        )
        return self.token_set(answer, nonce=None, previous=tokens)

    def revoke(self, token: str) -> bool:
        """Revoke a refresh token where the issuer offers revocation (RFC 7009)."""
        url = self.discovery.get("revocation_endpoint")
        if not isinstance(url, str):
            return False
        try:
            resp = self.http.post(
                url,
                data={
                    "token": token,
                    "token_type_hint": "refresh_token",
                    **self.client.auth_form(),
                },
            )
        except httpx.HTTPError:
            return False
        return resp.status_code == 200


class OAuthError(AuthError):
    """The token endpoint answered an OAuth2 error (``error``, ``description``)."""

    def __init__(self, issuer: str, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self.error = str(body.get("error") or "")
        self.description = str(body.get("error_description") or "")
        hint = {
            "invalid_grant": "the session is no longer valid: run `juliarun login` again",
            "invalid_client": "check the client id and secret",
            "access_denied": "the sign-in was refused",
            "expired_token": "the code expired before you signed in: run `juliarun login` again",
        }.get(self.error)
        super().__init__(
            f"{issuer} refused the token request ({status} {self.error or 'error'}"
            + (f": {self.description}" if self.description else "")
            + ")",
            issuer=issuer,
            hint=hint,
        )


# ---------------------------------------------------------------------------------------------
# Authorization code + PKCE through a loopback redirect
# ---------------------------------------------------------------------------------------------

_DONE_PAGE = (
    "<!doctype html><title>juliarun</title><p>{message}</p>"
    "<p>You may close this window and return to the terminal.</p>"
)


class _Loopback(HTTPServer):
    answer: dict[str, list[str]] | None = None
    arrived: threading.Event
    state: str


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _Loopback

    def _page(self, status: int, message: str) -> None:
        body = _DONE_PAGE.format(message=html.escape(message)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH or self.server.arrived.is_set():
            self.send_error(404)
            return
        answer = parse_qs(parts.query)
        if answer.get("state") != [self.server.state]:
            # not the sign-in this command started (a forged or stale redirect): ignored
            self._page(400, "This sign-in was not started here (the state does not match).")
            return
        if "code" in answer:
            self._page(200, "Signed in.")
        else:
            why = (answer.get("error_description") or answer.get("error") or ["no code"])[0]
            self._page(400, f"The sign-in failed: {why}")
        self.server.answer = answer
        self.server.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:
        return


def pkce_pair() -> tuple[str, str]:
    """A PKCE ``(verifier, S256 challenge)``."""
    verifier = _b64encode(secrets.token_bytes(32))
    return verifier, _b64encode(hashlib.sha256(verifier.encode()).digest())


def login_browser(
    client: OIDCClient,
    open_url: Callable[[str], object],
    *,
    port: int = 0,
    timeout: float = 300.0,
    extra: Mapping[str, str] | None = None,
    issuer: Issuer | None = None,
) -> TokenSet:
    """Sign in through the browser: listen on ``http://127.0.0.1:<port>/callback`` (any free
    port by default), hand the authorization URL to ``open_url`` (which opens a browser or
    prints it), wait up to ``timeout`` seconds for the redirect, and exchange the code (with
    the PKCE verifier) for verified tokens."""
    own = issuer is None
    iss = issuer or Issuer(client)
    server = _Loopback(("127.0.0.1", port), _CallbackHandler)
    server.arrived = threading.Event()
    server.state = secrets.token_urlsafe(16)
    thread = threading.Thread(target=server.serve_forever, name="juliarun-login", daemon=True)
    thread.start()
    try:
        redirect = f"http://127.0.0.1:{server.server_address[1]}{CALLBACK_PATH}"
        verifier, challenge = pkce_pair()
        state, nonce = server.state, secrets.token_urlsafe(16)
        params = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": redirect,
            "scope": " ".join(client.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **(extra or {}),
        }
        url = iss.endpoint("authorization_endpoint") + "?" + urlencode(params)
        open_url(url)
        if not server.arrived.wait(timeout):
            raise AuthError(
                f"no sign-in came back to {redirect} within {timeout:g}s",
                issuer=client.issuer,
                hint="open the printed URL in a browser on this machine, or use --device",
            )
        answer = server.answer or {}
        if "error" in answer or "code" not in answer:
            detail = (answer.get("error_description") or [""])[0]
            raise AuthError(
                f"the sign-in was refused: {answer['error'][0]}"
                + (f": {detail}" if detail else ""),
                issuer=client.issuer,
            )
        tokens = iss.token_request(
            {
                "grant_type": "authorization_code",
                "code": answer["code"][0],
                "redirect_uri": redirect,
                "code_verifier": verifier,
            }
        )
        return iss.token_set(tokens, nonce=nonce)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        if own:
            iss.close()


# ---------------------------------------------------------------------------------------------
# Device authorization grant (RFC 8628)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceCode:
    """What the person signing in is shown: where to go and which code to enter."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float
    device_code: str = field(repr=False)


def login_device(
    client: OIDCClient,
    show: Callable[[DeviceCode], object],
    *,
    extra: Mapping[str, str] | None = None,
    issuer: Issuer | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> TokenSet:
    """Sign in on a machine without a browser: ask for a device code, ``show`` the person the
    verification URL and user code, and poll the token endpoint (at the issuer's interval,
    slower when told ``slow_down``) until they signed in elsewhere, refused, or the code
    expired."""
    own = issuer is None
    iss = issuer or Issuer(client)
    try:
        url = iss.endpoint("device_authorization_endpoint")
        try:
            resp = iss.http.post(
                url,
                data={"scope": " ".join(client.scopes), **client.auth_form(), **(extra or {})},
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise AuthError(f"cannot reach {url}: {exc}", issuer=client.issuer) from exc
        body = (
            resp.json()
            if resp.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if resp.status_code != 200 or "device_code" not in body:
            raise OAuthError(client.issuer, resp.status_code, body)
        code = DeviceCode(
            user_code=str(body["user_code"]),
            verification_uri=str(body.get("verification_uri") or body.get("verification_url")),
            verification_uri_complete=body.get("verification_uri_complete"),
            expires_in=float(body.get("expires_in") or 600),
            interval=float(body.get("interval") or 5),
            device_code=str(body["device_code"]),
        )
        show(code)
        deadline = clock() + code.expires_in
        interval = code.interval
        while True:
            sleep(interval)
            try:
                answer = iss.token_request(
                    {"grant_type": DEVICE_GRANT, "device_code": code.device_code}
                )
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    pass
                elif exc.error == "slow_down":
                    interval += 5
                else:
                    raise
                if clock() >= deadline:
                    raise AuthError(
                        f"nobody signed in with code {code.user_code} within {code.expires_in:g}s",
                        issuer=client.issuer,
                        hint="run `juliarun login --device` again",
                    ) from exc
                continue
            return iss.token_set(answer, nonce=None)
    finally:
        if own:
            iss.close()
