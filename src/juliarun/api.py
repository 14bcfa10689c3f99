"""The seed's session API: ``init / status / submit / list / tail / delete`` (plus ``scale``,
``wait``, ``record``, ``metrics``, ``search`` and ``define_storage``), the same on every backend.

A thin facade over a backend and the log and metric stores; Prefect flows run the same drivers.
"""

from __future__ import annotations

import builtins
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from juliarun.backends.base import (
    Backend,
    ClusterStatus,
    CollectResult,
    JobStatus,
    LogCollector,
    LogSource,
    wait_for_job,
)
from juliarun.errors import ConfigError, JuliaRunError
from juliarun.logs import LogLine, LogQuery, LogStore, open_log_store
from juliarun.logs.base import Stream
from juliarun.metrics import MetricQuery, MetricStore, Row, open_metric_store
from juliarun.metrics.base import Aggregation
from juliarun.settings import Settings, load_settings
from juliarun.specs import JobSpec, StorageSpec
from juliarun.storage import StorageCatalog

log = logging.getLogger("juliarun")

JobRef = JobSpec | str


@dataclass
class Context:
    """A connection to one cluster: its backend, log store, metric store and storage catalog."""

    cluster: str
    backend: Backend
    logs: LogStore
    metrics: MetricStore
    storage: StorageCatalog
    settings: Settings = field(repr=False)

    def close(self) -> None:
        self.backend.close()
        self.logs.close()
        self.metrics.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local(settings: Settings, cluster: str) -> Backend:
    from juliarun.backends.local import LocalBackend

    return LocalBackend(
        settings.home,
        cluster=cluster,
        log_store=settings.log_store_config(),
        metric_store=settings.metric_store_config(),
        julia=settings.julia,
        max_workers=settings.local_max_workers,
        kill_grace=settings.kill_grace,
    )


def _docker(settings: Settings, cluster: str) -> Backend:
    from juliarun.backends.docker import DockerBackend

    return DockerBackend(
        settings.home,
        cluster=cluster,
        log_store=settings.log_store_config(),
        metric_store=settings.metric_store_config(),
        image=settings.julia_image,
        labels=settings.docker_labels,
        max_workers=settings.docker_max_workers,
        kill_grace=settings.kill_grace,
    )


def _kubernetes(settings: Settings, cluster: str) -> Backend:
    from juliarun.backends.kubernetes import from_settings

    return from_settings(settings, cluster)


def _not_yet(kind: str) -> Callable[[Settings, str], Backend]:
    def factory(settings: Settings, cluster: str) -> Backend:
        raise ConfigError(
            f"the {kind} backend is not available in this version of juliarun",
            hint="use init('local') (the embedded default)",
        )

    return factory


# Backends configured from the environment, by kind.
BACKENDS: dict[str, Callable[[Settings, str], Backend]] = {
    "local": _local,
    "docker": _docker,
    "kubernetes": _kubernetes,
}


def init(cluster: str | None = None) -> Context:
    """Connect to a cluster: ``init()`` takes ``JULIARUN_CLUSTER`` or the embedded ``local``
    default; ``init("local" | "docker" | "kubernetes")`` a backend configured from the
    environment; ``init("<block name>")`` a saved cluster block."""
    settings = load_settings()
    name = cluster or settings.cluster or "local"
    factory = BACKENDS.get(name)
    if factory is not None:
        backend = factory(settings, name)
        logs = open_log_store(settings.log_store_config())
        metrics = open_metric_store(settings.metric_store_config())
    else:
        from juliarun.blocks.cluster import load_cluster

        block = load_cluster(name)
        backend = block.backend()
        logs = block.log_store()
        metrics = block.metric_store()
    log.info("compute cluster: %s (%s)", name, backend.kind)
    return Context(
        name, backend, logs, metrics, StorageCatalog(settings.home / "storage.json"), settings
    )


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
    if name is not None and isinstance(ctx.backend, LogSource):  # read from the workers
        printed = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        for line in ctx.backend.logs(
            name,
            follow=follow,
            lines=lines,
            worker=worker,
            stop=lambda: deadline is not None and time.monotonic() >= deadline,
        ):
            if stream is None or line.stream == stream:
                print(line.render(), file=out, flush=True)
                printed += 1
        return printed
    since = ctx.backend.status(name).created_at if name else None
    query = LogQuery(
        job=name,
        worker=worker,
        stream=stream,
        cluster=ctx.cluster,
        since=since,
        limit=lines,
    )
    printed = 0
    if not follow:
        for line in ctx.logs.query(query):
            print(line.render(), file=out)
            printed += 1
        return printed
    deadline = None if timeout is None else time.monotonic() + timeout

    def stop() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            return True
        return name is not None and ctx.backend.status(name).done

    for line in ctx.logs.follow(query, stop=stop, poll_interval=ctx.settings.poll_interval):
        print(line.render(), file=out, flush=True)
        printed += 1
    return printed


def delete(ctx: Context, job: JobRef, *, force: bool = False) -> bool:
    """Stop the job's workers (immediately with ``force``) and remove the job. Its log lines
    stay searchable."""
    log.info("deleting %s ...", _name(job))
    return ctx.backend.delete(_name(job), force=force)


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
