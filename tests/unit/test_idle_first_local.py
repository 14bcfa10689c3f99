"""Which workers a scale-down removes on the local backend, with real Julia worker processes and
no broker: a worker reads as busy while its ``JULIARUN_BUSY_FILE`` exists (``JuliaRun.consume``
holds it while a message is in hand; here the script creates it itself when told to). Idle
workers go first, busy ones only when there are not enough idle ones, the highest index first
among equals; indexes that went come back under their old ids, without an earlier attempt's
busy file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from juliarun import api
from juliarun.backends.base import JobStatus
from juliarun.backends.supervised.jobdir import JobDir
from juliarun.logs import LogQuery
from juliarun.specs import JuliaParBatchWorkers
from tests.unit.local_jobs import eventually

SCRIPT = """\
dir = ENV["JULIARUN_STORAGE_CODE"]
isfile(joinpath(dir, "busy-" * ENV["JULIARUN_WORKER_INDEX"])) && touch(ENV["JULIARUN_BUSY_FILE"])
println("up"); flush(stdout)
sleep(600)
"""


@pytest.fixture
def ctx(local_home: Path, julia: str, tmp_path: Path) -> Iterator[api.Context]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "w.jl").write_text(SCRIPT)
    with api.init("local") as context:
        api.define_storage(context, name="code", kind="host", path=str(code))
        yield context


def settled(ctx: api.Context, running: list[int], runs: list[int]) -> JobStatus:
    """The job's status once exactly the workers of indexes ``running`` run and worker ``i``
    has printed its first line ``runs[i]`` times in all (a busy one has created its busy file
    by then)."""

    def check() -> JobStatus | None:
        status = ctx.backend.status("pool")
        up = [w.id for w in status.workers if w.state == "running" and w.pid]
        lines = ctx.logs.query(LogQuery(job="pool"))
        said = [sum(x.worker == f"pool-{i}" and x.message == "up" for x in lines) for i in range(3)]
        return status if up == [f"pool-{i}" for i in running] and said == runs else None

    result: JobStatus = eventually(check, timeout=60, interval=0.1, what=f"workers {running}")
    return result


def test_idle_workers_go_first_then_the_highest_busy_and_indexes_come_back(
    ctx: api.Context, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    for index in (1, 2):
        (code / f"busy-{index}").touch()
    api.submit(ctx, JuliaParBatchWorkers("pool", "/mnt/code/w.jl", "code", nworkers=3))
    jobdir = JobDir(ctx.settings.home / "clusters" / ctx.cluster / "jobs" / "pool")
    first = settled(ctx, [0, 1, 2], [1, 1, 1])
    pids = {w.id: w.pid for w in first.workers}
    assert [jobdir.busy_file(f"pool-{i}").exists() for i in range(3)] == [False, True, True]

    api.scale(ctx, "pool", 2)  # worker 0 is the idle one
    two = settled(ctx, [1, 2], [1, 1, 1])
    assert [(w.id, w.state, w.reason) for w in two.workers] == [
        ("pool-0", "removed", "scaled down"),
        ("pool-1", "running", None),
        ("pool-2", "running", None),
    ]
    assert {w.id: w.pid for w in two.workers if w.pid} == {k: pids[k] for k in ("pool-1", "pool-2")}
    assert str(two) == "running"

    api.scale(ctx, "pool", 1)  # no idle one left: the highest busy one goes
    one = settled(ctx, [1], [1, 1, 1])
    assert [(w.id, w.state) for w in one.workers] == [
        ("pool-0", "removed"),
        ("pool-1", "running"),
        ("pool-2", "removed"),
    ]
    assert jobdir.busy_file("pool-2").exists()  # left by the worker that went busy

    (code / "busy-2").unlink()
    api.scale(ctx, "pool", 3)  # the lowest free indexes: 0 and 2, under their old ids
    three = settled(ctx, [0, 1, 2], [2, 1, 2])  # one line per run
    assert three.workers[1].pid == pids["pool-1"]
    assert {three.workers[0].pid, three.workers[2].pid}.isdisjoint(pids.values())
    assert [w.restarts for w in three.workers] == [0, 0, 0]
    # the earlier attempt's busy file was removed before index 2 started again
    assert [jobdir.busy_file(f"pool-{i}").exists() for i in range(3)] == [False, True, False]

    api.scale(ctx, "pool", 2)  # idle 0 and 2: the higher one goes
    again = settled(ctx, [0, 1], [2, 1, 2])
    assert [w.state for w in again.workers] == ["running", "running", "removed"]
    assert os.path.lexists(jobdir.busy_file("pool-1"))
    api.delete(ctx, "pool", force=True)
