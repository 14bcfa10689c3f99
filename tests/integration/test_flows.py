"""The Prefect layer against the test environment's Prefect server: run_job, cluster_report,
blocks, cancellation-free failure reporting and artifacts."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.blocks import LocalCluster, Storage
from juliarun.errors import ConfigError, JobFailedError
from juliarun.flows import cluster_report, run_job
from juliarun.settings import Settings

pytestmark = pytest.mark.prefect_server


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url


@pytest.fixture
def saved_blocks(prefect_api: str) -> Iterator[list[tuple[type[Block], str]]]:
    """Blocks a test saves, deleted from the shared Prefect server afterwards."""
    saved: list[tuple[type[Block], str]] = []
    yield saved
    for block_type, name in saved:
        block_type.delete(name)


@pytest.fixture
def code(juliarun_home: Path, tmp_path: Path) -> Path:
    root = tmp_path / "code"
    (root / "hello").mkdir(parents=True)
    (root / "hello" / "hello.jl").write_text('println("hello world!")\nprintln(stderr, "to err")\n')
    return root


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.julia
def test_run_job_streams_lines_and_publishes_a_worker_table(
    prefect_api: str, code: Path, julia: str
) -> None:
    name = _unique("hello")
    job = juliarun.JuliaBatch(name, "/mnt/code/hello/hello.jl", "code")
    state = run_job(
        job,
        storage=[juliarun.StorageSpec(name="code", kind="host", path=str(code))],
        return_state=True,
    )
    assert state.is_completed()
    result = state.result()
    assert result["status"] == "succeeded"
    assert result["workers"][0]["worker"] == f"{name}-0"
    assert result["workers"][0]["exit_code"] == 0
    run_id = state.state_details.flow_run_id
    want = f"{name}-0 | hello world!"
    deadline = time.monotonic() + 30  # run logs reach the API in batches, shortly after the run
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200
            )
            messages = [entry.message for entry in logs]
            if want in messages or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"job-{name}"]))
        )
    assert want in messages
    assert f"{name}-0 | to err" in messages
    assert [a.flow_run_id for a in artifacts] == [run_id]
    table = artifacts[0].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows[0]["worker"] == f"{name}-0" and rows[0]["exit_code"] == 0
    ctx = juliarun.init()
    assert juliarun.status(ctx, name).phase == "succeeded"
    juliarun.delete(ctx, name)


def test_run_job_fails_with_the_jobs_reason(prefect_api: str, juliarun_home: Path) -> None:
    name = _unique("fails")
    job = juliarun.Batch(name, command=["bash", "-c", "echo about to fail; exit 3"])
    state = run_job(job, delete_after=True, return_state=True)
    assert state.is_failed()
    assert "exit code 3" in state.message
    with pytest.raises(JobFailedError) as info:
        state.result()
    assert info.value.last_lines == ["about to fail"]
    assert juliarun.list(juliarun.init()) == []


@pytest.mark.julia
def test_a_failed_julia_runs_stack_trace_is_in_its_logs_once(
    prefect_api: str, code: Path, julia: str
) -> None:
    """The job's lines carry the Julia stack trace; the failure (which Prefect logs twice: the
    exception, then the final state) names the error and folds the frames."""
    (code / "throw.jl").write_text('println("before")\nf() = error("boom from julia")\nf()\n')
    name = _unique("throws")
    job = juliarun.JuliaBatch(name, "/mnt/code/throw.jl", "code")
    state = run_job(
        job,
        storage=[juliarun.StorageSpec(name="code", kind="host", path=str(code))],
        delete_after=True,
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(JobFailedError) as info:
        state.result()
    assert info.value.last_lines[:2] == [
        "ERROR: LoadError: boom from julia",
        "Stacktrace: (7 frames, in the job's output)",
    ]
    frame = "[1] error(::String) at ./error.jl:33"
    run_id = state.state_details.flow_run_id
    deadline = time.monotonic() + 30  # run logs reach the API in batches
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200
            )
            text = "\n".join(entry.message for entry in logs)
            if "Finished in state Failed" in text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert f"{name}-0 |  {frame}" in text
    assert text.count(frame) == 1, text
    assert text.count("boom from julia") == 3, text  # the job's line, the exception, the state


def test_run_job_deleting_its_job_keeps_the_table_and_the_lines(
    prefect_api: str, juliarun_home: Path
) -> None:
    name = _unique("gone")
    state = run_job(
        juliarun.Batch(name, command=["bash", "-c", "echo bye"]),
        delete_after=True,
        return_state=True,
    )
    assert state.is_completed()
    result = state.result()
    assert result["status"] == "succeeded"
    assert juliarun.list(juliarun.init()) == []
    run_id = state.state_details.flow_run_id
    wanted = {f"{name}-0 | bye", f"deleted job {name}"}
    deadline = time.monotonic() + 30  # run logs reach the API in batches, shortly after the run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"job-{name}"]))
        )
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200
            )
            messages = {entry.message for entry in logs}
            if wanted <= messages or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert wanted <= messages
    assert [a.flow_run_id for a in artifacts] == [run_id]
    table = artifacts[0].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows == result["workers"]
    assert [(r["worker"], r["exit_code"]) for r in rows] == [(f"{name}-0", 0)]


def test_runs_read_the_settings_again_only_when_the_environment_changed(
    prefect_api: str, juliarun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from juliarun.tasks import _context

    reads: list[int] = []
    load = _context.load_settings

    def counting() -> Settings:
        settings = load()
        reads.append(settings.local_max_workers)
        return settings

    monkeypatch.setattr(_context, "load_settings", counting)
    monkeypatch.setenv("JULIARUN_LOCAL_MAX_WORKERS", "7")  # an environment no run has seen
    for _ in range(2):
        assert run_job(juliarun.Batch(_unique("env"), ["true"]), delete_after=True)
    assert reads == [7]  # submit, watch and the deletion of two runs: one read
    monkeypatch.setenv("JULIARUN_LOCAL_MAX_WORKERS", "5")
    assert run_job(juliarun.Batch(_unique("env"), ["true"]), delete_after=True)
    assert reads == [7, 5]  # the next run has the changed setting


def test_run_job_rejects_unknown_storage_before_submitting(
    prefect_api: str, juliarun_home: Path
) -> None:
    job = juliarun.Batch(_unique("nostore"), command=["true"], storage="missing")
    state = run_job(job, return_state=True)
    assert state.is_failed()
    assert "storage 'missing' is not defined" in state.message
    assert juliarun.list(juliarun.init()) == []


def test_cluster_report_records_free_capacity(prefect_api: str, juliarun_home: Path) -> None:
    report = cluster_report()
    assert report["cluster"] == "local"
    assert report["nodes"] and {"cpu", "mem", "dsk", "pod"} <= set(report["nodes"][0])
    # One point per node and resource, each the value the report shows.
    ctx = juliarun.init()
    for resource in ("cpu", "gpu", "mem", "dsk", "pod"):
        rows = juliarun.metrics(
            ctx, f"juliarun.node.{resource}_free_pct", agg="count", group_by=("node",)
        )
        assert [(r.group, r.value) for r in rows] == [
            ({"node": n["node"]}, 1.0) for n in report["nodes"]
        ], resource
        rows = juliarun.metrics(
            ctx, f"juliarun.node.{resource}_free_pct", agg="last", group_by=("node",)
        )
        assert [(r.group["node"], r.value) for r in rows] == [
            (n["node"], float(n[resource])) for n in report["nodes"]
        ], resource
    assert 0 <= float(report["nodes"][0]["pod"]) <= 100


def test_cluster_and_storage_blocks_round_trip(
    prefect_api: str,
    juliarun_home: Path,
    tmp_path: Path,
    saved_blocks: list[tuple[type[Block], str]],
) -> None:
    block_name = _unique("laptop")
    LocalCluster(home=str(tmp_path / "other-home"), max_workers=5).save(block_name)
    saved_blocks.append((LocalCluster, block_name))
    ctx = juliarun.init(block_name)
    assert ctx.backend.kind == "local"
    assert ctx.cluster == block_name
    assert juliarun.status(ctx).nodes[0].pod == 100
    storage_name = _unique("data")
    Storage(kind="host", path=str(tmp_path / "data")).save(storage_name)
    saved_blocks.append((Storage, storage_name))
    spec = Storage.load(storage_name).spec()
    assert spec.name == storage_name and spec.path == str(tmp_path / "data")


def test_init_with_an_unknown_cluster_names_it(prefect_api: str, juliarun_home: Path) -> None:
    with pytest.raises(ConfigError, match="no cluster 'nowhere'"):
        juliarun.init("nowhere")


def test_run_job_uses_storage_saved_as_a_block(
    prefect_api: str,
    juliarun_home: Path,
    tmp_path: Path,
    saved_blocks: list[tuple[type[Block], str]],
) -> None:
    storage_name = _unique("saved")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "input.txt").write_text("from the block\n")
    Storage(kind="host", path=str(tmp_path / "saved")).save(storage_name)
    saved_blocks.append((Storage, storage_name))
    name = _unique("reader")
    job = juliarun.Batch(
        name, command=["cat", f"/mnt/{storage_name}/input.txt"], storage=storage_name
    )
    result = run_job(job)
    assert result["status"] == "succeeded"
    ctx = juliarun.init()
    assert [line.message for line in juliarun.search(ctx, "block", job=name)] == ["from the block"]
    assert ctx.storage.get(storage_name).path == str(tmp_path / "saved")
    juliarun.delete(ctx, name)
