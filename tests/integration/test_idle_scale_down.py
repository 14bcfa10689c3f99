"""Scale-down removes idle workers first, on the local and the Docker backend, with a real
broker (``start_queue``) and real Julia workers (``JuliaRun.consume``).

Three workers; worker 0 waits before it subscribes, so the two messages go to workers 1 and 2,
whose handler holds each message while a ``hold-<id>`` file exists. Once worker 0 consumes too,
a ``JobScaler`` step asks for 2 workers: worker 0, the idle one, is removed (not worker 2, the
highest index, as before); workers 1 and 2 run on with their messages and finish them; each
message is started once and has one result (counted by id, no redelivery). Scaling up again
restarts index 0 under its old id; scaling down with every worker idle removes the highest
indexes, as before.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from juliarun import api
from juliarun.backends.base import JobStatus
from juliarun.backends.supervised.jobdir import JobDir
from juliarun.logs import LogQuery
from juliarun.queues import Queue
from juliarun.scaler import JobScaler
from juliarun.scaling.metrics import BoundedMetric
from juliarun.scaling.policy import HPAPolicy, ScalingRules
from juliarun.specs import JuliaParBatchWorkers

WORKER = r"""
include(ENV["JULIARUN_JL"])
dir = ENV["JULIARUN_STORAGE_CODE"]
me = ENV["JULIARUN_WORKER"]
while isfile(joinpath(dir, "wait-" * ENV["JULIARUN_WORKER_INDEX"])); sleep(0.1); end
println("consuming"); flush(stdout)
n = JuliaRun.consume("work") do id
    k = 1
    while isfile(joinpath(dir, "started-$id-$k")); k += 1; end
    write(joinpath(dir, "started-$id-$k"), me)
    while isfile(joinpath(dir, "hold-$id")); sleep(0.1); end
    JuliaRun.publish("done", "$id $me")
end
println("handled $n")
"""


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def states(status: JobStatus) -> dict[str, tuple[str, str | None]]:
    return {w.id: (w.state, w.reason) for w in status.workers}


def consumers(queue: Queue, n: int) -> bool:
    """The management API samples every few seconds: ``n`` consumers, none of them holding
    more than the two held messages."""
    stats = queue.stats("work")
    return bool(stats.consumers == n and stats.unacked == 2 and stats.ready == 0)


def idle_first(ctx: api.Context, code: Path, job_name: str) -> None:
    code.mkdir(parents=True, exist_ok=True)
    (code / "worker.jl").write_text(WORKER)
    api.define_storage(ctx, name="code", kind="host", path=str(code))
    queue = api.start_queue(ctx, name="idlemq")
    try:
        for name in ("work", "done"):
            queue.declare(name)
            queue.purge(name)
        (code / "wait-0").touch()
        for id in ("a", "b"):
            (code / f"hold-{id}").touch()
        job = JuliaParBatchWorkers(
            job_name,
            "/mnt/code/worker.jl",
            "code",
            nworkers=3,
            cpu="1",
            memory="300Mi",
            env=queue.env,
        )
        api.submit(ctx, job)
        ids = [f"{job_name}-{i}" for i in range(3)]
        busy_file = JobDir(
            ctx.settings.home / "clusters" / ctx.cluster / "jobs" / job_name
        ).busy_file
        queue.publish("work", ["a", "b"])
        wait_for(
            lambda: (code / "started-a-1").exists() and (code / "started-b-1").exists(),
            "workers 1 and 2 to take a and b",
        )
        holders = {(code / f"started-{id}-1").read_text() for id in ("a", "b")}
        assert holders == {ids[1], ids[2]}
        # JuliaRun.consume holds each worker's busy file while a message is in hand.
        assert [busy_file(w).exists() for w in ids] == [False, True, True]
        (code / "wait-0").unlink()
        wait_for(lambda: consumers(queue, 3), "worker 0 to consume", timeout=60)
        before = api.status(ctx, job_name)
        pids = {w.id: w.pid for w in before.workers}

        # no scale-down window: the scaler acts on its first reading
        prompt = HPAPolicy(min_workers=1, max_workers=3, scale_down=ScalingRules())
        scaler = JobScaler(ctx, job_name, BoundedMetric(lambda: 2, 1, 3), 1.0, policy=prompt)
        assert scaler.step().desired == 2
        after = removed(ctx, job_name, 1)
        assert states(after) == {
            ids[0]: ("removed", "scaled down"),
            ids[1]: ("running", None),
            ids[2]: ("running", None),
        }
        assert {w.id: w.pid for w in after.workers if w.state == "running"} == {
            w: pids[w] for w in ids[1:]
        }
        assert str(after) == "running" and after.desired_workers == 2
        assert [busy_file(w).exists() for w in ids[1:]] == [True, True]

        for id in ("a", "b"):
            (code / f"hold-{id}").unlink()
        wait_for(lambda: queue.depth("done") == 2, "the two results")
        results = Counter(body.decode() for body in queue.take("done"))
        assert {r.split()[0]: r.split()[1] for r in results} == {
            "a": (code / "started-a-1").read_text(),
            "b": (code / "started-b-1").read_text(),
        }
        assert sum(results.values()) == 2
        assert sorted(p.name for p in code.glob("started-*")) == ["started-a-1", "started-b-1"]
        assert queue.depth("work") == 0
        # the result is published inside the handler: the ack and the file's removal follow
        wait_for(lambda: not any(busy_file(w).exists() for w in ids), "idle workers", 30)

        # Index 0 comes back under its old id; with every worker idle the highest go first.
        api.scale(ctx, job_name, 3)
        up = running(ctx, job_name)
        assert [(w.id, w.state) for w in up.workers] == [(w, "running") for w in ids]
        assert up.workers[0].pid != pids[ids[0]]
        said = wait_for(lambda: messages(ctx, job_name, ids[0], 3), "index 0's lines", 60)
        assert said == ["consuming", "handled 0", "consuming"]  # one worker id, both runs
        api.scale(ctx, job_name, 1)
        down = removed(ctx, job_name, 2)
        assert states(down) == {
            ids[0]: ("running", None),
            ids[1]: ("removed", "scaled down"),
            ids[2]: ("removed", "scaled down"),
        }
        assert down.workers[0].pid == up.workers[0].pid
    finally:
        if job_exists(ctx, job_name):
            api.delete(ctx, job_name, force=True)
        api.delete(ctx, queue, force=True)


def removed(ctx: api.Context, name: str, n: int) -> JobStatus:
    """The job's status once its supervisor has removed ``n`` workers."""

    def check() -> JobStatus | None:
        status: JobStatus = api.status(ctx, name)
        return status if sum(w.state == "removed" for w in status.workers) >= n else None

    result: JobStatus = wait_for(check, f"{n} workers removed", timeout=60)
    return result


def messages(ctx: api.Context, job: str, worker: str, n: int) -> list[str] | None:
    """The lines ``worker`` printed, once there are ``n``."""
    said = [line.message for line in ctx.logs.query(LogQuery(job=job, worker=worker))]
    return said if len(said) >= n else None


def running(ctx: api.Context, name: str) -> JobStatus:
    """The job's status once every worker it wants runs."""

    def check() -> JobStatus | None:
        status: JobStatus = api.status(ctx, name)
        return status if str(status) == "running" else None

    result: JobStatus = wait_for(check, "every worker running", timeout=60)
    return result


def job_exists(ctx: api.Context, name: str) -> bool:
    return any(j.name == name for j in ctx.backend.jobs())


@pytest.mark.julia
@pytest.mark.rabbitmq
def test_local_scale_down_removes_the_idle_worker_first(
    juliarun_home: Path, julia: str, amqp_url: str, tmp_path: Path
) -> None:
    with api.init("local") as ctx:
        idle_first(ctx, tmp_path / "code", "idlefirst")


@pytest.mark.docker
def test_docker_scale_down_removes_the_idle_worker_first(
    docker_client: Any, julia_image: str, juliarun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JULIARUN_JULIA_IMAGE", julia_image)
    with api.init("docker") as ctx:
        idle_first(ctx, juliarun_home / "code", "idlefirst")
