"""The talk's process-autoscaler demo on the embedded default: a queue on the cluster
(``start_queue``), Julia workers consuming it (``JuliaRun.consume``), and a ``JobScaler`` that
follows the backlog through ``WorkQueueMetric`` → ``AverageMetric`` → ``BoundedMetric(1, 10)``.
Bursts of work make the workers rise; once the queue is empty they come back to 1. Every
message is counted by its id at the end: each must have been processed exactly once."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from juliarun import api
from juliarun.errors import JobNotFoundError, JuliaRunError
from juliarun.scaler import JobScaler
from juliarun.scaling.metrics import AverageMetric, BoundedMetric, WorkQueueMetric
from juliarun.scaling.policy import Decision, HPAPolicy, ScalingPolicy, ScalingRules
from juliarun.specs import JuliaParBatchWorkers

WORKER = """\
include(ENV["JULIARUN_JL"])
seconds = parse(Float64, get(ENV, "WORK_SECONDS", "0.5"))
n = JuliaRun.consume("work") do body
    sleep(seconds)                    # the work
    JuliaRun.publish("done", body)    # its result
end
println("worker ", ENV["JULIARUN_WORKER"], " processed ", n, " messages")
"""


def write_worker(root: Path) -> None:
    (root / "scaler").mkdir(parents=True, exist_ok=True)
    (root / "scaler" / "worker.jl").write_text(WORKER)


def run(
    out: TextIO | None = None,
    *,
    bursts: int = 3,
    per_burst: int = 60,
    per_worker: float = 5.0,
    work_seconds: float = 0.4,
    interval: float = 2.0,
    window: float = 4.0,
    scale_down_after: float = 10.0,
    timeout: float = 600.0,
    ctx: api.Context | None = None,
    cpu: str = "500m",
    memory: str = "1Gi",
) -> dict[str, int]:
    """Run the demo (on ``ctx``, default the embedded default); returns the counts it checked
    (``published``, ``processed``, ``distinct``, ``most_workers``, ``final_workers``,
    ``redelivered``: messages the broker delivered again)."""
    out = out or sys.stdout

    def say(text: str) -> None:
        print(f"\n>>> {text}", file=out, flush=True)

    def decided(decision: Decision) -> None:
        if decision.changed:
            print(f"changing scale of workers to {decision.desired}", file=out, flush=True)

    ctx = ctx or api.init()
    root = ctx.settings.home / "demo" / "juliarun"
    write_worker(root)
    api.define_storage(ctx, name="juliarun", kind="host", path=str(root))
    with contextlib.suppress(JobNotFoundError):
        api.delete(ctx, "workers", force=True)

    say("queue = start_queue(ctx)")
    queue = api.start_queue(ctx, name="mq")
    for name in ("work", "done"):
        queue.declare(name)
        queue.purge(name)
    say(
        'workers = JuliaParBatchWorkers("workers", "/mnt/juliarun/scaler/worker.jl", '
        '"juliarun"; nworkers=1, cpu="500m", memory="1Gi", restart="OnFailure")'
    )
    workers = JuliaParBatchWorkers(
        "workers",
        "/mnt/juliarun/scaler/worker.jl",
        "juliarun",
        nworkers=1,
        cpu=cpu,
        memory=memory,
        restart="OnFailure",
        env={**queue.env, "WORK_SECONDS": str(work_seconds)},
    )
    api.submit(ctx, workers)

    say(
        f"metric = BoundedMetric(AverageMetric(WorkQueueMetric(queue, 'work'), {window:g}), 1, 10)"
        f"; scaler = JobScaler(ctx, workers, metric, {interval:g})"
    )
    metric = BoundedMetric(
        AverageMetric(WorkQueueMetric(queue, "work", per_worker=per_worker), window), 1, 10
    )
    policy = HPAPolicy(
        min_workers=1,
        max_workers=10,
        scale_down=ScalingRules(
            stabilization=scale_down_after,
            policies=[ScalingPolicy(type="Percent", value=100, period=interval)],
        ),
    )
    scaler = JobScaler(ctx, workers, metric, interval, policy=policy, on_decision=decided)
    handle = scaler.start()
    deadline = time.monotonic() + timeout
    published = 0
    try:
        for burst in range(1, bursts + 1):
            say(f"publish_work()  # burst {burst}: {per_burst} messages")
            published += queue.publish("work", [f"{burst}-{i}" for i in range(per_burst)])
            while queue.stats("work").backlog or queue.depth("work"):
                if time.monotonic() > deadline:
                    raise JuliaRunError("the demo's work was not done in time")
                time.sleep(0.5)
        say("the queue is empty: watch the workers go back to 1")
        while api.status(ctx, workers).desired_workers > 1:
            if time.monotonic() > deadline:
                raise JuliaRunError("the workers did not come back to 1 in time")
            time.sleep(0.5)
    finally:
        handle.stop()
    # A message a drained worker had been sent but not started goes back to the queue as that
    # worker closes, and the remaining worker may be handling it just now (the broker's own
    # counts lag by seconds): collect results until every message has one, or a minute passes.
    results: list[str] = []
    settle = time.monotonic() + 60
    while True:
        results += [body.decode() for body in queue.take("done")]
        if len(results) >= published or time.monotonic() > settle:
            break
        time.sleep(0.5)
    redelivered = queue.stats("work").redelivered
    counts = Counter(results)
    most = max([d.desired for d in scaler.decisions] + [1])
    final = api.status(ctx, workers).desired_workers
    say("delete!(ctx, workers); delete!(ctx, queue)")
    print(api.delete(ctx, workers, force=True), file=out)
    print(api.delete(ctx, queue, force=True), file=out)
    twice = sum(1 for n in counts.values() if n > 1)
    print(
        f"\n{len(results)} results for {published} messages: {len(counts)} distinct, "
        f"{twice} processed more than once; workers rose to {most} and came back to {final}",
        file=out,
        flush=True,
    )
    return {
        "published": published,
        "processed": len(results),
        "distinct": len(counts),
        "most_workers": most,
        "final_workers": final,
        "redelivered": redelivered,
    }
