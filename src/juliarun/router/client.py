"""Registering a route and waiting until every router replica serves it (what
``juliarun.expose`` does).

>>> RouterClientSettings(url="http://127.0.0.1:8080", routes="file:/tmp/r.json").replica_urls()
['http://127.0.0.1:8080']
>>> client = RouterClient("http://r", ("http://r",), RouterClientSettings(url="http://r",
...     routes="objects").source())
>>> client.per_tenant  # route objects, written as the caller: expose passes its context's client
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from juliarun.router.config import RouterError
from juliarun.router.kube import connect
from juliarun.router.objects import KubeRequests, RouteObjects
from juliarun.router.routes import ConfigMapRoutes, FileRoutes, Route, RouteSource


class RouterClientSettings(BaseSettings):
    """Where the router is, from ``JULIARUN_ROUTER_*``: ``URL`` (how users reach it),
    ``REPLICAS`` (comma-separated base URLs of every replica, default ``URL``) and ``ROUTES``
    (``file:<path>``; ``objects``: route objects in the job's namespace, written with the
    context's own credentials; or ``configmap:<namespace>/<name>``, the admin's table, with
    ``KUBECONFIG``)."""

    model_config = SettingsConfigDict(env_prefix="JULIARUN_ROUTER_", extra="forbid")

    url: str = Field(description="The router's public base URL.")
    replicas: str = Field("", description="Comma-separated replica base URLs (default: url).")
    routes: str = Field(description="file:<path>, objects or configmap:<namespace>/<name>.")
    kubeconfig: str | None = Field(None, description="Kubeconfig for a configmap route table.")
    expect_replicas: int = Field(
        0, ge=0, le=100, description="Replicas sharing the address (0: each has its own URL)."
    )

    def replica_urls(self) -> list[str]:
        urls = [u.strip().rstrip("/") for u in self.replicas.split(",") if u.strip()]
        return urls or [self.url.rstrip("/")]

    def source(self) -> RouteSource:
        kind, _, where = self.routes.partition(":")
        if kind == "file" and where:
            return FileRoutes(where)
        if kind == "objects" and not where:
            return RouteObjects()
        if kind == "configmap" and "/" in where:
            namespace, name = where.split("/", 1)
            return ConfigMapRoutes(connect(self.kubeconfig), namespace, name)
        raise RouterError(
            f"JULIARUN_ROUTER_ROUTES={self.routes!r} names no route table",
            hint="use file:<path>, objects or configmap:<namespace>/<name>",
        )


@dataclass(frozen=True)
class RouterClient:
    """A router's replicas and its route table."""

    url: str
    replicas: tuple[str, ...]
    routes: RouteSource
    expect_replicas: int = 0  # > 0: replicas share the address; wait for that many to answer

    @classmethod
    def from_env(cls) -> RouterClient:
        settings = RouterClientSettings()
        return cls(
            settings.url.rstrip("/"),
            tuple(settings.replica_urls()),
            settings.source(),
            settings.expect_replicas,
        )

    @property
    def per_tenant(self) -> bool:
        """Routes are objects in the job's namespace, written with the caller's credentials."""
        return isinstance(self.routes, RouteObjects)

    def writing_as(self, writer: KubeRequests) -> RouterClient:
        """This router, its route objects written with ``writer`` (a context's own client)."""
        if not isinstance(self.routes, RouteObjects):
            return self
        return replace(self, routes=self.routes.writing_as(writer))

    def service_url(self, route: Route) -> str:
        return f"{self.url}/s/{route.namespace}/{route.name}/"

    def register(
        self,
        route: Route,
        *,
        timeout: float = 10.0,
        expect_replicas: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> str:
        """Write ``route`` and return its URL once every replica serves this version of it and
        reaches its upstream. ``expect_replicas`` > 0: the replicas share one address
        (SO_REUSEPORT); ask it on fresh connections until that many distinct replicas answered."""
        expect = self.expect_replicas if expect_replicas is None else expect_replicas
        self.routes.put(route)
        deadline = clock() + timeout
        waiting = list(self.replicas)
        seen: set[str] = set()
        path = f"/.juliarun/routes/{route.namespace}/{route.name}"
        # one client (making one costs tens of ms), a fresh connection per request
        with httpx.Client(timeout=2, headers={"Connection": "close"}) as http:
            first_refused = 0.0
            while waiting:
                for replica in list(waiting):
                    status, state = 0, dict[str, Any]()
                    try:  # a fresh connection each time: shared-port replicas answer in turn
                        resp = http.get(replica + path)
                        status = resp.status_code
                        state = resp.json() if status in (200, 422) else {}
                    except (httpx.HTTPError, ValueError):
                        state = {}
                    refused = str(state.get("error") or "") if status == 422 else ""
                    if refused and "no running pod" not in refused and "no job" not in refused:
                        # a refusal for good (not a worker still starting), and not the previous
                        # version's: still there a moment after the write
                        first_refused = first_refused or clock()
                        if clock() - first_refused >= 0.5:
                            raise RouterError(
                                f"route {route.namespace}/{route.name}: {refused}",
                                hint="a route reaches only a running worker of its own job, in its "
                                "own namespace, not on the node's network",
                            )
                    if state.get("version") == route.version and state.get("upstream_up"):
                        seen.add(f"{replica} {state.get('replica')}")
                        if expect <= 0 or len(seen) >= expect:
                            waiting.remove(replica)
                if not waiting:
                    break
                if clock() >= deadline:
                    raise RouterError(
                        f"route {route.namespace}/{route.name} is not live on "
                        f"{', '.join(waiting)} after {timeout} s (or its upstream does not answer)",
                        hint="check that the service listens on its port, and that those router "
                        "replicas run and can read the route table",
                    )
                sleep(0.005)
        return self.service_url(route)

    def unregister(self, namespace: str, name: str) -> bool:
        return self.routes.remove(namespace, name)
