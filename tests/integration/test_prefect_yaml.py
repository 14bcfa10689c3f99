"""Issue 14, item 3: the repository's prefect.yaml deploys every juliarun flow to a work pool,
and a `prefect worker` of that pool runs them.

Against the shared test server, so everything is unique to the test and removed afterwards: the
work pool, and the deployments (prefect.yaml's, each name suffixed: `run-job/run-job` itself is
what `juliarun serve` registers on the same server). The deploy and the worker are the `prefect`
CLI, as a person runs them; the worker is stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.prefect_server]

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]


def _deployments_for(suffix: str, pool: str) -> dict[str, object]:
    """prefect.yaml with each deployment renamed ``<name>-<suffix>`` on work pool ``pool``."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    config.pop("definitions", None)
    for deployment in config["deployments"]:
        deployment["name"] = f"{deployment['name']}-{suffix}"
        deployment["work_pool"]["name"] = pool
    return config


@pytest.fixture
def pool(prefect_api_url: str) -> Iterator[str]:
    """A process work pool with a unique name; it and every deployment on it are deleted
    afterwards."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, WorkPoolFilter, WorkPoolFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = f"juliarun-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    subprocess.run(
        [*PREFECT, "work-pool", "create", name, "--type", "process"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield name
    finally:
        with (
            temporary_settings(updates={PREFECT_API_URL: prefect_api_url}),
            get_client(sync_client=True) as client,
        ):
            for deployment in client.read_deployments(
                deployment_filter=DeploymentFilter(),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[name])),
            ):
                client.delete_deployment(deployment.id)
            client.delete_work_pool(name)


@pytest.fixture
def worker(
    pool: str, prefect_api_url: str, juliarun_home: Path, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect worker start --pool POOL` (its flow runs share this test's JULIARUN_HOME),
    stopped by its PID at teardown; its output is in tmp_path/worker.log."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url,
        "JULIARUN_HOME": str(juliarun_home),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        # Prefect's worker (3.9) does not exit on a first SIGTERM: it forwards it to itself as
        # SIGINT, which reaches asyncio.run's handler and cancels the CLI's task once, and the
        # worker stays idle in its event loop (it waited out the 30s this teardown allowed).
        # Its handler turns a second SIGTERM into SIGKILL: Prefect's own way to end it.
        for _ in range(2):
            if proc.poll() is not None:
                break
            os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=3)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # its flow-run processes, if any
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


# `prefect deploy --all` registers every juliarun deployment on the shared server, as each
# `juliarun serve` does: one at a time with them (a test reading a deployment's schedule saw it
# replaced)
@pytest.mark.xdist_group("shared-names")
def test_prefect_deploy_all_then_a_worker_runs_run_job(
    pool: str,
    worker: subprocess.Popen[bytes],
    prefect_api_url: str,
    juliarun_home: Path,
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import juliarun

    suffix = uuid.uuid4().hex[:8]
    project = tmp_path / "project"
    project.mkdir()
    (project / "prefect.yaml").write_text(yaml.safe_dump(_deployments_for(suffix, pool)))
    deploy = subprocess.run(
        [*PREFECT, "deploy", "--all"],
        cwd=project,
        env={**os.environ, "PREFECT_API_URL": prefect_api_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    flows = ["run-job", "run-pipeline", "cluster-report", "prune-bundles", "prune-storage"]
    flows += ["evaluate-alerts", "tenant", "build-image", "build-package-bundle", "prewarm-image"]
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_api_url}),
        get_client(sync_client=True) as client,
    ):
        deployed = {
            name: client.read_deployment_by_name(f"{name}/{name}-{suffix}") for name in flows
        }
    assert {d.work_pool_name for d in deployed.values()} == {pool}
    assert deployed["run-job"].entrypoint == "juliarun.flows.run_job.run_job"
    assert deployed["run-job"].pull_steps in (None, [])
    intervals = {
        name: [s.schedule.interval for s in d.schedules]  # type: ignore[union-attr]
        for name, d in deployed.items()
    }
    assert intervals == {
        "run-job": [],
        "run-pipeline": [],
        "cluster-report": [timedelta(minutes=15)],
        "prune-bundles": [timedelta(days=1)],
        "prune-storage": [timedelta(days=1)],
        "evaluate-alerts": [],
        "tenant": [],
        "build-image": [],
        "build-package-bundle": [],
        "prewarm-image": [],
    }

    job = juliarun.Batch(
        f"yaml-{suffix}", command=["bash", "-c", "echo from a worker; echo err >&2"]
    )
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        run = run_deployment(
            f"run-job/run-job-{suffix}",
            parameters={"job": job.model_dump(mode="json"), "cluster": "local"},
            timeout=240,
        )
    assert run.state is not None
    log_text = (tmp_path / "worker.log").read_text(errors="replace")
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}\n{log_text}"
    assert worker.poll() is None, log_text

    want = {f"{job.name}-0 | from a worker", f"{job.name}-0 | err"}
    deadline = time.monotonic() + 30  # run logs reach the API in batches
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_api_url}),
        get_client(sync_client=True) as client,
    ):
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200
            )
            messages = {entry.message for entry in logs}
            if want <= messages or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"job-{job.name}"]))
        )
    assert want <= messages, sorted(messages)
    assert [a.flow_run_id for a in artifacts] == [run.id]
    data = artifacts[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    assert [(r["worker"], r["state"], r["exit_code"]) for r in rows] == [
        (f"{job.name}-0", "succeeded", 0)
    ]
    # the job ran in the worker's JULIARUN_HOME, as `juliarun serve` would have run it
    with juliarun.init("local") as ctx:
        assert juliarun.status(ctx, job.name).phase == "succeeded"
