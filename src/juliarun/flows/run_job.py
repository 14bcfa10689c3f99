"""run_job: storage → submit → stream the job's lines → summary artifact → fail if the job did."""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun, State
from pydantic.json_schema import SkipJsonSchema

from juliarun.errors import JobFailedError, JobNotFoundError, SpecError, fold_stack_frames
from juliarun.flows._flow import flow
from juliarun.flows._specs import job_run_name, job_spec, rejected, specs
from juliarun.specs import AnyJob, StorageSpec
from juliarun.tasks import prepare_storage, submit_job, watch_job
from juliarun.tasks.jobs import finish_job


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


@flow(
    name="run-job",
    flow_run_name=job_run_name,
    on_cancellation=[_delete_on_cancel],
    validate_parameters=False,  # juliarun checks the specs: see juliarun.flows._specs
)
def run_job(
    job: AnyJob,
    cluster: str = "local",
    storage: SkipJsonSchema[list[StorageSpec] | None] = None,
    timeout: float | None = None,
    delete_after: bool = False,
) -> dict[str, Any]:
    """Run one job to the end on a cluster: define and provision its storage, submit it,
    stream its lines into this run's logs, publish a table of its workers, and fail when the
    job fails (with its reason). A job the spec rules refuse fails the run with juliarun's
    one-line message, naming each field, before anything is created.

    Args:
        job: The job: pick its kind, then fill in its fields (required ones first).
        cluster: Where the job runs: local, docker, kubernetes, or the name of a saved
            cluster block.
        storage: (Python and API callers; not in the form.) Storage definitions recorded
            before the job starts, as define_storage does: the job mounts storage by the
            names in its own storage field, whichever way each name was defined.
        timeout: Seconds to wait for the job to finish; empty waits as long as it runs.
        delete_after: Delete the job (its workers and records) once it finished.
    """
    try:
        job = job_spec(job)
        storage = specs(storage, StorageSpec)
    except SpecError as exc:
        return rejected(exc)  # type: ignore[no-any-return]
    timeout = None if timeout is None else float(timeout)
    if storage or job.storage:
        prepare_storage(cluster, job.storage, storage or [])
    submitted = submit_job(cluster, job)
    status = watch_job(cluster, job.name, timeout, tenant=job.tenant, submitted=submitted)
    # The worker table and the deletion are made here rather than as tasks of their own (a
    # task run costs tens of milliseconds, most of a short job's overhead), and overlap.
    rows = finish_job(cluster, status, delete=delete_after)
    if status.phase == "failed":
        # The job's lines (its stack trace too) are in the run's logs already: the failure
        # names the error, and Prefect repeats its message twice (the exception, the state).
        raise JobFailedError(
            job.name,
            status.reason or "unknown",
            last_lines=fold_stack_frames(status.last_lines),
            hint=status.hint,
        )
    return {"job": job.name, "status": str(status), "workers": rows}
