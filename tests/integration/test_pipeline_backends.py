"""Issue 4's end-to-end line on Docker and on local with the specs test_pipeline_kubernetes runs
on the real node: run_pipeline builds a bundle of a local Julia package, an image FROM the julia
image with build_image, and runs a JuliaBatch with host + ramdisk + git storage that prints
hello world! from real Julia. On local the image is built too but ignored: local jobs run on the
host's julia, so only the motd line baked into the image is missing there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.flows import run_pipeline
from juliarun.logs import LogQuery
from tests.integration.pipeline_specs import expected_lines, pipeline_specs

pytestmark = [pytest.mark.prefect_server, pytest.mark.docker, pytest.mark.julia]


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url


@pytest.mark.parametrize("cluster", ["local", "docker"])
def test_the_pipeline_prints_hello_world(
    cluster: str,
    prefect_api: str,
    julia: str,
    juliarun_home: Path,
    tmp_path: Path,
    julia_image: str,
    registry: str,
    docker_labels: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JULIARUN_JULIA_IMAGE", julia_image)
    monkeypatch.setenv("JULIARUN_DOCKER_LABELS", json.dumps(docker_labels))
    specs = pipeline_specs(tmp_path, julia_image, "juliarun/test-pipeline-backends", docker_labels)
    state = run_pipeline(
        specs.job,
        return_state=True,
        **specs.kwargs(),
        cluster=cluster,
        registry=registry,
        timeout=300,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["status"] == "succeeded"
    ctx = juliarun.init(cluster)
    try:
        lines = [line.message for line in ctx.logs.query(LogQuery(job=specs.job.name))]
        assert lines == expected_lines(cluster)
        juliarun.delete(ctx, specs.job.name)
    finally:
        ctx.close()
