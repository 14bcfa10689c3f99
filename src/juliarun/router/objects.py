"""Per-tenant route objects: on a cluster each exposed service is a ``Route`` object
(``routes.juliarun.io``, a small custom resource) in the job's own namespace, written by
``juliarun.expose`` with the caller's own credentials, so the apiserver's RBAC decides who may
expose what: the tenant's ``edit`` role may write routes in its namespace, ``view`` may only read
them, nobody may write one in a namespace they have no role in.

A route object says only *which job* and *which port*; it names no namespace (its own is the
route's) and no address. The router resolves the upstream itself: the pod IP of the job's first
running worker in that namespace, a pod the Job controls, not on the node's network. So a route
can reach nothing but a pod of its own tenant (not the apiserver, not another tenant's pod, not
the router or anything else on a node's address).

>>> obj = route_object("team-a", "web", job="web", port=8000, version="v1", job_uid="u-1")
>>> obj["metadata"]["namespace"], obj["spec"], obj["metadata"]["ownerReferences"][0]["uid"]
('team-a', {'job': 'web', 'port': 8000, 'version': 'v1'}, 'u-1')
>>> pick_pod([{"metadata": {"name": "w-1"}, "spec": {"hostNetwork": True},
...            "status": {"phase": "Running", "podIP": "10.0.0.5", "hostIP": "10.0.0.5"}}])
(None, 'its running pods are all on the node network (w-1)')
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from juliarun.errors import BackendError
from juliarun.router.kube import KubeConn
from juliarun.router.routes import OnChange, Route, Table

log = logging.getLogger("juliarun.router")

GROUP = "juliarun.io"
VERSION = "v1"
PLURAL = "routes"
KIND = "Route"
CRD_NAME = f"{PLURAL}.{GROUP}"
API = f"/apis/{GROUP}/{VERSION}"
LABEL = {"app.kubernetes.io/managed-by": "juliarun"}
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def objects_path(namespace: str | None = None) -> str:
    """The route objects of ``namespace`` (every namespace when ``None``)."""
    return f"{API}/namespaces/{namespace}/{PLURAL}" if namespace else f"{API}/{PLURAL}"


def crd_manifest() -> dict[str, Any]:
    """The ``routes.juliarun.io`` CustomResourceDefinition: a structural schema, so the apiserver
    refuses a malformed route and prunes any field it does not define (an ``upstream`` written
    into a route never reaches the router)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": dict(LABEL)},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": PLURAL,
                "singular": "route",
                "kind": KIND,
                "listKind": f"{KIND}List",
                "shortNames": ["jrroute"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [
                        {"name": "Job", "type": "string", "jsonPath": ".spec.job"},
                        {"name": "Port", "type": "integer", "jsonPath": ".spec.port"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A job's HTTP service exposed through juliarun's "
                            "router at /s/<namespace>/<name>/.",
                            "required": ["spec"],
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["job", "port"],
                                    "properties": {
                                        "job": {
                                            "type": "string",
                                            "maxLength": 63,
                                            "pattern": DNS_LABEL,
                                            "description": "The Job (in this namespace) whose "
                                            "first running worker serves.",
                                        },
                                        "port": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": 65535,
                                            "description": "The port it serves on.",
                                        },
                                        "version": {
                                            "type": "string",
                                            "maxLength": 64,
                                            "description": "Changes on each write.",
                                        },
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def route_object(
    namespace: str,
    name: str,
    *,
    job: str,
    port: int,
    version: str,
    job_uid: str | None = None,
) -> dict[str, Any]:
    """The route object for service ``name`` of ``job`` in ``namespace``; owned by the Job when
    its ``job_uid`` is known, so deleting the job deletes its routes."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(LABEL)}
    if job_uid:
        meta["ownerReferences"] = [
            {"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": job_uid}
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": meta,
        "spec": {"job": job, "port": port, "version": version},
    }


def pick_pod(pods: list[dict[str, Any]]) -> tuple[str | None, str]:
    """(the pod IP to serve from, or ``None`` and why not): the first running worker by name,
    never one on the node's network (its address would be the node's, where the kubelet, the
    apiserver and the router listen)."""
    running = sorted(
        (
            p
            for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
            and (p.get("status") or {}).get("podIP")
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ),
        key=lambda p: str(p["metadata"]["name"]),
    )
    if not running:
        return None, "no running pod"
    own = [
        p
        for p in running
        if not (p.get("spec") or {}).get("hostNetwork")
        and p["status"]["podIP"] != p["status"].get("hostIP")
    ]
    if not own:
        names = ", ".join(p["metadata"]["name"] for p in running)
        return None, f"its running pods are all on the node network ({names})"
    return str(own[0]["status"]["podIP"]), ""


class KubeRequests(Protocol):
    """What writes route objects: the caller's own apiserver client (the context's)."""

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Any = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any: ...


class RefusedRoute(Exception):  # noqa: N818 - a value, not an error raised to users
    """A route object the router will not serve (``transient``: it may serve it later)."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class RouteObjects:
    """Route objects in tenants' namespaces, as a route source.

    The router side (``conn``: its service account, which may list and watch routes, get jobs
    and list pods cluster-wide) follows every route object and resolves each upstream from the
    job's pods in the object's namespace. The writer side (``writer``: the caller's own
    credentials, see :meth:`writing_as`) creates, updates and deletes route objects."""

    def __init__(
        self,
        conn: KubeConn | None = None,
        *,
        writer: KubeRequests | None = None,
        retry: float = 1.0,
        refresh: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.writer = writer
        self.retry = retry
        self.refresh = refresh
        self.sleep = sleep
        self.clock = clock
        self.refused: dict[str, str] = {}  # key → why the router does not serve it
        self._objects: dict[str, dict[str, Any]] = {}
        self._table: Table = {}

    def writing_as(self, writer: KubeRequests) -> RouteObjects:
        """The same source, writing with ``writer`` (a context's apiserver client)."""
        return RouteObjects(self.conn, writer=writer, sleep=self.sleep, clock=self.clock)

    # -- writing (the caller's credentials) -----------------------------------------------------

    def _writer(self) -> KubeRequests:
        if self.writer is None:
            raise BackendError(
                "route objects are written with a Kubernetes context's own credentials",
                hint="expose through juliarun.expose(ctx, ...) with a Kubernetes context",
            )
        return self.writer

    def put(self, route: Route) -> None:
        """Create or update the route object of ``route`` in its namespace, owned by its job
        (the upstream's port is written; its host is the router's to find)."""
        writer = self._writer()
        port = urlsplit(route.upstream).port or 80
        job_path = f"/apis/batch/v1/namespaces/{route.namespace}/jobs/{route.owner_job}"
        job = writer.request("GET", job_path)
        body = route_object(
            route.namespace,
            route.name,
            job=route.owner_job,
            port=port,
            version=route.version,
            job_uid=(job.get("metadata") or {}).get("uid"),
        )
        path = objects_path(route.namespace)
        try:
            writer.request("POST", path, body=body)
        except BackendError as exc:
            status = getattr(exc, "status", None)
            if status == 404:
                raise BackendError(
                    f"this cluster serves no {CRD_NAME} (route objects): {exc.message}",
                    hint="a cluster admin installs them with the router "
                    "(juliarun.router.deploy), or set JULIARUN_ROUTER_ROUTES to the admin's "
                    "configmap:<namespace>/<name>",
                ) from exc
            if status != 409:
                raise
            patch = {"metadata": {"ownerReferences": body["metadata"].get("ownerReferences")}}
            writer.request(
                "PATCH",
                f"{path}/{route.name}",
                body={**patch, "spec": body["spec"]},
                content_type="application/merge-patch+json",
            )

    def remove(self, namespace: str, name: str) -> bool:
        try:
            self._writer().request("DELETE", f"{objects_path(namespace)}/{name}")
        except BackendError as exc:
            if getattr(exc, "status", None) == 404:
                return False
            raise
        return True

    def read(self) -> Table:
        return dict(self._table)

    # -- following (the router's service account) -----------------------------------------------

    async def resolve(self, http: httpx.AsyncClient, obj: Mapping[str, Any]) -> Route:
        """The route an object stands for, its upstream found from the job's pods in the
        object's own namespace; :class:`RefusedRoute` when there is none to serve."""
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        job, port = spec.get("job"), spec.get("port")
        if not isinstance(job, str) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise RefusedRoute("spec needs a job name and a port 1..65535")
        resp = await http.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}")
        if resp.status_code == 404:
            raise RefusedRoute(f"no job {job} in namespace {namespace}", transient=True)
        resp.raise_for_status()
        owner = resp.json()
        uid = owner["metadata"]["uid"]
        labels = ((owner.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        if not selector:
            raise RefusedRoute(f"job {job} has no pod selector")
        resp = await http.get(
            f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector}
        )
        resp.raise_for_status()
        pods = [
            p
            for p in resp.json().get("items") or []
            if any(
                o.get("uid") == uid and o.get("controller")
                for o in (p.get("metadata") or {}).get("ownerReferences") or []
            )
        ]
        ip, why = pick_pod(pods)
        if ip is None:
            raise RefusedRoute(f"job {job}: {why}", transient=why == "no running pod")
        return Route(
            namespace=namespace,
            name=name,
            job=job,
            upstream=f"http://{ip}:{port}",
            version=str(spec.get("version") or meta.get("resourceVersion") or ""),
        )

    async def _update(
        self, http: httpx.AsyncClient, obj: dict[str, Any], *, again: bool = False
    ) -> None:
        """Serve (or refuse) route object ``obj``; a new version of a served route naming the
        same job and port keeps its upstream without asking the apiserver (``again``: resolve
        anyway, the periodic look for a moved worker)."""
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}.{meta.get('name')}"
        before, current = self._objects.get(key), self._table.get(key)
        self._objects[key] = obj
        spec, old_spec = obj.get("spec") or {}, (before or {}).get("spec") or {}
        if (
            not again
            and current is not None
            and (spec.get("job"), spec.get("port")) == (old_spec.get("job"), old_spec.get("port"))
        ):
            version = str(spec.get("version") or meta.get("resourceVersion") or "")
            self._table[key] = current.model_copy(update={"version": version})
            return
        try:
            route = await self.resolve(http, obj)
        except RefusedRoute as exc:
            if self._objects.get(key) is not obj:
                return
            log.warning("route %s refused: %s", key, exc.reason)
            self.refused[key] = exc.reason
            self._table.pop(key, None)
            return
        except httpx.HTTPStatusError as exc:  # looked at again with the passing refusals
            self.refused[key] = f"no running pod known yet: the apiserver answered {exc}"
            self._table.pop(key, None)
            return
        except (ValueError, KeyError) as exc:
            self.refused[key] = f"not a route: {exc}"
            self._table.pop(key, None)
            return
        if self._objects.get(key) is not obj:
            return  # changed or deleted meanwhile: the newer event decides
        self.refused.pop(key, None)
        self._table[key] = route

    def _forget(self, key: str) -> None:
        self._objects.pop(key, None)
        self._table.pop(key, None)
        self.refused.pop(key, None)

    async def _relist(self, http: httpx.AsyncClient) -> str:
        resp = await http.get(objects_path())
        resp.raise_for_status()
        listing = resp.json()
        items = listing.get("items") or []
        keys = {f"{o['metadata']['namespace']}.{o['metadata']['name']}" for o in items}
        for key in set(self._objects) - keys:
            self._forget(key)
        for obj in items:
            await self._update(http, obj)
        return str(listing["metadata"]["resourceVersion"])

    async def _revisit(self, http: httpx.AsyncClient, on_change: OnChange) -> None:
        """Resolve again, every ``retry`` s, the refused routes (a worker may have started, or
        moved off the node's network), and every ``refresh`` s all of them (a worker restarted
        on a new address)."""
        last_full = self.clock()
        while True:
            await self.sleep(self.retry)
            full = self.clock() - last_full >= self.refresh
            if full:
                last_full = self.clock()
            keys = list(self._objects) if full else [k for k in self.refused if k in self._objects]
            changed = False
            for key in keys:
                obj = self._objects.get(key)
                if obj is None:
                    continue
                before = self._table.get(key)
                try:
                    await self._update(http, obj, again=True)
                except httpx.HTTPError:
                    continue
                changed = changed or self._table.get(key) != before
            if changed:
                on_change(dict(self._table))

    async def follow(self, on_change: OnChange, *, ready: Callable[[], None]) -> None:
        if self.conn is None:
            raise BackendError("the router follows route objects with its own credentials")
        first = True
        backoff = 0.05
        async with self.conn.async_client(timeout=httpx.Timeout(10, read=None)) as http:
            revisit = asyncio.create_task(self._revisit(http, on_change))
            try:
                while True:
                    try:
                        version = await self._relist(http)
                        on_change(dict(self._table))
                        if first:
                            ready()
                            first = False
                        params = {
                            "watch": "1",
                            "resourceVersion": version,
                            "allowWatchBookmarks": "true",
                        }
                        async with http.stream("GET", objects_path(), params=params) as stream:
                            async for line in stream.aiter_lines():
                                if not line:
                                    continue
                                event = json.loads(line)
                                kind, obj = event.get("type"), event.get("object") or {}
                                if kind in ("ADDED", "MODIFIED"):
                                    await self._update(http, obj)
                                elif kind == "DELETED":
                                    meta = obj.get("metadata") or {}
                                    self._forget(f"{meta.get('namespace')}.{meta.get('name')}")
                                elif kind == "ERROR":
                                    break  # resourceVersion too old: list again
                                else:
                                    continue
                                on_change(dict(self._table))
                        backoff = 0.05
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        log.warning("route objects: %s", exc)
                        await self.sleep(backoff)
                        backoff = min(backoff * 2, 2.0)
            finally:
                revisit.cancel()
