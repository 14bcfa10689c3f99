"""The authenticating router: an ASGI app in front of users' HTTP services.

Each request to ``/s/<namespace>/<name>/<path>`` is

1. checked for path tricks (``..`` or ``.`` segments, encoded slashes or backslashes: 400);
2. authenticated: a bearer ID token from a trusted issuer (401 otherwise);
3. authorized: a SubjectAccessReview — may the user get Job ``<name>`` in ``<namespace>``
   (403 otherwise, whether or not the route exists);
4. routed (404 if no route), with every identity header the client sent removed (``X-Forwarded-*``,
   ``X-Remote-*``, ``X-Auth-*``, ``Forwarded``, … in any spelling, ``_`` for ``-`` too) and the
   client's ``Authorization`` withheld; the upstream gets ``X-Remote-User``, one
   ``X-Remote-Group`` per group, and ``X-JuliaRun-Assertion``: a short-lived JWT signed by the
   router whose audience is the service (``<namespace>/<name>``), verifiable with the router's
   keys at ``/.juliarun/jwks.json``.

Responses stream through as they come; websockets are relayed both ways.

A Prefect server can be fronted the same way (``prefect`` in the configuration): its UI at
``<path>/`` and its API at ``<path>/api/``, each request authenticated (bearer or browser
session) and authorized by a SubjectAccessReview on the configured resource, identity headers
stripped as above (see :class:`juliarun.router.config.PrefectFront`).

The router's own endpoints live under ``/.juliarun/``: ``healthz``, ``jwks.json`` and
``routes/<namespace>/<name>`` (the version of a route this replica serves: how ``expose`` knows a
route is live everywhere; 422 and the reason for a route object the router refuses).

>>> bad_path(b"/s/a/b/x/%2e%2e/y"), bad_path(b"/s/a/b/x%2Fy"), bad_path(b"/s/a/b/ok/path")
('dot segment', 'encoded slash', None)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import aiohttp
import httpx
from joserfc import jwt
from joserfc.jwk import ECKey
from multidict import CIMultiDict
from yarl import URL

from juliarun.errors import JuliaRunError
from juliarun.router.authz import AuthorizationUnavailableError, Authorizer, Target
from juliarun.router.config import PrefectFront, StorageShare
from juliarun.router.routes import RouteSource, Table
from juliarun.router.session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SessionError,
    Sessions,
    safe_return,
)
from juliarun.router.tokens import Identity, TokenRejectedError, TokenValidator
from juliarun.router.webdav import webdav_app

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("juliarun.router")

PREFIX = "/s/"
OWN = "/.juliarun/"
ASSERTION_HEADER = "x-juliarun-assertion"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
RESPONSE_DROPPED = frozenset(h.encode() for h in HOP_BY_HOP - {"host"})
# identity headers a client must never set (compared after lowercasing and "_" → "-")
STRIPPED_PREFIXES = (
    "x-forwarded-",
    "x-remote-",
    "x-auth-",
    "x-juliarun-",
    "x-original-",
    "x-real-",
    "x-user",
    "x-email",
    "x-groups",
    "x-preferred-username",
)
STRIPPED = frozenset({"forwarded", "authorization", "remote-user", "x-client-ip", "client-ip"})


def bad_path(raw_path: bytes) -> str | None:
    """Why a raw request path is refused, or ``None``."""
    lowered = raw_path.lower()
    if b"%2f" in lowered or b"%5c" in lowered or b"\\" in raw_path:
        return "encoded slash"
    if b"%00" in lowered:
        return "NUL"
    for segment in unquote_to_bytes(raw_path).split(b"/"):
        if segment in (b".", b".."):
            return "dot segment"
    return None


def stripped(name: str) -> bool:
    """Whether a client-sent header is withheld from the upstream (``Content-Length`` is kept:
    a body is streamed on with its length, not re-chunked, which HTTP/1.0-style services need)."""
    norm = name.lower().replace("_", "-")
    return norm in STRIPPED or norm in HOP_BY_HOP or norm.startswith(STRIPPED_PREFIXES)


class Signer:
    """The router's identity assertions: ES256 JWTs, cached per user and service for a third of
    their life."""

    def __init__(
        self, key: ECKey, issuer: str, *, ttl: int = 60, clock: Callable[[], float] = time.time
    ) -> None:
        self.key = key
        self.kid = key.thumbprint()
        self.issuer = issuer
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[tuple[str, tuple[str, ...], str], tuple[str, float]] = {}

    @classmethod
    def from_file(cls, path: str | None, issuer: str, **kwargs: Any) -> Signer:
        if path:
            with open(path) as f:
                key = ECKey.import_key(json.load(f))
        else:
            key = ECKey.generate_key("P-256")
        return cls(key, issuer, **kwargs)

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "ES256"}]}

    def assertion(self, who: Identity, audience: str) -> str:
        now = self.clock()
        key = (who.user, who.groups, audience)
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        iat = int(now)
        exp = min(iat + self.ttl, int(who.expires))
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": who.user,
            "groups": list(who.groups),
            "iat": iat,
            "exp": exp,
        }
        token = jwt.encode({"alg": "ES256", "kid": self.kid, "typ": "JWT"}, claims, self.key)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (token, now + max(1, (exp - iat) // 3))
        return token


async def _respond(send: Send, status: int, body: dict[str, Any], **headers: str) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


LOGIN = {"www_authenticate": 'Bearer, Cookie realm="juliarun"'}


def cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's cookies (the first of each name)."""
    found: dict[str, str] = {}
    for k, v in headers:
        if k.lower() == b"cookie":
            for part in v.decode("latin-1").split(";"):
                name, _, value = part.strip().partition("=")
                found.setdefault(name, value)
    return found


def cookie(name: str, value: str, max_age: int) -> str:
    """A ``Set-Cookie`` value: host-only, secure, not for scripts, not sent cross-site."""
    return f"{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"


def wants_page(scope: Scope) -> bool:
    """A browser navigating (GET, accepting HTML): sent to sign in rather than given a 401."""
    accept = next((v for k, v in scope["headers"] if k == b"accept"), b"")
    return scope["method"] == "GET" and b"text/html" in accept


async def _redirect(send: Send, location: str, *set_cookies: str) -> None:
    headers = [(b"location", location.encode()), (b"content-length", b"0")]
    headers += [(b"set-cookie", c.encode()) for c in set_cookies]
    headers.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": 302, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _listening(upstream: str, timeout: float = 0.5) -> bool:
    """Whether the upstream accepts a TCP connection (the service is up)."""
    parts = urlsplit(upstream)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, port), timeout=timeout
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


STORAGE_PREFIX = "/storage/"
DAV_READS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND"})
"""WebDAV methods that only read; every other one writes."""


def _basic_password(credentials: str) -> str:
    """The password of HTTP Basic ``credentials`` ("" when they do not decode)."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2].strip()


class RefusedError(JuliaRunError):
    """A request the router refuses: the status it answers and why (logged)."""

    def __init__(self, status: int, reason: str, **headers: str) -> None:
        super().__init__(reason, hint="see the router's answer")
        self.status = status
        self.reason = reason
        self.headers = headers


class RouterApp:
    """The ASGI app of one router replica."""

    def __init__(
        self,
        *,
        validator: TokenValidator,
        authorizer: Authorizer,
        routes: RouteSource,
        signer: Signer,
        upstream_timeout: float = 30.0,
        sessions: Sessions | None = None,
        replica: str = "",
        storage: Sequence[StorageShare] = (),
        prefect: Sequence[PrefectFront] = (),
    ) -> None:
        self.replica = replica
        self.prefect = list(prefect)
        self.shares = {(s.namespace, s.name): s for s in storage}
        self._dav: dict[tuple[str, str], Any] = {}
        self.sessions = sessions
        self.validator = validator
        self.authorizer = authorizer
        self.routes = routes
        self.signer = signer
        self.table: Table = {}
        self.ready = asyncio.Event()
        self.upstream_timeout = upstream_timeout
        self._upstream: aiohttp.ClientSession | None = None
        self._follow: asyncio.Task[None] | None = None
        self._tokens: dict[str, Identity] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def _set_table(self, table: Table) -> None:
        self.table = table

    @property
    def upstream(self) -> aiohttp.ClientSession:
        """The client to the services (aiohttp: its pool stays fast under concurrency). Made
        in the server's event loop, at the first use."""
        if self._upstream is None:
            self._upstream = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=10, sock_read=self.upstream_timeout
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            )
        return self._upstream

    async def start(self) -> None:
        self._follow = asyncio.create_task(
            self.routes.follow(self._set_table, ready=self.ready.set)
        )
        await asyncio.wait_for(self.ready.wait(), timeout=30)

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        if self._upstream is not None:
            await self._upstream.close()
        await self.validator.aclose()
        await self.authorizer.http.aclose()
        if self.sessions is not None:
            await self.sessions.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "websocket":
            await self.websocket(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # reported to the server
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the checks -----------------------------------------------------------------------------

    async def identify(
        self, headers: list[tuple[bytes, bytes]], *, basic: bool = False
    ) -> Identity:
        values = [v for k, v in headers if k.lower() == b"authorization"]
        if not values and self.sessions is not None:
            cookie = cookies(headers).get(SESSION_COOKIE)
            if cookie:
                try:
                    return self.sessions.identity(cookie)
                except SessionError as exc:
                    raise RefusedError(401, f"session: {exc.message}", **LOGIN) from exc
            raise RefusedError(401, "no credentials", **LOGIN)
        if len(values) != 1:
            raise RefusedError(401, "no credentials", www_authenticate="Bearer")
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        token = token.strip()
        if basic and scheme.lower() == "basic":  # WebDAV clients: any user name, the token
            token = _basic_password(token)
            scheme = "bearer"
        if scheme.lower() != "bearer" or not token:
            raise RefusedError(401, "not a bearer token", www_authenticate="Bearer")
        hit = self._tokens.get(token)
        if hit is not None and hit.expires + self.validator.leeway >= self.validator.clock():
            return hit
        try:
            who = await self.validator.validate(token)
        except TokenRejectedError as exc:
            raise RefusedError(
                401, str(exc), www_authenticate='Bearer error="invalid_token"'
            ) from exc
        if len(self._tokens) > 10000:
            self._tokens.clear()
        self._tokens[token] = who
        return who

    async def check(self, scope: Scope) -> tuple[Identity, str, str, str]:
        """(identity, namespace, name, rest of the raw path) of an allowed request."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path.split(b"?", 1)[0]
        why = bad_path(raw_path)
        if why is not None:
            raise RefusedError(400, f"path refused: {why}")
        path = raw_path.decode("latin-1")
        if not path.startswith(PREFIX):
            raise RefusedError(404, "not a service path")
        parts = path[len(PREFIX) :].split("/", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise RefusedError(404, "not a service path")
        namespace, name = parts[0], parts[1]
        rest = "/" + (parts[2] if len(parts) > 2 else "")
        who = await self.identify(scope["headers"])
        route = self.table.get(f"{namespace}.{name}")
        job = route.owner_job if route is not None else name
        try:
            allowed = await self.authorizer.allowed(who, Target(namespace, job))
        except AuthorizationUnavailableError as exc:
            log.warning("authorization unavailable: %s", exc)
            raise RefusedError(503, "authorization unavailable") from exc
        if not allowed:
            raise RefusedError(403, f"{who.user} may not reach {namespace}/{name}")
        if route is None:
            raise RefusedError(404, f"no service {namespace}/{name}")
        return who, namespace, name, rest

    def front(self, scope: Scope) -> PrefectFront | None:
        """The Prefect server the request's path is under, if any (read from the raw path: a
        prefix spelled with escapes is not one)."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw.split(b"?", 1)[0].decode("latin-1")
        for front in self.prefect:
            if path == front.path or path.startswith(front.path + "/"):
                return front
        return None

    async def check_prefect(self, scope: Scope, front: PrefectFront) -> tuple[Identity, str]:
        """(identity, upstream URL) of an allowed request to a fronted Prefect server: the API
        (``<path>/api/...``) goes to the server's ``/api/...``, the UI keeps its path."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path.split(b"?", 1)[0]
        why = bad_path(raw_path)
        if why is not None:
            raise RefusedError(400, f"path refused: {why}")
        rest = raw_path.decode("latin-1")[len(front.path) :]
        who = await self.identify(scope["headers"])
        target = Target(front.namespace, front.name, front.resource, front.group, front.verb)
        try:
            allowed = await self.authorizer.allowed(who, target)
        except AuthorizationUnavailableError as exc:
            log.warning("authorization unavailable: %s", exc)
            raise RefusedError(503, "authorization unavailable") from exc
        if not allowed:
            raise RefusedError(403, f"{who.user} may not reach Prefect at {front.path}")
        path = rest if rest == "/api" or rest.startswith("/api/") else front.path + rest
        query = scope.get("query_string") or b""
        return who, front.upstream + path + ("?" + query.decode("latin-1") if query else "")

    def downstream_headers(
        self, scope: Scope, who: Identity, namespace: str, name: str, *, front: str = ""
    ) -> list[tuple[bytes, bytes]]:
        """What the upstream gets: the client's headers less identity ones, and the router's
        (the assertion's audience is ``<namespace>/<name>``, or ``prefect:<path>`` for the
        Prefect server at ``front``)."""
        out = []
        for k, v in scope["headers"]:
            if stripped(k.decode("latin-1")):
                continue
            if k == b"cookie":
                kept = [c for c in v.split(b";") if not c.strip().startswith(b"__Host-juliarun")]
                if kept:
                    out.append((k, b";".join(kept).strip()))
                continue
            out.append((k, v))
        client = scope.get("client")
        host = next((v for k, v in scope["headers"] if k == b"host"), b"")
        audience = f"prefect:{front}" if front else f"{namespace}/{name}"
        out += [
            (b"x-remote-user", who.user.encode()),
            *((b"x-remote-group", g.encode()) for g in who.groups),
            (ASSERTION_HEADER.encode(), self.signer.assertion(who, audience).encode()),
            (b"x-forwarded-for", (client[0] if client else "").encode()),
            (b"x-forwarded-proto", scope.get("scheme", "http").encode()),
            (b"x-forwarded-host", host),
            (b"x-forwarded-prefix", (front or f"{PREFIX}{namespace}/{name}").encode()),
        ]
        return out

    # -- HTTP -----------------------------------------------------------------------------------

    async def own(self, scope: Scope, send: Send) -> None:
        path: str = scope["path"]
        if path == OWN + "healthz":
            await _respond(
                send, 200, {"ok": True, "routes": len(self.table), "replica": self.replica}
            )
        elif path == OWN + "jwks.json":
            await _respond(send, 200, self.signer.jwks())
        elif path.startswith(OWN + "routes/"):
            key = ".".join(path[len(OWN + "routes/") :].split("/", 1))
            route = self.table.get(key)
            refused = self.routes.refused.get(key)
            if route is None and refused is not None:
                await _respond(send, 422, {"error": f"route refused: {refused}"})
            elif route is None:
                await _respond(send, 404, {"error": "no such route"})
            else:
                up = await _listening(route.upstream)
                state = {"version": route.version, "upstream_up": up, "replica": self.replica}
                await _respond(send, 200, state)
        else:
            await _respond(send, 404, {"error": "not found"})

    async def storage(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A named storage over WebDAV: members of its tenant read (either role) and write
        (``edit``: may create jobs there), a read-only storage refuses every write."""
        raw_path: bytes = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        try:
            why = bad_path(raw_path)
            if why is not None:
                raise RefusedError(400, f"path refused: {why}")
            parts = raw_path.decode("latin-1")[len(STORAGE_PREFIX) :].split("/", 2)
            if len(parts) < 2 or not parts[0] or not parts[1]:
                raise RefusedError(404, "not a storage path")
            namespace, name = parts[0], parts[1]
            if scope["method"] in ("MOVE", "COPY"):
                dest = next((v for k, v in scope["headers"] if k == b"destination"), b"")
                dest_path = urlsplit(dest.decode("latin-1")).path.encode("latin-1")
                own = f"{STORAGE_PREFIX}{namespace}/{name}/".encode()
                if bad_path(dest_path) is not None or not dest_path.startswith(own):
                    raise RefusedError(400, "destination outside this storage")
            who = await self.identify(scope["headers"], basic=True)
            writes = scope["method"] not in DAV_READS
            target = Target(namespace, "", verb="create" if writes else "list")
            try:
                allowed = await self.authorizer.allowed(who, target)
            except AuthorizationUnavailableError as exc:
                raise RefusedError(503, "authorization unavailable") from exc
            if not allowed:
                raise RefusedError(
                    403,
                    f"{who.user} may not {'write' if writes else 'read'} "
                    f"storage {namespace}/{name}",
                )
            share = self.shares.get((namespace, name))
            if share is None:
                raise RefusedError(404, f"no storage {namespace}/{name}")
            if writes and share.read_only:
                raise RefusedError(403, f"storage {namespace}/{name} is read-only")
        except RefusedError as exc:
            log.info("refused %s %s: %s", scope["method"], scope["path"], exc.reason)
            headers = dict(exc.headers)
            if exc.status == 401:  # let WebDAV clients send the token as a password
                headers["www_authenticate"] = 'Basic realm="juliarun storage", charset="UTF-8"'
            await _respond(send, exc.status, {"error": exc.reason}, **headers)
            return
        app = self._dav.get((namespace, name))
        if app is None:
            app = webdav_app(
                Path(share.path),
                read_only=share.read_only,
                mount_path=f"{STORAGE_PREFIX}{namespace}/{name}",
            )
            self._dav[(namespace, name)] = app
        inner = dict(scope)
        inner["headers"] = [  # the client's identity headers go; Host stays (MOVE needs it)
            (k, v)
            for k, v in scope["headers"]
            if k == b"host" or (k != b"authorization" and not stripped(k.decode("latin-1")))
        ]
        inner["headers"].append((b"x-remote-user", who.user.encode()))
        await app(inner, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith(STORAGE_PREFIX):
            await self.storage(scope, receive, send)
            return
        if self.sessions is not None and scope["path"] in (
            self.sessions.callback_path,
            OWN + "login",
        ):
            await self.sign_in(scope, send)
            return
        if scope["path"].startswith(OWN):
            await self.own(scope, send)
            return
        try:
            url, headers = await self.target(scope)
        except RefusedError as exc:
            log.info("refused %s %s: %s", scope["method"], scope["path"], exc.reason)
            if exc.headers == LOGIN and wants_page(scope):
                raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
                query = (scope.get("query_string") or b"").decode("latin-1")
                await self.start_sign_in(send, raw + ("?" + query if query else ""))
                return
            await _respond(send, exc.status, {"error": exc.reason}, **exc.headers)
            return
        await self.forward(scope, receive, send, url, headers)

    async def target(self, scope: Scope) -> tuple[str, list[tuple[bytes, bytes]]]:
        """Where an authorized request (HTTP or websocket) goes, and the headers it takes
        there: a fronted Prefect server's path, or a route's service; RefusedError otherwise."""
        front = self.front(scope)
        if front is not None:
            who, url = await self.check_prefect(scope, front)
            return url, self.downstream_headers(scope, who, "", "", front=front.path)
        who, namespace, name, rest = await self.check(scope)
        route = self.table[f"{namespace}.{name}"]
        query = scope.get("query_string") or b""
        url = route.upstream + rest + ("?" + query.decode("latin-1") if query else "")
        return url, self.downstream_headers(scope, who, namespace, name)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        url: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Relay the request to ``url`` with ``headers``, and its answer back, streamed."""
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])

        async def body() -> Any:
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body"):
                    return

        try:
            response = await self.upstream.request(
                scope["method"],
                URL(url, encoded=True),  # the path exactly as checked, not re-quoted
                headers=CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers),
                data=body() if has_body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream %s: %s", url, exc)
            await _respond(send, 502, {"error": "upstream unavailable"})
            return
        try:
            out = [(k, v) for k, v in response.raw_headers if k.lower() not in RESPONSE_DROPPED]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream %s broke off: %s", url, exc)
        finally:
            response.release()

    # -- browser sign-in --------------------------------------------------------------------

    async def start_sign_in(self, send: Send, return_to: str) -> None:
        assert self.sessions is not None
        target = safe_return(return_to)
        if target is None:
            await _respond(send, 400, {"error": "not a local page to return to"})
            return
        url, pending = await self.sessions.start(target)
        await _redirect(send, url, cookie(LOGIN_COOKIE, pending, 600))

    async def sign_in(self, scope: Scope, send: Send) -> None:
        assert self.sessions is not None
        query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
        if scope["path"] == OWN + "login":
            await self.start_sign_in(send, (query.get("rd") or ["/"])[0])
            return
        pending = cookies(scope["headers"]).get(LOGIN_COOKIE)
        code, state = (query.get("code") or [""])[0], (query.get("state") or [""])[0]
        if not pending or not code or not state:
            await _respond(send, 400, {"error": "no sign-in pending"})
            return
        try:
            session, return_to, max_age = await self.sessions.finish(code, state, pending)
        except (SessionError, httpx.HTTPError) as exc:
            log.warning("sign-in refused: %s", exc)
            await _respond(send, 400, {"error": "sign-in refused"})
            return
        await _redirect(
            send,
            return_to,
            cookie(SESSION_COOKIE, session, max_age),
            cookie(LOGIN_COOKIE, "", 0),
        )

    # -- websockets -----------------------------------------------------------------------------

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, WebSocketException

        await receive()  # websocket.connect
        try:
            url, sent = await self.target(scope)
        except RefusedError as exc:
            log.info("refused websocket %s: %s", scope["path"], exc.reason)
            await send({"type": "websocket.close", "code": 1008})
            return
        url = "ws" + url[4:]  # http(s):// → ws(s)://
        skip = {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions"}
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in sent
            if k not in skip and k != b"sec-websocket-protocol"
        ]
        try:
            upstream = await connect(
                url, additional_headers=headers, subprotocols=scope.get("subprotocols") or None
            )
        except (OSError, WebSocketException) as exc:
            log.warning("upstream websocket %s: %s", url, exc)
            await send({"type": "websocket.close", "code": 1011})
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def client_to_upstream() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    await upstream.close()
                    return
                data: str | bytes = message.get("bytes") or message.get("text") or ""
                await upstream.send(data)

        async def upstream_to_client() -> None:
            try:
                async for data in upstream:
                    if isinstance(data, bytes):
                        await send({"type": "websocket.send", "bytes": data})
                    else:
                        await send({"type": "websocket.send", "text": data})
            except ConnectionClosed:
                pass
            await send({"type": "websocket.close", "code": 1000})

        tasks = [
            asyncio.create_task(client_to_upstream()),
            asyncio.create_task(upstream_to_client()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await upstream.close()
