"""run_pipeline on the Prefect server and the Docker engine: bundle → image → job; a second run
with nothing changed takes both builds from the cache."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.flows import run_pipeline
from juliarun.logs import LogQuery
from juliarun.specs import BundlePackage, BundleSpec, ImageSpec, StorageSpec
from tests.integration.test_bundles import GREETER_UUID, make_greeter

pytestmark = [pytest.mark.prefect_server, pytest.mark.docker, pytest.mark.julia]


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url


def _subflow_logs(flow_run_id: uuid.UUID) -> list[str]:
    """Log messages of the pipeline run and its subflows (run logs reach the API shortly
    after)."""
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[flow_run_id, *(r.id for r in subflows)])
                )
            )
            messages = [entry.message for entry in logs]
            if any(m.startswith("step 2/") for m in messages) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)


def _build_task_states(flow_run_id: uuid.UUID) -> dict[str, str]:
    """State names of the build tasks in the pipeline run (and its subflows)."""
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        ids = [flow_run_id, *(run.id for run in subflows)]
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
            task_run_filter=TaskRunFilter(),
        )
    return {
        run.name.rsplit("-", 1)[0]: str(run.state_name)
        for run in task_runs
        if run.name.startswith(("build_image_task", "build_bundle_task"))
    }


def test_a_second_pipeline_run_skips_both_builds(
    prefect_api: str,
    juliarun_home: Path,
    tmp_path: Path,
    julia_image: str,
    registry: str,
    docker_labels: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JULIARUN_JULIA_IMAGE", julia_image)
    monkeypatch.setenv("JULIARUN_DOCKER_LABELS", json.dumps(docker_labels))
    pkg = make_greeter(tmp_path)
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.jl").write_text("using Greeter\nprintln(Greeter.greet())\n")
    (tmp_path / "motd").write_text("built by juliarun\n")
    job = juliarun.JuliaBatch(f"pipe-{uuid.uuid4().hex[:8]}", "/mnt/code/main.jl", "code")
    kwargs = {
        "storage": [StorageSpec(name="code", kind="host", path=str(code))],
        "bundle": BundleSpec(
            name="greet",
            packages=[BundlePackage(name="Greeter", uuid=GREETER_UUID, path=str(pkg))],
        ),
        "image": ImageSpec(
            name="juliarun/test-pipeline",
            base=julia_image,
            files={"/etc/motd": str(tmp_path / "motd")},
            labels=docker_labels,
        ),
        "cluster": "docker",
        "registry": registry,
        "timeout": 300,
    }
    ctx = juliarun.init("docker")
    try:
        first = run_pipeline(job, return_state=True, **kwargs)
        assert first.is_completed(), first.message
        assert first.result()["status"] == "succeeded"
        lines = [line.message for line in ctx.logs.query(LogQuery(job=job.name))]
        assert lines == ["hello world! mean=2.0"]
        states = _build_task_states(first.state_details.flow_run_id)
        assert states == {"build_bundle_task": "Completed", "build_image_task": "Completed"}
        messages = _subflow_logs(first.state_details.flow_run_id)
        assert any(m.startswith("step 2/") and "COPY" in m for m in messages), messages
        assert "  | loaded Greeter" in messages
        juliarun.delete(ctx, job.name)

        second = run_pipeline(job, return_state=True, **kwargs)
        assert second.is_completed(), second.message
        states = _build_task_states(second.state_details.flow_run_id)
        assert states == {"build_bundle_task": "Cached", "build_image_task": "Cached"}
        juliarun.delete(ctx, job.name)
    finally:
        ctx.close()
