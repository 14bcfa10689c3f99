"""Bearer tokens: validated against each trusted issuer's published keys, mapped to a Kubernetes
identity the way the apiserver maps it.

Keys come from the issuer's discovery document and JWKS, cached; a token signed by a key not in
the cache makes the router fetch the JWKS again (at most every ``min_refresh`` seconds), so an
issuer's key rotation needs no restart. RefusedError: no or malformed token, ``alg`` none or any
symmetric algorithm, an issuer not trusted, a key the issuer does not publish, a bad signature,
a wrong audience, an expired or not-yet-valid token, names starting with ``system:``.

>>> header = _b64(json.dumps({"alg": "none"}).encode())
>>> _header(header + ".e30.")["alg"]
'none'
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from juliarun.errors import JuliaRunError
from juliarun.router.config import IssuerConfig

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


class TokenRejectedError(JuliaRunError):
    """Why a token was refused (the reason goes to the router's log, not to the client)."""

    default_hint = "get a fresh ID token from a trusted issuer"


@dataclass(frozen=True)
class Identity:
    """Who the bearer is, as Kubernetes names them (prefixes applied)."""

    user: str
    groups: tuple[str, ...]
    issuer: str
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _header(token: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64(token.split(".", 1)[0]))
    except (ValueError, IndexError) as exc:
        raise TokenRejectedError("malformed token header") from exc
    if not isinstance(value, dict):
        raise TokenRejectedError("malformed token header")
    return value


def _payload(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejectedError("not a compact JWS")
    try:
        value = json.loads(_unb64(parts[1]))
    except ValueError as exc:
        raise TokenRejectedError("malformed token payload") from exc
    if not isinstance(value, dict):
        raise TokenRejectedError("malformed token payload")
    return value


@dataclass
class _Keys:
    keys: KeySet | None = None
    fetched: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TokenValidator:
    """Validates ID tokens from ``issuers``; ``clock`` gives the time (injected for tests)."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        leeway: float = 0.0,
        min_refresh: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuers = {i.url: i for i in issuers}
        self.leeway = leeway
        self.min_refresh = min_refresh
        self.clock = clock
        self.monotonic = monotonic
        self._keys = {url: _Keys() for url in self.issuers}
        self._http: dict[str, httpx.AsyncClient] = {}
        self.fetches = 0  # JWKS fetches so far (tests read it)

    def _client(self, issuer: IssuerConfig) -> httpx.AsyncClient:
        client = self._http.get(issuer.url)
        if client is None:
            verify: ssl.SSLContext | bool = True
            if issuer.ca_pem:
                verify = ssl.create_default_context(cadata=issuer.ca_pem)
            client = httpx.AsyncClient(verify=verify, timeout=10)
            self._http[issuer.url] = client
        return client

    async def aclose(self) -> None:
        for client in self._http.values():
            await client.aclose()
        self._http.clear()

    async def _fetch(self, issuer: IssuerConfig) -> KeySet:
        client = self._client(issuer)
        discovery = (await client.get(issuer.url + "/.well-known/openid-configuration")).json()
        if discovery.get("issuer") != issuer.url:
            raise TokenRejectedError(
                f"issuer {issuer.url} names itself {discovery.get('issuer')!r}"
            )
        jwks = (await client.get(discovery["jwks_uri"])).json()
        self.fetches += 1
        usable = [k for k in jwks.get("keys", []) if k.get("use", "sig") == "sig"]
        return KeySet.import_key_set({"keys": usable})

    async def _key_for(self, issuer: IssuerConfig, kid: str | None) -> Any:
        cache = self._keys[issuer.url]

        def find() -> Any:
            if cache.keys is None:
                return None
            for key in cache.keys.keys:
                if kid is None or key.kid == kid:
                    return key
            return None

        if (key := find()) is not None:
            return key
        async with cache.lock:
            if (key := find()) is not None:
                return key
            if self.monotonic() - cache.fetched < self.min_refresh:
                raise TokenRejectedError(f"key {kid!r} is not published by {issuer.url}")
            try:
                cache.keys = await self._fetch(issuer)
            except (httpx.HTTPError, ValueError, KeyError, JoseError) as exc:
                raise TokenRejectedError(f"cannot fetch the keys of {issuer.url}: {exc}") from exc
            finally:
                cache.fetched = self.monotonic()
            if (key := find()) is None:
                raise TokenRejectedError(f"key {kid!r} is not published by {issuer.url}")
            return key

    async def validate(self, token: str) -> Identity:
        """The bearer's identity, or :class:`TokenRejectedError`."""
        return (await self.validate_claims(token))[0]

    async def validate_claims(
        self, token: str, *, audience: str | None = None
    ) -> tuple[Identity, dict[str, Any]]:
        """The bearer's identity and the token's claims; ``audience`` (instead of the issuer's
        audiences) for the router's own sign-in client."""
        header = _header(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRejectedError(f"algorithm {alg!r} is not accepted")
        unverified = _payload(token)
        issuer = self.issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise TokenRejectedError(f"issuer {unverified.get('iss')!r} is not trusted")
        kid = header.get("kid")
        key = await self._key_for(issuer, kid if isinstance(kid, str) else None)
        try:
            signed = jws.deserialize_compact(token, key, algorithms=[alg])
        except (JoseError, ValueError) as exc:
            raise TokenRejectedError(f"bad signature: {exc}") from exc
        claims = json.loads(signed.payload)
        if not isinstance(claims, dict):
            raise TokenRejectedError("claims are not an object")
        audiences = [audience] if audience else issuer.audiences
        return self._identity(issuer, claims, audiences), claims

    def _identity(
        self, issuer: IssuerConfig, claims: dict[str, Any], audiences: list[str]
    ) -> Identity:
        now = self.clock()
        if claims.get("iss") != issuer.url:
            raise TokenRejectedError("issuer mismatch")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud or [])
        if not set(auds) & set(audiences):
            raise TokenRejectedError(f"audience {auds} is not one of {audiences}")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or now > exp + self.leeway:
            raise TokenRejectedError("token expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + self.leeway < nbf:
            raise TokenRejectedError("token not yet valid")
        name = claims.get(issuer.username_claim)
        if not isinstance(name, str) or not name:
            raise TokenRejectedError(f"no {issuer.username_claim} claim")
        raw_groups = claims.get(issuer.groups_claim) or []
        if isinstance(raw_groups, str):
            raw_groups = [raw_groups]
        if not isinstance(raw_groups, list) or not all(isinstance(g, str) for g in raw_groups):
            raise TokenRejectedError(f"claim {issuer.groups_claim} is not a list of names")
        user = issuer.username_prefix + name
        groups = tuple(issuer.groups_prefix + g for g in raw_groups)
        for value in (name, user, *raw_groups, *groups):
            if value.startswith("system:"):
                raise TokenRejectedError(f"reserved name {value!r}")
        return Identity(user, groups, issuer.url, float(exp))
