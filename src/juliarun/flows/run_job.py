"""run_job: storage → submit → stream the job's lines → summary artifact → fail if the job did."""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun, State

from juliarun.errors import JobFailedError, JobNotFoundError
from juliarun.flows._flow import flow
from juliarun.specs import AnyJob, StorageSpec
from juliarun.tasks import (
    delete_job,
    job_summary,
    prepare_storage,
    submit_job,
    watch_job,
)


def _delete_on_cancel(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Cancelling the flow run stops the job's workers."""
    from juliarun import api
    from juliarun.tasks._context import context

    params = flow_run.parameters
    job = params.get("job") or {}
    name = job.get("name") if isinstance(job, dict) else getattr(job, "name", None)
    if name:
        with context(str(params.get("cluster", "local"))) as ctx:
            try:
                api.delete(ctx, name, force=True)
            except JobNotFoundError:  # already gone
                return


@flow(name="run-job", flow_run_name="{job.name}", on_cancellation=[_delete_on_cancel])
def run_job(
    job: AnyJob,
    cluster: str = "local",
    storage: list[StorageSpec] | None = None,
    timeout: float | None = None,
    delete_after: bool = False,
) -> dict[str, Any]:
    """Run one job to the end on ``cluster``: define and provision its storage, submit it,
    stream its lines into this run's logs, publish a table of its workers, and fail when the
    job fails (with its reason)."""
    if storage or job.storage:
        prepare_storage(cluster, job.storage, storage or [])
    submitted = submit_job(cluster, job)
    status = watch_job(cluster, job.name, timeout, tenant=job.tenant, submitted=submitted)
    rows = job_summary(status)
    if delete_after:
        delete_job(cluster, job.name)
    if status.phase == "failed":
        raise JobFailedError(
            job.name, status.reason or "unknown", last_lines=status.last_lines, hint=status.hint
        )
    return {"job": job.name, "status": str(status), "workers": rows}
