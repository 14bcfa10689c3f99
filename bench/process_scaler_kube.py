"""juliarun's scaler against the cluster's real HPA, on the real test cluster, same load.

    eval "$(scripts/testenv env)"
    .venv/bin/python bench/process_scaler_kube.py [--bursts 2] [--per-burst 30] [--gap 60]

Each scaler in turn gets a fresh namespace with a broker (``start_queue``), one real Julia
worker (``JuliaParBatchWorkers``, each message ``--work`` seconds) and the same scripted load:
``--bursts`` bursts of ``--per-burst`` messages, ``--gap`` seconds apart. Both keep
``--target`` messages per worker in 1..``--max`` workers with a ``--down`` seconds scale-down
window:

- ``juliarun``: :class:`juliarun.scaler.JobScaler` on ``WorkQueueMetric`` every ``--interval``
  seconds (the default HPA-like policy, straight to the target);
- ``real HPA``: the cluster's HorizontalPodAutoscaler (its controller's 15 s sync) on the same
  backlog served by juliarun's external-metrics API (:mod:`juliarun.backends.kubernetes.hpa`),
  the count carried to the Job by the same drained ``scale``.

Columns: ``react s`` — mean seconds from a burst's publication to the first scale-up call after
it; ``reversals`` — direction flips of the worker count; ``calls`` — scale calls; ``worker-s``
— worker-seconds (the Job's count, sampled every second, until the queue is empty and the count
back to 1); ``redelivered`` — messages RabbitMQ delivered again (``message_stats.redeliver``),
e.g. taken from a worker removed mid-message; ``dup`` — result ids seen more than once.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
import uuid
from collections import Counter
from typing import Any

from juliarun import api
from juliarun.backends.kubernetes.hpa import HPA
from juliarun.demo_autoscale import write_worker
from juliarun.scaler import JobScaler
from juliarun.scaling.metrics import WorkQueueMetric
from juliarun.scaling.policy import HPAPolicy, ScalingPolicy, ScalingRules
from juliarun.specs import JuliaParBatchWorkers


def flips(counts: list[int], start: int = 1) -> int:
    """Direction changes over a sequence of worker counts."""
    signs = []
    previous = start
    for n in counts:
        if n != previous:
            signs.append(n > previous)
            previous = n
    return sum(1 for a, b in itertools.pairwise(signs) if a != b)


def run_one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"queue-bench-{kind.replace(' ', '')}-{uuid.uuid4().hex[:6]}"
    os.environ["JULIARUN_KUBE_NAMESPACE"] = namespace
    ctx = api.init("kubernetes")
    root = ctx.settings.home / "bench" / namespace
    write_worker(root)
    api.define_storage(ctx, name="bench", kind="host", path=str(root))
    queue = api.start_queue(ctx, name="mq")
    for name in ("work", "done"):
        queue.declare(name)
    workers = JuliaParBatchWorkers(
        "workers",
        "/mnt/bench/scaler/worker.jl",
        "bench",
        nworkers=1,
        cpu="50m",
        memory="300Mi",
        restart="OnFailure",
        env={**queue.env, "WORK_SECONDS": str(args.work)},
    )
    api.submit(ctx, workers)
    while not any(w.state == "running" for w in api.status(ctx, workers).workers):
        time.sleep(1)
    calls: list[tuple[float, int]] = []
    stop: Any
    if kind == "juliarun":
        policy = HPAPolicy(
            min_workers=1,
            max_workers=args.max,
            scale_down=ScalingRules(
                stabilization=args.down,
                policies=[ScalingPolicy(type="Percent", value=100, period=args.interval)],
            ),
        )
        metric = WorkQueueMetric(queue, "work", per_worker=args.target)
        scaler = JobScaler(
            ctx,
            workers,
            metric,
            args.interval,
            policy=policy,
            on_decision=lambda d: calls.append((time.time(), d.desired)) if d.changed else None,
        )
        handle = scaler.start()
        stop = handle.stop
    else:
        hpa = HPA(
            ctx.backend,
            "workers",
            "work",
            lambda: queue.stats("work").backlog,
            per_worker=args.target,
            min_workers=1,
            max_workers=args.max,
            scale_down_window=int(args.down),
            host=os.environ["JULIARUN_KUBE_HOST_IP"],
        ).start()
        stop = hpa.stop
    counts: list[int] = []
    published: list[float] = []
    start = time.time()
    try:
        for burst in range(args.bursts):
            while time.time() < start + burst * args.gap:
                counts.append(api.status(ctx, workers).desired_workers)
                time.sleep(1)
            published.append(time.time())
            queue.publish("work", [f"{burst}-{i}" for i in range(args.per_burst)])
        deadline = time.time() + 900
        while True:
            n = api.status(ctx, workers).desired_workers
            counts.append(n)
            if n == 1 and not queue.stats("work").backlog and not queue.depth("work"):
                break
            if time.time() > deadline:
                raise SystemExit(f"{kind}: not back to 1 after 900 s")
            time.sleep(1)
    finally:
        stop()
    if kind != "juliarun":
        assert hpa.sync is not None
        calls = list(zip(hpa.sync.times, hpa.sync.changes, strict=True))
    stats = queue._api("/api/queues/%2F/work") or {}
    redelivered = int((stats.get("message_stats") or {}).get("redeliver") or 0)
    results = Counter(body.decode() for body in queue.take("done"))
    reacts = []
    for at in published:
        ups = [t for t, n in calls if t >= at]
        if ups:
            reacts.append(ups[0] - at)
    api.delete(ctx, workers, force=True)
    api.delete(ctx, queue, force=True)
    ctx.backend.client.delete(f"/api/v1/namespaces/{namespace}")  # type: ignore[attr-defined]
    ctx.close()
    return {
        "react": sum(reacts) / len(reacts) if reacts else float("nan"),
        "reversals": flips([n for _, n in calls]),
        "calls": len(calls),
        "worker_s": sum(counts),
        "most": max(counts),
        "redelivered": redelivered,
        "results": sum(results.values()),
        "dup": sum(1 for c in results.values() if c > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--per-burst", type=int, default=30)
    parser.add_argument("--gap", type=float, default=60.0)
    parser.add_argument("--work", type=float, default=1.0)
    parser.add_argument("--target", type=float, default=5.0)
    parser.add_argument("--max", type=int, default=6)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--down", type=float, default=30.0)
    args = parser.parse_args()
    rows = {kind: run_one(kind, args) for kind in ("juliarun", "real HPA")}
    total = args.bursts * args.per_burst
    print(
        f"{args.bursts} bursts of {args.per_burst} messages {args.gap:g} s apart, "
        f"{args.work:g} s each; target {args.target:g}/worker, 1..{args.max}, "
        f"scale-down window {args.down:g} s"
    )
    print(
        f"{'scaler':<10} {'react s':>8} {'reversals':>9} {'calls':>5} {'worker-s':>8} "
        f"{'most':>4} {'redelivered':>11} {'results':>7} {'dup':>3}"
    )
    for kind, r in rows.items():
        print(
            f"{kind:<10} {r['react']:8.1f} {r['reversals']:9d} {r['calls']:5d} "
            f"{r['worker_s']:8d} {r['most']:4d} {r['redelivered']:11d} "
            f"{r['results']:4d}/{total} {r['dup']:3d}"
        )
    ours, base = rows["juliarun"], rows["real HPA"]
    print(
        f"real HPA / juliarun: react {base['react'] / ours['react']:.2f}x, "
        f"worker-s {base['worker_s'] / ours['worker_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
