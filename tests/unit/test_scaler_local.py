"""JobScaler driving real local ``JuliaParBatchWorkers`` jobs: Julia worker processes scaled up
and down from a metric, a scaler killed with SIGKILL and replaced, and a metric that fails."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from juliarun import api
from juliarun.backends.base import JobStatus
from juliarun.errors import JuliaRunError, MetricError, SpecError
from juliarun.logs import LogQuery
from juliarun.metrics import MetricQuery
from juliarun.scaler import VALUE_METRIC, WORKERS_METRIC, JobScaler
from juliarun.scaling.metrics import BoundedMetric, CallableMetric, StoreMetric
from juliarun.scaling.policy import HPAPolicy, ScalingRules
from juliarun.specs import Batch, JuliaParBatchWorkers
from tests.unit.local_jobs import alive, eventually, processes_of

SCRIPT = 'println("up ", ENV["JULIARUN_WORKER"]); flush(stdout); sleep(600)\n'
# No scale-down window: the tests scale down as soon as the metric drops.
PROMPT = HPAPolicy(min_workers=1, max_workers=5, scale_down=ScalingRules())


@pytest.fixture
def ctx(local_home: Path, julia: str, tmp_path: Path) -> Iterator[api.Context]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "idle.jl").write_text(SCRIPT)
    with api.init("local") as context:
        api.define_storage(context, name="code", kind="host", path=str(code))
        yield context


def submit_pool(ctx: api.Context, name: str = "pool", nworkers: int = 1) -> JuliaParBatchWorkers:
    job = JuliaParBatchWorkers(name, "/mnt/code/idle.jl", "code", nworkers=nworkers)
    api.submit(ctx, job)
    return job


def workers_up(ctx: api.Context, name: str, n: int) -> JobStatus:
    """Wait until the job wants ``n`` workers, exactly ``n`` run, every one of them has printed
    its first line (so a later SIGTERM does not race Julia's startup), and no other Julia
    process of the job is alive; returns that status."""

    def check() -> JobStatus | None:
        status = ctx.backend.status(name)
        running = [w for w in status.workers if w.state == "running"]
        if status.desired_workers != n or len(running) != n:
            return None
        said = {line.worker for line in ctx.logs.query(LogQuery(job=name))}
        if not {w.id for w in running} <= said:
            return None
        return status if len(julia_workers(ctx, name)) == n else None

    return eventually(check, timeout=60, what=f"{name}: {n} workers up")


def julia_workers(ctx: api.Context, name: str) -> list[int]:
    """PIDs of the live Julia processes running the job's script."""
    home = ctx.settings.home
    return sorted(
        p.pid
        for p in processes_of(home)
        if "idle.jl" in " ".join(p.cmdline()) and name in p.environ().get("JULIARUN_WORKER", "")
    )


def running_pids(status: JobStatus) -> dict[str, int | None]:
    return {w.id: w.pid for w in status.workers if w.state == "running"}


def test_only_worker_pools_can_be_scaled_and_inputs_are_checked(local_home: Path) -> None:
    with api.init("local") as ctx:
        with pytest.raises(SpecError) as err:
            JobScaler(ctx, Batch("once", command=["true"]), lambda: 1.0, 10)
        assert err.value.errors == [
            ("workers", "only JuliaParBatchWorkers jobs can be scaled (got Batch)")
        ]
        with pytest.raises(SpecError) as err:
            JobScaler(ctx, "pool", lambda: 1.0, 0)
        assert err.value.errors[0][0] == "interval"
        with pytest.raises(SpecError) as err:
            JobScaler(ctx, "pool", BoundedMetric(lambda: 1.0, 0.5, 0.9), 10)
        assert err.value.errors == [
            ("metric", "bounds 0.5:0.9 must hold whole worker counts in 0..1000")
        ]
        assert ctx.backend.jobs() == []


@pytest.mark.julia
def test_scales_real_workers_up_and_down(
    ctx: api.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="juliarun")
    job = submit_pool(ctx)
    first = running_pids(workers_up(ctx, "pool", 1))
    backlog = {"value": 0.0}
    scaler = JobScaler(
        ctx, job, CallableMetric(lambda: backlog["value"], name="backlog"), 0.1, PROMPT
    )
    handle = scaler.start()
    backlog["value"] = 4.2  # wants ceil(4.2) = 5
    up = workers_up(ctx, "pool", 5)
    assert [w.id for w in up.workers] == [f"pool-{i}" for i in range(5)]
    assert running_pids(up)["pool-0"] == first["pool-0"]  # the first worker kept running
    backlog["value"] = 0.0  # the policy's floor: 1
    down = workers_up(ctx, "pool", 1)
    assert running_pids(down) == first
    assert [(w.state, w.reason) for w in down.workers[1:]] == [("removed", "scaled down")] * 4
    assert handle.stop(timeout=10) and handle.error is None

    changes = [(d.current, d.desired) for d in handle.decisions if d.changed]
    assert changes == [(1, 5), (5, 1)]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("changing")]
    assert said == ["changing scale of pool to 5", "changing scale of pool to 1"]
    tags = {"job": "pool", "cluster": "local"}
    ctx.metrics.flush()
    stats = {
        agg: ctx.metrics.query(MetricQuery(name=WORKERS_METRIC, tags=tags, agg=agg))[0].value
        for agg in ("max", "min", "count")
    }
    assert stats == {"max": 5.0, "min": 1.0, "count": float(len(handle.decisions) - 1)}
    values = ctx.metrics.query(MetricQuery(name=VALUE_METRIC, tags=tags, agg="max"))
    assert values[0].value == 4.2
    api.delete(ctx, job, force=True)


SCALER_PROCESS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from juliarun import api
    from juliarun.scaler import JobScaler
    from juliarun.scaling.metrics import BoundedMetric

    source = Path(sys.argv[1])
    with api.init("local") as ctx:
        metric = BoundedMetric(lambda: float(source.read_text()), 1, 5)
        JobScaler(ctx, "pool", metric, 0.1).run()
    """
)


@pytest.mark.julia
def test_a_killed_scaler_is_replaced_without_duplicate_workers_and_bounds_hold(
    ctx: api.Context, tmp_path: Path
) -> None:
    submit_pool(ctx)
    workers_up(ctx, "pool", 1)
    source = tmp_path / "backlog"
    source.write_text("3.5")
    scaler_a = subprocess.Popen(
        [sys.executable, "-c", SCALER_PROCESS, str(source)], env=dict(os.environ)
    )
    try:
        before = running_pids(workers_up(ctx, "pool", 4))
    finally:
        scaler_a.send_signal(signal.SIGKILL)
        assert scaler_a.wait(timeout=30) == -signal.SIGKILL

    # A new scaler, same metric: it resumes at the cluster's 4 workers and adds none.
    scaler_b = JobScaler(ctx, "pool", BoundedMetric(lambda: float(source.read_text()), 1, 5), 1)
    decision = scaler_b.step()
    assert (decision.current, decision.desired, decision.changed) == (4, 4, False)
    assert running_pids(workers_up(ctx, "pool", 4)) == before

    # The metric jumps past the bound: one more worker, the four keep running.
    source.write_text("40")
    decision = scaler_b.step()
    assert (decision.current, decision.desired) == (4, 5)
    after = running_pids(workers_up(ctx, "pool", 5))
    assert {k: after[k] for k in before} == before and sorted(after) == sorted([*before, "pool-4"])
    assert scaler_b.step().changed is False

    # Scaled past the bound by hand while no scaler ran: a new scaler brings it back at once.
    api.scale(ctx, "pool", 7)
    workers_up(ctx, "pool", 7)
    scaler_c = JobScaler(ctx, "pool", BoundedMetric(lambda: float(source.read_text()), 1, 5), 1)
    decision = scaler_c.step()
    assert (decision.current, decision.desired) == (7, 5)
    assert decision.reason.endswith("held at max_workers 5")
    assert running_pids(workers_up(ctx, "pool", 5)) == after
    assert all(alive(pid) for pid in julia_workers(ctx, "pool"))
    api.delete(ctx, "pool", force=True)


@pytest.mark.julia
def test_a_failing_metric_holds_the_scale_and_the_loop_ends_with_the_job(
    ctx: api.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="juliarun")
    submit_pool(ctx)
    workers_up(ctx, "pool", 1)
    api.record(ctx, "queue.backlog", 3, queue="work")
    metric = BoundedMetric(
        StoreMetric(ctx.metrics, "queue.backlog", agg="last", last=1.5, tags={"queue": "work"}),
        1,
        10,
    )
    scaler = JobScaler(ctx, "pool", metric, 5, PROMPT)
    assert scaler.step().desired == 3
    pids = running_pids(workers_up(ctx, "pool", 3))

    time.sleep(1.6)  # the point leaves the metric's period: no data, not "zero"
    held = scaler.step()
    assert (held.current, held.desired, held.value) == (3, 3, None)
    assert held.reason == (
        "holding at 3: metric StoreMetric(last(queue.backlog), queue=work over 1.5s): "
        "no points in that period"
    )

    def broken() -> float:
        raise ConnectionResetError("queue connection reset")

    scaler.metric = CallableMetric(broken)
    assert [scaler.step().reason for _ in range(2)] == [
        "holding at 3: metric broken: failed: ConnectionResetError: queue connection reset"
    ] * 2
    warned = [r.getMessage() for r in caplog.records if "holding" in r.getMessage()]
    assert warned == [  # once per new reason, not once per round
        f"scaler for pool: {held.reason}",
        "scaler for pool: holding at 3: metric broken: failed: ConnectionResetError: "
        "queue connection reset",
    ]
    with pytest.raises(MetricError):
        scaler.metric.read()
    assert running_pids(workers_up(ctx, "pool", 3)) == pids
    ctx.metrics.flush()
    values = ctx.metrics.query(MetricQuery(name=VALUE_METRIC, tags={"job": "pool"}, agg="count"))
    assert values[0].value == 1.0  # only the one good reading has a value

    # The loop keeps its cadence on an injected clock, then ends when the job is deleted.
    now = [1000.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    paced = JobScaler(ctx, "pool", lambda: 3.0, 5, PROMPT, clock=lambda: now[0], sleep=sleep)
    assert [d.desired for d in paced.run(steps=3)] == [3, 3, 3]
    assert sleeps == [5.0, 5.0]
    background = JobScaler(ctx, "pool", lambda: 3.0, 0.05, PROMPT)
    handle = background.start()
    with pytest.raises(JuliaRunError, match="the scaler for pool is already running"):
        background.start()
    eventually(lambda: len(handle.decisions) >= 3, what="three rounds")
    api.delete(ctx, "pool", force=True)
    assert handle.join(timeout=10) and handle.error is None
