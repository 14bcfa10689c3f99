"""One factory, one context per run, job events: a cluster block with its own home keeps
everything there (storage catalog, job state, logs, bundles) end to end through the flows, and
a job's state changes reach Prefect as events."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.backends.bundles import current_address
from juliarun.blocks import LocalCluster
from juliarun.flows import build_package_bundle, run_job
from juliarun.tasks._context import close_all
from tests.integration.test_bundles import greeter_bundle

pytestmark = [pytest.mark.prefect_server, pytest.mark.julia]


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url
    close_all()


@pytest.fixture
def block_home(prefect_api: str, tmp_path: Path, juliarun_home: Path) -> Iterator[tuple[str, Path]]:
    """A saved LocalCluster whose home is not JULIARUN_HOME; deleted afterwards."""
    name = f"own-home-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "block-home"
    LocalCluster(home=str(home)).save(name)
    yield name, home
    with juliarun.init(name) as ctx:
        for job in juliarun.list(ctx):
            juliarun.delete(ctx, job, force=True)
    LocalCluster.delete(name)


def test_a_block_with_its_own_home_keeps_bundles_jobs_and_storage_there(
    block_home: tuple[str, Path], juliarun_home: Path, tmp_path: Path, julia: str
) -> None:
    cluster, home = block_home
    built = build_package_bundle(greeter_bundle(tmp_path), cluster)
    assert Path(built["path"]).is_relative_to(home / "bundles")
    assert current_address(home, "greet") == Path(built["path"]).resolve()
    assert current_address(juliarun_home, "greet") is None

    code = tmp_path / "code"
    code.mkdir()
    (code / "main.jl").write_text("using Greeter\nprintln(Greeter.greet())\n")
    storage = juliarun.StorageSpec(name="code", kind="host", path=str(code))
    job = juliarun.JuliaBatch("greeting", "/mnt/code/main.jl", "code", pkg_bundle="greet")
    result = run_job(job, cluster=cluster, storage=[storage])
    assert result["status"] == "succeeded"

    with juliarun.init(cluster) as ctx:
        assert ctx.settings.home == home
        assert [s.name for s in ctx.storage.all()] == ["code"]
        assert [line.message for line in juliarun.search(ctx, "hello")] == ["hello world! mean=2.0"]
        assert [j.name for j in juliarun.list(ctx)] == ["greeting"]
    assert (home / "storage.json").is_file() and not (juliarun_home / "storage.json").exists()
    with juliarun.init("local") as env_ctx:
        assert juliarun.list(env_ctx) == []


def job_events(name: str, expected: int) -> list[tuple[str, dict[str, object]]]:
    """The ``juliarun.job.*`` events of local job ``name``, oldest first (they reach the API
    asynchronously: waited for until ``expected`` have)."""
    event_filter = EventFilter(
        resource=EventResourceFilter(id=[f"juliarun.job.local.default.{name}"])
    )
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=event_filter, limit=50).events
            if len(events) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    ordered = sorted(events, key=lambda e: e.occurred)
    return [(e.event, dict(e.payload)) for e in ordered]


def test_job_state_changes_are_prefect_events(prefect_api: str, juliarun_home: Path) -> None:
    ok = juliarun.Batch(f"evt-ok-{uuid.uuid4().hex[:6]}", ["sh", "-c", "echo hi; sleep 1"])
    run_job(ok, delete_after=True)
    events = job_events(ok.name, 3)
    assert [e for e, _ in events] == [
        "juliarun.job.created",
        "juliarun.job.running",
        "juliarun.job.succeeded",
    ]
    assert events[-1][1]["status"] == "succeeded"

    bad = juliarun.Batch(f"evt-bad-{uuid.uuid4().hex[:6]}", ["sh", "-c", "exit 3"])
    with pytest.raises(juliarun.JuliaRunError):
        run_job(bad, delete_after=True)
    events = job_events(bad.name, 2)
    assert events[0][0] == "juliarun.job.created"
    assert events[-1][0] == "juliarun.job.failed"
    assert events[-1][1]["reason"] == f"worker {bad.name}-0 exit code 3"
