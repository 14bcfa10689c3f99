"""Worker lifecycles that only a real kubelet shows (kwok never restarts a container nor runs a
process): an ``OnFailure`` worker that fails once is restarted in place and its job succeeds, and
a running 3-worker job scaled to 1 keeps worker 0 (the same pod, never restarted) and loses the
others. Each test runs in its own namespace on the real node (this machine, so ``host`` storage
is a directory here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import juliarun
from juliarun.api import Context
from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.specs import Batch, JuliaParBatchWorkers
from tests.integration.fixtures._service import require
from tests.integration.fixtures.kubernetes import wait_for

pytestmark = pytest.mark.kubernetes

INDEX = "batch.kubernetes.io/job-completion-index"


def backend(ctx: Context) -> KubernetesBackend:
    assert isinstance(ctx.backend, KubernetesBackend)
    return ctx.backend


def pods_by_index(ctx: Context, name: str) -> dict[str, dict[str, Any]]:
    """The job's pods that are not being deleted, by completion index."""
    return {
        pod["metadata"]["annotations"][INDEX]: pod
        for pod in backend(ctx).routes.job_pods(name)
        if not pod["metadata"].get("deletionTimestamp")
    }


def restart_count(pod: dict[str, Any]) -> int:
    [container] = pod["status"]["containerStatuses"]
    return int(container["restartCount"])


@pytest.fixture
def base_image_on_node() -> str:
    image = os.environ.get("JULIARUN_BASE_IMAGE", "")
    require("images", lambda: None if image else "JULIARUN_BASE_IMAGE is not set")
    return image


def test_an_onfailure_worker_that_fails_once_is_restarted_in_place(
    kube_ctx: Context, base_image_on_node: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    juliarun.define_storage(kube_ctx, name="state", kind="host", path=str(state))
    script = (
        "if [ -e /mnt/state/failed-once ]; then echo second; exit 0; fi; "
        "echo first > /mnt/state/failed-once; echo first; exit 1"
    )
    job = Batch(
        "flaky",
        command=["sh", "-c", script],
        image=base_image_on_node,
        storage="state",
        restart="OnFailure",
        backoff_limit=2,
        cpu="50m",
        memory="32Mi",
    )
    juliarun.submit(kube_ctx, job)
    status = juliarun.wait(kube_ctx, job, timeout=180)
    assert status.phase == "succeeded", status.describe()
    assert [(w.id, w.state, w.exit_code, w.restarts) for w in status.workers] == [
        ("flaky-0", "succeeded", 0, 1)
    ]
    # In place: one pod, whose container the kubelet ran twice.
    pods = backend(kube_ctx).routes.job_pods("flaky")
    assert len(pods) == 1
    assert restart_count(pods[0]) == 1
    assert (state / "failed-once").read_text() == "first\n"
    assert juliarun.delete(kube_ctx, job, force=True)


def test_a_worker_that_fails_past_its_backoff_limit_fails_the_job(
    kube_ctx: Context, base_image_on_node: str
) -> None:
    job = Batch(
        "doomed",
        command=["sh", "-c", "echo trying; exit 2"],
        image=base_image_on_node,
        restart="OnFailure",
        backoff_limit=1,
        cpu="50m",
        memory="32Mi",
    )
    juliarun.submit(kube_ctx, job)
    status = juliarun.wait(kube_ctx, job, timeout=180)
    assert status.phase == "failed", status.describe()
    assert status.reason == "worker doomed-0 exited with code 2"
    # Restarted in place once (backoff_limit=1); its second failure ended the Job. (Its state
    # is "failed", or "removed" once the Job controller has deleted the pod.)
    [worker] = status.workers
    assert (worker.id, worker.exit_code, worker.restarts) == ("doomed-0", 2, 1)
    assert juliarun.delete(kube_ctx, job, force=True)


def test_scaling_a_running_job_down_keeps_worker_0(kube_ctx: Context, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "wait.jl").write_text(
        'println("worker ", ENV["JULIARUN_WORKER_INDEX"], " up"); flush(stdout); sleep(600)\n'
    )
    juliarun.define_storage(kube_ctx, name="code", kind="host", path=str(code))
    job = JuliaParBatchWorkers(
        "elastic", "/mnt/code/wait.jl", "code", nworkers=3, cpu="50m", memory="256Mi"
    )
    juliarun.submit(kube_ctx, job)

    def all_running() -> Any:
        status = juliarun.status(kube_ctx, job)
        states = [(w.id, w.state) for w in status.workers]
        return states == [(f"elastic-{i}", "running") for i in range(3)] and status

    running = wait_for(all_running, 240, 0.5, "three running workers")
    assert running.desired_workers == 3
    before = pods_by_index(kube_ctx, "elastic")
    assert sorted(before) == ["0", "1", "2"]

    after = juliarun.scale(kube_ctx, job, 1)
    assert after.desired_workers == 1
    remaining = wait_for(
        lambda: (pods := backend(kube_ctx).routes.job_pods("elastic")) and len(pods) == 1 and pods,
        120,
        0.5,
        "the workers above index 0 to go",
    )
    [pod] = remaining
    assert pod["metadata"]["annotations"][INDEX] == "0"
    assert pod["metadata"]["uid"] == before["0"]["metadata"]["uid"]  # the same pod, kept
    assert pod["status"]["phase"] == "Running" and restart_count(pod) == 0
    status = juliarun.status(kube_ctx, job)
    assert status.phase == "running" and status.desired_workers == 1
    assert [(w.id, w.state, w.restarts) for w in status.workers] == [("elastic-0", "running", 0)]
    assert juliarun.list(kube_ctx)[0].nworkers == 1  # type: ignore[attr-defined]
    assert juliarun.delete(kube_ctx, job, force=True)
