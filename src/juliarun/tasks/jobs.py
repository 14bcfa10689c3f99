"""Job tasks: submit, watch (streaming the job's lines into the run's logs), scale, delete."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from juliarun import api
from juliarun.backends.base import JobStatus, LogCollector, LogSource
from juliarun.errors import JobTimeoutError
from juliarun.logs import LogLine, LogQuery
from juliarun.specs import JobSpec
from juliarun.tasks._context import context


@task(cache_policy=NONE)
def submit_job(cluster: str, job: JobSpec) -> str:
    """Submit ``job`` (idempotent for the same spec); returns its status text."""
    with context(cluster) as ctx:
        return str(api.submit(ctx, job))


@task(cache_policy=NONE)
def watch_job(cluster: str, name: str, timeout: float | None = None) -> JobStatus:
    """Follow the job until it ends, logging each of its lines as ``worker | line``; raises
    JobTimeoutError after ``timeout`` seconds (the job is left running).

    On Kubernetes the same pass is the job's log collector: the lines it reads from the pods
    are shipped into the log store (and metric lines and kubelet samples into the metric
    store) as they are logged here."""
    logger = get_run_logger()
    deadline = None if timeout is None else time.monotonic() + timeout
    final: list[JobStatus] = []

    def log_line(line: LogLine) -> None:
        log = logger.warning if line.stream == "stderr" else logger.info
        log("%s | %s", line.worker, line.message)

    with context(cluster) as ctx:
        if isinstance(ctx.backend, LogCollector):
            result = api.collect(ctx, name, on_line=log_line, timeout=timeout)
            logger.info(
                "collected %d lines, %d metric points and %d system samples of %s",
                result.lines,
                result.metric_points,
                result.system_points,
                name,
            )
            current = ctx.backend.status(name)
            if not current.done:
                raise JobTimeoutError(name, timeout or 0.0, str(current))
            return current
        since = ctx.backend.status(name).created_at
        query = LogQuery(job=name, cluster=ctx.cluster, since=since)

        def stop() -> bool:
            current = ctx.backend.status(name)
            if current.done:
                final.append(current)
                return True
            return deadline is not None and time.monotonic() >= deadline

        def past_deadline() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        lines = (
            ctx.backend.logs(name, follow=True, stop=past_deadline)  # read from the workers
            if isinstance(ctx.backend, LogSource)
            else ctx.logs.follow(query, stop=stop, poll_interval=ctx.settings.poll_interval)
        )
        for line in lines:
            log_line(line)
        if not final and isinstance(ctx.backend, LogSource):  # its follow ended with the job
            current = ctx.backend.status(name)
            if current.done:
                final.append(current)
        if not final:
            raise JobTimeoutError(name, timeout or 0.0, str(ctx.backend.status(name)))
    return final[-1]


@task(cache_policy=NONE)
def job_summary(status: JobStatus) -> list[dict[str, Any]]:
    """Publish a table artifact: one row per worker with exit code, restarts and duration."""
    rows: list[dict[str, Any]] = [
        {
            "worker": w.id,
            "state": w.state,
            "exit_code": w.exit_code,
            "restarts": w.restarts,
            "duration_s": None if w.duration is None else round(w.duration, 3),
        }
        for w in status.workers
    ]
    create_table_artifact(
        key=f"job-{status.name}",
        table=rows,
        description=f"{status.kind}({status.name}): {status}",
    )
    return rows


@task(cache_policy=NONE)
def scale_job(cluster: str, name: str, workers: int) -> str:
    with context(cluster) as ctx:
        return str(api.scale(ctx, name, workers))


@task(cache_policy=NONE)
def delete_job(cluster: str, name: str, force: bool = False) -> bool:
    with context(cluster) as ctx:
        return api.delete(ctx, name, force=force)
