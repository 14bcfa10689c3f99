"""The route table: which upstream serves ``/s/<namespace>/<name>/``.

Three homes, one shape (a route per ``<namespace>.<name>``):

- :class:`FileRoutes` — a JSON file, for the local and Docker backends (every router process on
  the machine reads the same file);
- :class:`juliarun.router.objects.RouteObjects` — on a cluster, a route object in each tenant's
  namespace, written by its members with their own credentials (RBAC decides), upstream resolved
  by the router from the job's pods;
- :class:`ConfigMapRoutes` — one ConfigMap an admin writes (any namespace, any upstream).

Cluster replicas watch theirs, so a route is live on all of them milliseconds after it is
written; :class:`MergedRoutes` follows several at once.

Writers (``put``/``remove``) are synchronous (the facade calls them); readers run ``follow`` in
the router's event loop and get the whole table at each change.

>>> r = Route(namespace="team-a", name="web", upstream="http://127.0.0.1:8000")
>>> r.key, Route.model_validate_json(r.model_dump_json()) == r
('team-a.web', True)
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import Field, field_validator

from juliarun.errors import BackendError
from juliarun.router.kube import KubeConn
from juliarun.specs import Name, _Model

Table = dict[str, "Route"]
OnChange = Callable[[Table], None]


def http_origin(value: str) -> str:
    """``value`` if it is an ``http(s)://host[:port]`` URL with nothing else (no path, query,
    fragment or user), without a trailing slash; else ValueError saying which rule failed.

    >>> http_origin("http://10.0.0.5:8000/")
    'http://10.0.0.5:8000'
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s)://host:port URL (got {value!r})")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"must name only scheme, host and port (got {value!r})")
    return value.rstrip("/")


class Route(_Model):
    """One exposed service: reached at ``/s/<namespace>/<name>/`` by whoever may get Job
    ``job`` (default ``name``) in ``namespace``."""

    namespace: Name = Field(description="The tenant's namespace.")
    name: Name = Field(description="The service name (the path segment).")
    upstream: str = Field(description="http://host:port of the service.")
    job: Name | None = Field(None, description="The job it belongs to (default: name).")
    version: str = Field(
        default_factory=lambda: uuid.uuid4().hex[:12], description="Changes on each write."
    )

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_origin(value)

    @property
    def key(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def owner_job(self) -> str:
        return self.job or self.name


def parse_table(data: dict[str, str]) -> Table:
    """Routes from ``{key: json}``; an entry that does not parse is skipped (and logged by the
    caller): one bad write must not take every route down."""
    table: Table = {}
    for key, text in data.items():
        try:
            route = Route.model_validate_json(text)
        except Exception:  # skip the bad entry, keep the others
            continue
        if route.key == key:
            table[key] = route
    return table


class RouteSource(Protocol):
    """Where a router reads and a client writes routes."""

    def put(self, route: Route) -> None: ...

    def remove(self, namespace: str, name: str) -> bool: ...

    def read(self) -> Table: ...

    @property
    def refused(self) -> dict[str, str]:
        """Routes written but not served, and why (``{key: reason}``)."""
        ...

    async def follow(self, on_change: OnChange, *, ready: Callable[[], None]) -> None:
        """Call ``on_change`` with the whole table now and after each change (forever);
        ``ready`` once the first table was delivered."""
        ...


class FileRoutes:
    """A JSON file ``{"<ns>.<name>": "<route json>", ...}``, written atomically under a lock."""

    def __init__(
        self,
        path: str | Path,
        *,
        poll: float = 0.01,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.path = Path(path)
        self.poll = poll
        self.sleep = sleep
        self.refused: dict[str, str] = {}

    @contextmanager
    def _locked(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _raw(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write(self, data: dict[str, str]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.path)

    def put(self, route: Route) -> None:
        with self._locked():
            data = self._raw()
            data[route.key] = route.model_dump_json()
            self._write(data)

    def remove(self, namespace: str, name: str) -> bool:
        with self._locked():
            data = self._raw()
            gone = data.pop(f"{namespace}.{name}", None) is not None
            self._write(data)
        return gone

    def read(self) -> Table:
        return parse_table(self._raw())

    async def follow(self, on_change: OnChange, *, ready: Callable[[], None]) -> None:
        seen: tuple[int, int] | None = None
        first = True
        while True:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_ino)
            except FileNotFoundError:
                stamp = (0, 0)
            if stamp != seen:
                seen = stamp
                on_change(self.read())
                if first:
                    ready()
                    first = False
            await self.sleep(self.poll)


class ConfigMapRoutes:
    """ConfigMap ``name`` in ``namespace``; one data key per route, written with a merge patch
    (so writers of different routes never conflict), followed with a watch."""

    def __init__(
        self,
        conn: KubeConn,
        namespace: str,
        name: str,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.namespace = namespace
        self.name = name
        self.sleep = sleep
        self.clock = clock
        self.path = f"/api/v1/namespaces/{namespace}/configmaps"
        self.refused: dict[str, str] = {}

    def _client(self) -> httpx.Client:
        return self.conn.client(timeout=15)

    def _patch(self, data: dict[str, str | None]) -> None:
        with self._client() as http:
            resp = http.patch(
                f"{self.path}/{self.name}",
                json={"data": data},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            if resp.status_code == 404:
                body = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": self.name,
                        "labels": {"app.kubernetes.io/managed-by": "juliarun"},
                    },
                    "data": {k: v for k, v in data.items() if v is not None},
                }
                resp = http.post(self.path, json=body)
                if resp.status_code == 409:  # created meanwhile: patch it
                    self._patch(data)
                    return
            if resp.status_code not in (200, 201):
                raise BackendError(
                    f"route table {self.namespace}/{self.name}: "
                    f"{resp.status_code} {resp.text[:200]}",
                    hint="the credentials need get/patch/create on that ConfigMap",
                )

    def put(self, route: Route) -> None:
        self._patch({route.key: route.model_dump_json()})

    def remove(self, namespace: str, name: str) -> bool:
        key = f"{namespace}.{name}"
        present = key in self._raw()
        if present:
            self._patch({key: None})
        return present

    def _raw(self) -> dict[str, str]:
        with self._client() as http:
            resp = http.get(f"{self.path}/{self.name}")
        if resp.status_code == 404:
            return {}
        resp.raise_for_status()
        return dict(resp.json().get("data") or {})

    def read(self) -> Table:
        return parse_table(self._raw())

    async def follow(self, on_change: OnChange, *, ready: Callable[[], None]) -> None:
        first = True
        backoff = 0.05
        async with self.conn.async_client(timeout=httpx.Timeout(10, read=None)) as http:
            while True:
                try:
                    selector = {"fieldSelector": f"metadata.name={self.name}"}
                    resp = await http.get(self.path, params=selector)
                    resp.raise_for_status()
                    listing = resp.json()
                    items = listing.get("items") or []
                    on_change(parse_table(dict(items[0].get("data") or {})) if items else {})
                    if first:
                        ready()
                        first = False
                    params = {
                        "fieldSelector": f"metadata.name={self.name}",
                        "watch": "1",
                        "resourceVersion": listing["metadata"]["resourceVersion"],
                        "allowWatchBookmarks": "true",
                    }
                    async with http.stream("GET", self.path, params=params) as stream:
                        async for line in stream.aiter_lines():
                            if not line:
                                continue
                            event = json.loads(line)
                            kind = event.get("type")
                            if kind in ("ADDED", "MODIFIED"):
                                on_change(parse_table(dict(event["object"].get("data") or {})))
                            elif kind == "DELETED":
                                on_change({})
                            elif kind == "ERROR":
                                break  # resourceVersion too old: list again
                    backoff = 0.05
                except (httpx.HTTPError, ValueError, KeyError):
                    await self.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)


class MergedRoutes:
    """Several route sources followed at once (the first source with a key wins); read only."""

    def __init__(self, sources: list[RouteSource]) -> None:
        self.sources = sources

    def put(self, route: Route) -> None:
        raise BackendError("a merged route table is read only", hint="write to one source")

    def remove(self, namespace: str, name: str) -> bool:
        raise BackendError("a merged route table is read only", hint="write to one source")

    def read(self) -> Table:
        return self._merge([s.read() for s in self.sources])

    @property
    def refused(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for source in reversed(self.sources):
            found.update(source.refused)
        return found

    @staticmethod
    def _merge(tables: list[Table]) -> Table:
        merged: Table = {}
        for table in reversed(tables):
            merged.update(table)
        return merged

    async def follow(self, on_change: OnChange, *, ready: Callable[[], None]) -> None:
        tables: list[Table] = [{} for _ in self.sources]
        waiting = set(range(len(self.sources)))

        def changed(i: int) -> OnChange:
            def call(table: Table) -> None:
                tables[i] = table
                if not waiting:
                    on_change(self._merge(tables))

            return call

        def became_ready(i: int) -> Callable[[], None]:
            def call() -> None:
                waiting.discard(i)
                if not waiting:
                    on_change(self._merge(tables))
                    ready()

            return call

        await asyncio.gather(
            *(s.follow(changed(i), ready=became_ready(i)) for i, s in enumerate(self.sources))
        )
