"""Job tasks: submit, watch (streaming the job's lines into the run's logs), scale, delete.

The tasks of a run share one context per cluster (:mod:`juliarun.tasks._context`); results
pass between them as models (a :class:`JobStatus`), and each job's state changes are Prefect
events (``juliarun.job.<phase>``) that automations can react to."""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State, TaskRun
from prefect.events import emit_event

from juliarun import api
from juliarun.backends.base import JobStatus
from juliarun.backends.follow import follow_job
from juliarun.errors import SpecError, StorageNotFoundError
from juliarun.logs import LogLine
from juliarun.specs import JobSpec
from juliarun.tasks._context import context

JOB_EVENT = "juliarun.job."  # + created / running / succeeded / failed


def emit_job_event(cluster: str, tenant: str, status: JobStatus) -> None:
    """``juliarun.job.<phase>`` for ``status``, its resource the job on its cluster."""
    emit_event(
        event=f"{JOB_EVENT}{status.phase}",
        resource={
            "prefect.resource.id": f"juliarun.job.{cluster}.{tenant}.{status.name}",
            "prefect.resource.name": status.name,
            "juliarun.cluster": cluster,
            "juliarun.tenant": tenant,
            "juliarun.job": status.name,
        },
        payload={
            "phase": status.phase,
            "status": str(status),
            "reason": status.reason,
            "hint": status.hint,
            "kind": status.kind,
            "workers": status.desired_workers,
        },
    )


def _transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry failures that may pass (a git fetch, a busy file), not bad input."""
    try:
        state.result()
    except (StorageNotFoundError, SpecError):
        return False
    except Exception:
        return True
    return False


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def submit_job(cluster: str, job: JobSpec) -> JobStatus:
    """Submit ``job`` (idempotent for the same spec: a retry after a transient failure is
    safe), provisioning its storage once; returns its status."""
    with context(cluster) as ctx:
        status = api.submit(ctx, job)
    emit_job_event(cluster, job.tenant, status)
    return status


@task(cache_policy=NONE)
def watch_job(
    cluster: str,
    name: str,
    timeout: float | None = None,
    *,
    tenant: str = "default",
    submitted: JobStatus | None = None,
) -> JobStatus:
    """Follow the job until it ends, logging each of its lines as ``worker | line``; raises
    JobTimeoutError after ``timeout`` seconds (the job is left running).

    On Kubernetes the same pass is the job's log collector: the lines it reads from the pods
    are shipped into the log store (and metric lines and kubelet samples into the metric
    store) as they are logged here. ``submitted`` is the status ``submit_job`` returned (its
    phase already emitted as an event)."""
    logger = get_run_logger()

    def log_line(line: LogLine) -> None:
        log = logger.warning if line.stream == "stderr" else logger.info
        log("%s | %s", line.worker, line.message)

    seen: list[str] = [] if submitted is None else [submitted.phase]

    def on_status(status: JobStatus) -> None:
        """``juliarun.job.running`` once, when the job is seen running."""
        if status.phase == "running" and "running" not in seen:
            seen.append("running")
            emit_job_event(cluster, tenant, status)

    with context(cluster) as ctx:
        followed = follow_job(
            ctx.backend,
            name,
            ctx.logs,
            metrics=ctx.metrics,
            on_line=log_line,
            on_status=on_status,
            timeout=timeout,
            poll_interval=ctx.settings.poll_interval,
            created_at=None if submitted is None else submitted.created_at,
        )
    if followed.collected is not None:
        result = followed.collected
        logger.info(
            "collected %d lines, %d metric points and %d system samples of %s",
            result.lines,
            result.metric_points,
            result.system_points,
            name,
        )
    status = followed.raise_if_running()
    emit_job_event(cluster, tenant, status)
    return status


def publish_job_summary(status: JobStatus) -> list[dict[str, Any]]:
    """Publish a table artifact of the run (``job-<name>``): one row per worker with exit
    code, restarts and duration; returns the rows. ``run_job`` calls it in its own body (a
    task run per job costs tens of milliseconds), :func:`job_summary` is the same as a task."""
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
def job_summary(status: JobStatus) -> list[dict[str, Any]]:
    """Publish a table artifact: one row per worker with exit code, restarts and duration."""
    return publish_job_summary(status)


@task(cache_policy=NONE)
def scale_job(cluster: str, name: str, workers: int) -> JobStatus:
    with context(cluster) as ctx:
        return api.scale(ctx, name, workers)


def remove_job(cluster: str, name: str, force: bool = False) -> bool:
    """Delete the job (its workers and records) with the run's context, saying so in the
    run's logs; ``run_job`` calls it in its own body, :func:`delete_job` is the same as a task."""
    with context(cluster) as ctx:
        deleted = api.delete(ctx, name, force=force)
    get_run_logger().info("deleted job %s", name)
    return deleted


@task(cache_policy=NONE)
def delete_job(cluster: str, name: str, force: bool = False) -> bool:
    return remove_job(cluster, name, force=force)


def finish_job(cluster: str, status: JobStatus, *, delete: bool) -> list[dict[str, Any]]:
    """The end of ``run_job`` for a job that ended: publish its worker table
    (:func:`publish_job_summary`) and, with ``delete``, delete it (:func:`remove_job`) while
    the table's request is on its way to the Prefect API; returns the table's rows once both
    are done (an error of either is raised)."""
    if not delete:
        return publish_job_summary(status)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="juliarun-summary") as pool:
        # The run's context (flow run, API client) goes along: the table is this run's.
        table = pool.submit(contextvars.copy_context().run, publish_job_summary, status)
        remove_job(cluster, status.name)
        return table.result()
