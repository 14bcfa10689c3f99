"""JobScaler against the real Kubernetes HPA controller, on the same load in the same run.

    eval "$(scripts/testenv env)"
    .venv/bin/python bench/process_scaler_kubernetes.py [--horizon 300] [--half 60]

Two ``JuliaParBatchWorkers`` jobs run on a kwok node of the test cluster (kwok keeps their
workers running), each with its own simulated queue fed by the same scripted square wave
(3 msg/s for ``--half`` seconds, then 0.1 msg/s) and served by simulated workers (``--startup``
seconds to come up, ``--service`` seconds a message, prefetch 1). Every second each simulation
reads its job's worker count *from the cluster* and follows it, so what is measured is what
each scaler did to the real Job:

- ``juliarun``: ``JobScaler`` at a 10 s interval on the seed's metric shape,
  ``BoundedMetric(WorkQueueMetric(queue, per_worker=target, per_worker_rate=1/service), 1, 20)``;
- ``real HPA``: ``PodAutoscaler`` — the test cluster's HorizontalPodAutoscaler controller
  (15 s sync, 10 % tolerance, its default scale-up policy and 300 s scale-down window) on the
  backlog served as an external metric, ``target`` messages per worker.

Columns as in ``bench/process_scaler.py``: ``react s`` (from messages first waiting after a load
rise to the job's worker count rising, mean over rises where messages waited), ``reversals``
(direction flips of the worker count), ``changes``, ``worker-s``, ``max backlog``, ``wait s``
(mean seconds a message waited), ``requeued`` (messages taken back from removed workers).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from process_scaler import MAX_WORKERS, Sim, Worker, fmt, ratio

import juliarun
from juliarun.providers.kwok import KwokProvider
from juliarun.scaling.metrics import BoundedMetric, WorkQueueMetric
from juliarun.specs import JuliaParBatchWorkers, NodePool


class Follower:
    """A simulation whose worker count follows a job's on the cluster, one tick a second."""

    def __init__(self, sim: Sim, ctx: juliarun.Context, job: str) -> None:
        self.sim = sim
        self.ctx = ctx
        self.job = job
        self.lock = threading.Lock()
        self.counts: list[int] = []

    def stats(self, name: str) -> object:
        with self.lock:
            return self.sim.stats(name)

    def tick(self) -> None:
        workers = self.ctx.backend.status(self.job).desired_workers
        with self.lock:
            if workers != len(self.sim.workers):
                self.sim.scale(self.job, workers)
            if not self.counts or self.counts[-1] != workers:
                self.counts.append(workers)
            self.sim.tick()


def summarize(name: str, f: Follower, rises: list[float], horizon: int) -> list[str]:
    sim = f.sim
    reactions = []
    for i, rise in enumerate(rises):
        end = rises[i + 1] if i + 1 < len(rises) else horizon
        waited = [t for t, ready, _ in sim.history if rise <= t < end and ready > 0]
        if not waited:
            continue
        ups = [t for t, old, new in sim.scale_calls if t >= waited[0] and new > old]
        reactions.append((ups[0] if ups else end) - waited[0])
    steps = [b - a for a, b in zip(f.counts, f.counts[1:], strict=False)]
    flips = sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))
    return [
        name,
        fmt(sum(reactions) / len(reactions) if reactions else None),
        str(len(reactions)),
        str(flips),
        str(len(sim.scale_calls)),
        f"{sim.worker_seconds:.0f}",
        str(max(ready + unacked for _, ready, unacked in sim.history)),
        fmt(sum(sim.waits) / len(sim.waits) if sim.waits else 0.0, 2),
        str(sim.requeued),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--horizon", type=int, default=300, help="seconds of load")
    parser.add_argument("--half", type=int, default=60, help="seconds high, then seconds low")
    parser.add_argument("--startup", type=float, default=5.0)
    parser.add_argument("--service", type=float, default=2.0)
    parser.add_argument("--target", type=float, default=2.0, help="backlog per worker")
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:6]
    os.environ.setdefault("JULIARUN_KUBE_NAMESPACE", f"bench-scaler-{tag}")
    ctx = juliarun.init("kubernetes")
    backend = ctx.backend
    pool = NodePool(
        name=f"bench-scaler-{tag}", node_type="highcpu", cpu="64", memory="256Gi", min=0, max=1
    )
    provider = KwokProvider(backend.client)  # type: ignore[attr-defined]
    provider.create_nodes(pool, [f"bench-scaler-{tag}-0"])

    def load(t: float) -> float:
        return 3.0 if (t // args.half) % 2 == 0 else 0.1

    rises = [float(t) for t in range(0, args.horizon, 2 * args.half)]
    followers: dict[str, Follower] = {}
    for key in ("ours", "hpa"):
        job = JuliaParBatchWorkers(
            f"bench-{key}",
            "/mnt/x/w.jl",
            nworkers=1,
            cpu="10m",
            node_type="highcpu",
            env={"KWOK_RUN_FOR": "3600s"},
        )
        juliarun.submit(ctx, job)
        sim = Sim(load, args.startup, args.service)
        sim.workers.append(Worker(ready_at=0.0))
        followers[key] = Follower(sim, ctx, job.name)
    rate = 1 / args.service
    metric = BoundedMetric(
        WorkQueueMetric(followers["ours"], "work", per_worker=args.target, per_worker_rate=rate),
        1,
        MAX_WORKERS,
    )
    ours = juliarun.JobScaler(ctx, "bench-ours", metric, 10).start()
    hpa = juliarun.PodAutoscaler(
        ctx,
        "bench-hpa",
        WorkQueueMetric(followers["hpa"], "work"),
        target=args.target,
        min_workers=1,
        max_workers=MAX_WORKERS,
    ).start()
    print(
        f"square wave on the test cluster: 3 msg/s for {args.half} s, 0.1 msg/s for {args.half} s,"
        f" {args.horizon} s; startup {args.startup:g}s, {args.service:g}s per message, target "
        f"{args.target:g} messages per worker, 1..{MAX_WORKERS} workers",
        flush=True,
    )
    try:
        start = time.monotonic()
        for second in range(args.horizon):
            for f in followers.values():
                f.tick()
            time.sleep(max(0.0, start + second + 1 - time.monotonic()))
    finally:
        ours.stop()
        hpa.stop()
        for key in followers:
            juliarun.delete(ctx, f"bench-{key}", force=True)
        provider.delete_nodes(pool, provider.nodes(pool))
        ctx.close()
    rows = [
        [
            "scaler",
            "react s",
            "n",
            "reversals",
            "changes",
            "worker-s",
            "max backlog",
            "wait s",
            "requeued",
        ],
        summarize("juliarun (10 s)", followers["ours"], rises, args.horizon),
        summarize("real HPA (15 s)", followers["hpa"], rises, args.horizon),
    ]
    widths = [18, 8, 2, 9, 7, 9, 11, 7, 8]
    for row in rows:
        print(
            " ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    o, h = rows[1], rows[2]
    cells = [ratio(_num(h[i]), _num(o[i])) for i in range(1, 9)]
    cells[1] = ""
    print(
        " ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(["  HPA/ours", *cells], widths, strict=True))
        )
    )


def _num(cell: str) -> float | None:
    return None if cell == "-" else float(cell)


if __name__ == "__main__":
    main()
