"""Issue 4 item 6: one deployment takes a user from specs to a running job. `juliarun serve`
serves run_pipeline as run-pipeline; a run triggered with the specs as JSON parameters (as the
UI or `run_deployment` sends them) provisions the storage, builds the bundle and the image, runs
the job, and the job's hello world! is in the served JULIARUN_HOME's log store."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

import juliarun
from juliarun.blocks import LocalCluster
from juliarun.logs import LogQuery
from tests.integration.fixtures.prefect import RUN_JOB, _served
from tests.integration.pipeline_specs import expected_lines, pipeline_specs

pytestmark = [pytest.mark.prefect_server, pytest.mark.docker, pytest.mark.julia]

RUN_PIPELINE = "run-pipeline/run-pipeline"


def _wait_until_served(api_url: str) -> None:
    """The serve fixture waits for run-job; the deployments after it register moments later."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
        run_job = c.read_deployment_by_name(RUN_JOB)
    since = run_job.updated or run_job.created
    assert since is not None
    deadline = time.monotonic() + 60
    while not _served(api_url, RUN_PIPELINE, since=since):
        assert time.monotonic() < deadline, f"{RUN_PIPELINE} was not served in time"
        time.sleep(0.5)


def test_the_run_pipeline_deployment_runs_the_specs(
    served: dict[str, str],
    prefect_api_url: str,
    juliarun_home: Path,
    tmp_path: Path,
    julia_image: str,
    registry: str,
    docker_labels: dict[str, str],
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The test server is shared: any `juliarun serve` on it may pick the run up, so the cluster
    # is a LocalCluster block on this test's JULIARUN_HOME (the served one) rather than "local".
    # On local the image is built and pushed, then ignored (the job runs on the host's julia).
    cluster = f"pipe-{uuid.uuid4().hex[:8]}"
    name = "juliarun/test-pipeline-deployment"
    specs = pipeline_specs(tmp_path, julia_image, name, docker_labels)
    parameters = {**specs.parameters(), "cluster": cluster, "registry": registry, "timeout": 300}
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        LocalCluster(home=served["JULIARUN_HOME"]).save(cluster)
        _wait_until_served(prefect_api_url)
        run = run_deployment(RUN_PIPELINE, parameters=parameters, timeout=600)
    assert run.state is not None
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
    assert served["JULIARUN_HOME"] == str(juliarun_home)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        ctx = juliarun.init(cluster)
    try:
        lines = [line.message for line in ctx.logs.query(LogQuery(job=specs.job.name))]
        assert lines == expected_lines("local")
        juliarun.delete(ctx, specs.job.name)
    finally:
        ctx.close()
        with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
            LocalCluster.delete(cluster)
