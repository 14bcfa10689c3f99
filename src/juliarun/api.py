"""The seed's session API: ``init / status / submit / list / tail / delete`` (plus ``scale``,
``wait``, ``record``, ``metrics``, ``search``, ``define_storage`` and ``expose``), the same on
every backend.

A thin facade over a backend and the log and metric stores; Prefect flows run the same drivers.
"""

from __future__ import annotations

import builtins
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from juliarun.backends.base import (
    ClusterStatus,
    CollectResult,
    JobStatus,
    LogCollector,
    LogSource,
    QueueHost,
    RouteObjectHost,
    ServiceHost,
    wait_for_job,
)
from juliarun.backends.follow import follow_job, stored_lines
from juliarun.context import Context as Context  # noqa: PLC0414 - re-exported
from juliarun.errors import BackendError, JuliaRunError, SpecError
from juliarun.logs import LogLine, LogQuery
from juliarun.logs.base import Stream
from juliarun.metrics import MetricQuery, Row
from juliarun.metrics.base import Aggregation
from juliarun.queues.base import Queue
from juliarun.specs import JobSpec, StorageSpec

if TYPE_CHECKING:  # the router's client needs the router extra: imported when exposing
    from juliarun.router.client import RouterClient

log = logging.getLogger("juliarun")

JobRef = JobSpec | str


def init(cluster: str | None = None) -> Context:
    """Connect to a cluster: ``init()`` takes ``JULIARUN_CLUSTER`` or the embedded ``local``
    default; ``init("local" | "docker" | "kubernetes")`` a backend configured from the
    environment; ``init("<block name>")`` a saved cluster block. Either way a cluster block
    builds the context (the settings describe the unsaved default blocks), so the backend,
    stores and storage catalog all live under that block's home."""
    from juliarun.blocks.cluster import connect

    ctx = connect(cluster)
    log.info("compute cluster: %s (%s)", ctx.cluster, ctx.backend.kind)
    return ctx


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise SpecError("start_queue", [("name", f"must be a DNS-1123 label (got {name!r})")])


def _name(job: JobRef) -> str:
    return job if isinstance(job, str) else job.name


def define_storage(ctx: Context, spec: StorageSpec | None = None, **fields: Any) -> StorageSpec:
    """Define named storage once (``define_storage(ctx, name="data", kind="host", path=...)``);
    jobs then mount it by name at ``/mnt/<name>``."""
    spec = spec or StorageSpec(**fields)
    ctx.storage.define(spec)
    return spec


def submit(ctx: Context, job: JobSpec) -> JobStatus:
    """Start ``job``; every storage name must be defined (checked before anything is created)."""
    storage = {name: ctx.storage.get(name) for name in job.storage}
    log.info("starting %s...", job.name)
    return ctx.backend.submit(job, storage)


def status(
    ctx: Context, job: JobRef | None = None, *, verbose: bool = False, out: TextIO | None = None
) -> Any:
    """Without ``job``: the cluster view (printed when ``verbose``). With ``job``: its
    :class:`JobStatus`, whose text reads ``created, 1 processes waiting`` / ``running`` /
    ``succeeded`` / ``failed: <reason>`` (per-worker detail printed when ``verbose``)."""
    result: ClusterStatus | JobStatus
    if job is None:
        result = ctx.backend.cluster_status()
        text = result.render(verbose=True)
    else:
        result = ctx.backend.status(_name(job))
        text = result.describe()
    if verbose:
        print(text, file=out or sys.stdout)
    return result


def list(ctx: Context) -> builtins.list[JobSpec]:
    """Every job on the cluster, oldest first."""
    return ctx.backend.jobs()


def wait(ctx: Context, job: JobRef, *, timeout: float | None = None) -> JobStatus:
    """Block until the job succeeds or fails (raises JobTimeoutError after ``timeout``)."""
    return wait_for_job(
        ctx.backend, _name(job), timeout=timeout, poll_interval=ctx.settings.poll_interval
    )


def tail(
    ctx: Context,
    job: JobRef | None = None,
    *,
    follow: bool = False,
    lines: int | None = None,
    worker: str | None = None,
    stream: Stream | None = None,
    timeout: float | None = None,
    out: TextIO | None = None,
) -> int:
    """Print a job's output as ``timestamp, worker-id, line`` (all jobs when ``job`` is None);
    ``follow`` keeps printing until the job ends. Returns how many lines were printed."""
    out = out or sys.stdout
    name = None if job is None else _name(job)

    def show(line: LogLine) -> None:
        print(line.render(), file=out, flush=True)

    if name is not None and follow:  # until the job ends
        followed = follow_job(
            ctx.backend,
            name,
            ctx.logs,
            on_line=show,
            collect=False,
            worker=worker,
            stream=stream,
            lines=lines,
            timeout=timeout,
            poll_interval=ctx.settings.poll_interval,
        )
        return followed.lines
    printed = 0
    if name is not None and isinstance(ctx.backend, LogSource):  # read from the workers
        for line in ctx.backend.logs(name, lines=lines, worker=worker):
            if stream is None or line.stream == stream:
                show(line)
                printed += 1
        return printed
    query = stored_lines(ctx.backend, name, worker=worker, stream=stream, lines=lines)
    if not follow:
        for line in ctx.logs.query(query):
            show(line)
            printed += 1
        return printed
    deadline = None if timeout is None else time.monotonic() + timeout
    for line in ctx.logs.follow(
        query,
        stop=lambda: deadline is not None and time.monotonic() >= deadline,
        poll_interval=ctx.settings.poll_interval,
    ):
        show(line)
        printed += 1
    return printed


def delete(ctx: Context, job: JobRef | Queue, *, force: bool = False) -> bool:
    """Stop the job's workers (immediately with ``force``) and remove the job; its log lines
    stay searchable. Given a queue from :func:`start_queue`, stop its broker and remove it."""
    if isinstance(job, Queue):
        if job.name is None or not isinstance(ctx.backend, QueueHost):
            raise JuliaRunError(
                f"{job!r} was not started on cluster {ctx.cluster!r}",
                hint="delete a queue through the context start_queue gave it on",
            )
        log.info("deleting queue %s ...", job.name)
        job.close()
        return ctx.backend.delete_queue(job.name, force=force)
    log.info("deleting %s ...", _name(job))
    return ctx.backend.delete(_name(job), force=force)


def start_queue(ctx: Context, name: str = "mq") -> Queue:
    """Start a message queue broker (RabbitMQ) as a service of the cluster, or find it running:
    the seed's ``queue = start_queue(ctx)``. Its ``url`` reaches it from here, its ``env``
    gives a job what it needs to reach it (``JuliaParBatchWorkers(..., env=queue.env)``);
    ``delete(ctx, queue, force=True)`` removes it."""
    if not isinstance(ctx.backend, QueueHost):
        raise BackendError(
            f"cluster {ctx.cluster!r} ({ctx.backend.kind}) cannot run a queue yet",
            hint="start the queue on the local cluster, or give the workers an existing broker "
            "(a RabbitMQ block)",
        )
    _check_name(name)
    log.info("starting %s...", name)
    queue = ctx.backend.start_queue(name)
    log.info("JuliaRun.MessageQ %s up at %s", name, queue)
    return queue


def scale(ctx: Context, job: JobRef, workers: int) -> JobStatus:
    """Change the worker count of a running ``JuliaParBatchWorkers`` job."""
    log.info("changing scale of %s to %d", _name(job), workers)
    return ctx.backend.scale(_name(job), workers)


def record(ctx: Context, name: str, value: float, **tags: str) -> None:
    """Record an application metric (a name-value pair with tags) now."""
    ctx.metrics.record(name, value, {"cluster": ctx.cluster, **tags})


def metrics(
    ctx: Context,
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    last: timedelta | None = None,
    window: timedelta | None = None,
    agg: Aggregation = "mean",
    group_by: tuple[str, ...] = (),
) -> builtins.list[Row]:
    """Aggregate a metric over the ``last`` period (all time when None), per ``window``."""
    since = datetime.now(UTC) - last if last else None
    return ctx.metrics.query(
        MetricQuery(
            name=name, tags=dict(tags or {}), since=since, window=window, agg=agg, group_by=group_by
        )
    )


def search(
    ctx: Context,
    text: str | None = None,
    *,
    job: JobRef | None = None,
    regex: str | None = None,
    limit: int | None = None,
    worker: str | None = None,
    stream: Stream | None = None,
    tenant: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> builtins.list[LogLine]:
    """Full-text (``text``) or regular-expression search over stored output, narrowed by job,
    worker, stream, tenant and the time range ``[since, until)``."""
    if text is None and regex is None:
        raise JuliaRunError("search needs text or regex", hint="e.g. search(ctx, 'hello world')")
    return ctx.logs.query(
        LogQuery(
            text=text,
            regex=regex,
            job=None if job is None else _name(job),
            worker=worker,
            stream=stream,
            tenant=tenant,
            since=since,
            until=until,
            limit=limit,
        )
    )


def collect(
    ctx: Context,
    job: JobRef,
    *,
    on_line: Callable[[LogLine], None] | None = None,
    timeout: float | None = None,
) -> CollectResult:
    """Ship a job's output and metrics into the stores until it ends (Kubernetes: its pod logs,
    exactly once, resuming after what the store already holds). On backends whose supervisor
    ships everything already (local, Docker) there is nothing to do."""
    name = _name(job)
    if not isinstance(ctx.backend, LogCollector):
        ctx.backend.status(name)  # the job must exist
        return CollectResult(name, ended="shipped by the supervisor")
    deadline = None if timeout is None else time.monotonic() + timeout
    return ctx.backend.collect(
        name,
        ctx.logs,
        ctx.metrics,
        on_line=on_line,
        stop=lambda: deadline is not None and time.monotonic() >= deadline,
    )


@dataclass(frozen=True)
class Service:
    """An exposed HTTP service: ``url`` reaches it through the router (members of the job's
    tenant only); ``close()`` takes the route down."""

    url: str
    namespace: str
    name: str
    upstream: str
    router: RouterClient

    def close(self) -> bool:
        """Remove the route; whether it was there."""
        return self.router.unregister(self.namespace, self.name)


def expose(
    ctx: Context,
    job: JobRef,
    port: int = 8000,
    *,
    router: RouterClient | None = None,
    timeout: float = 60.0,
) -> Service:
    """Expose job ``job``'s HTTP service on ``port`` through the authenticating router: the
    route is registered and live on every router replica when this returns, so ``.url`` answers
    at once — to members (edit or view) of the job's tenant, and nobody else. ``router`` defaults
    to the one ``JULIARUN_ROUTER_*`` describes. On a cluster whose router follows route objects
    the route is written in the job's namespace with the context's own credentials: exposing
    needs the tenant's ``edit`` role (a ``view`` member gets a permission error)."""
    if not isinstance(ctx.backend, ServiceHost):
        raise BackendError(
            f"cluster {ctx.cluster!r} ({ctx.backend.kind}) cannot expose services yet",
            hint="expose from a local or Kubernetes cluster",
        )
    if not 1 <= port <= 65535:
        raise SpecError("expose", [("port", f"must be 1..65535 (got {port})")])
    name = _name(job)
    from juliarun.router.client import RouterClient
    from juliarun.router.routes import Route

    router = router or RouterClient.from_env()
    if router.per_tenant:  # a route object in the job's namespace, written as the caller
        if not isinstance(ctx.backend, RouteObjectHost):
            raise BackendError(
                f"cluster {ctx.cluster!r} ({ctx.backend.kind}) keeps no route objects",
                hint="route objects (JULIARUN_ROUTER_ROUTES=objects) are for a Kubernetes "
                "cluster; use file:<path> for a local or Docker one",
            )
        router = router.writing_as(ctx.backend.route_writer())
    endpoint = ctx.backend.service_endpoint(name, port, timeout=timeout)
    route = Route(namespace=endpoint.namespace, name=name, upstream=endpoint.upstream)
    url = router.register(route, timeout=timeout)
    log.info("%s exposed at %s", name, url)
    return Service(url, route.namespace, name, route.upstream, router)
