"""Cancelling a run of the served run-job deployment stops the job it started: on Kubernetes the
Job and its pods are deleted, on the local backend the supervisor and its workers are gone, and
the flow run ends Cancelled. Each test serves the deployments with `juliarun serve` against the
test Prefect server and cancels through the Prefect client, like the UI's Cancel button."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import pytest
from kubernetes import client

import juliarun
from juliarun.errors import JobNotFoundError
from juliarun.specs import Batch
from tests.integration.fixtures.kubernetes import kubeconfig_path, wait_for
from tests.integration.fixtures.prefect import RUN_JOB, Serve

pytestmark = pytest.mark.prefect_server

# Seconds from the cancel request to the flow run being Cancelled and the job gone: the runner
# notices a Cancelling run within its polling interval (10s by default), kills the flow run's
# process, runs the on_cancellation hook, then the delete waits for the pods to go.
BOUND = 90.0


def _start_run(api_url: str, job: Batch, cluster: str) -> UUID:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        run = run_deployment(
            RUN_JOB,
            parameters={"job": job.model_dump(mode="json"), "cluster": cluster},
            timeout=0,  # return at once: the run is cancelled while it runs
        )
    return run.id


def _flow_run(api_url: str, run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
        return c.read_flow_run(run_id)


def _cancel(api_url: str, run_id: UUID) -> None:
    """What the UI's Cancel (and `prefect flow-run cancel`) does: propose Cancelling."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
        result = c.set_flow_run_state(run_id, Cancelling(message="cancelled by the test"))
    assert result.status.value == "ACCEPT", result


def _running(api_url: str, run_id: UUID, what: str) -> None:
    def check() -> bool:
        state = _flow_run(api_url, run_id).state
        assert state is None or not state.is_final(), f"flow run ended early: {state}"
        return state is not None and state.is_running()

    wait_for(check, 120, 0.5, what)


def _cancelled(api_url: str, run_id: UUID) -> None:
    def check() -> bool:
        state = _flow_run(api_url, run_id).state
        return state is not None and state.is_final() and state

    state = wait_for(check, BOUND, 0.5, "the flow run to end")
    assert state.is_cancelled(), f"{state.type}: {state.message}"


@pytest.mark.kubernetes
def test_cancelling_the_flow_run_deletes_the_job_and_its_pods(
    serve_juliarun: Serve,
    prefect_api_url: str,
    kube_namespace: str,
    kube_julia_image: str,
    kube_core: client.CoreV1Api,
    kube_api: client.ApiClient,
) -> None:
    serve_juliarun(
        "kubernetes",
        {
            "JULIARUN_KUBECONFIG": str(kubeconfig_path()),
            "JULIARUN_KUBE_NAMESPACE": kube_namespace,
            "JULIARUN_JULIA_IMAGE": kube_julia_image,
            "JULIARUN_POLL_INTERVAL": "0.5",
        },
    )
    image = os.environ.get("JULIARUN_BASE_IMAGE") or kube_julia_image
    job = Batch("sleeper", ["sleep", "600"], image=image, cpu="10m", memory="32Mi")
    run_id = _start_run(prefect_api_url, job, "kubernetes")
    selector = f"juliarun.io/job={job.name}"

    def pod_running() -> bool:
        pods = kube_core.list_namespaced_pod(kube_namespace, label_selector=selector).items
        return any(p.status.phase == "Running" for p in pods)

    wait_for(pod_running, 180, 0.5, "the job's pod to run")
    _running(prefect_api_url, run_id, "the flow run to be Running")

    started = time.monotonic()
    _cancel(prefect_api_url, run_id)
    batch = client.BatchV1Api(kube_api)

    def gone() -> bool:
        jobs = batch.list_namespaced_job(kube_namespace, label_selector=selector).items
        pods = kube_core.list_namespaced_pod(kube_namespace, label_selector=selector).items
        return not jobs and not pods

    wait_for(gone, BOUND, 0.5, "the Job and its pods to be deleted")
    _cancelled(prefect_api_url, run_id)
    assert time.monotonic() - started < BOUND


@pytest.mark.julia
def test_cancelling_the_flow_run_stops_a_local_job(
    serve_juliarun: Serve, prefect_api_url: str, juliarun_home: Path
) -> None:
    env = serve_juliarun("local")
    job = Batch("sleeper", ["sleep", "600"])
    run_id = _start_run(prefect_api_url, job, "local")
    jobdir = juliarun_home / "clusters" / "local" / "jobs" / job.name
    ctx = juliarun.init("local")
    try:

        def worker_pid() -> int | None:
            try:
                status = juliarun.status(ctx, job.name)
            except JobNotFoundError:
                return None
            pids = [w.pid for w in status.workers if w.state == "running" and w.pid]
            return pids[0] if pids else None

        worker = wait_for(worker_pid, 120, 0.5, "the worker to run")
        supervisor = int(json.loads((jobdir / "supervisor.json").read_text())["pid"])
        assert _alive(supervisor) and _alive(worker)
        _running(prefect_api_url, run_id, "the flow run to be Running")

        _cancel(prefect_api_url, run_id)
        wait_for(
            lambda: not _alive(worker) and not _alive(supervisor),
            BOUND,
            0.5,
            "the supervisor and worker processes to end",
        )
        _cancelled(prefect_api_url, run_id)
        with pytest.raises(JobNotFoundError):
            juliarun.status(ctx, job.name)
    finally:
        ctx.close()
    assert env["JULIARUN_HOME"] == str(juliarun_home)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
