"""The process autoscaler against the usual anchors, on a simulated work queue in one process.

    .venv/bin/python bench/process_scaler.py [--startup 5] [--service 2] [--target 2]

A scripted load (a square wave, then bursts) feeds a simulated queue served by simulated
workers: each worker takes ``--startup`` seconds to come up, then works one message at a time
for ``--service`` seconds (prefetch 1: ``unacked`` is the messages in work). Simulated time
advances in 1 s ticks; every scaler is a real :class:`juliarun.scaler.JobScaler` whose clock is
the simulation's and whose ``sleep`` advances it, scaling a simulated job of 1..20 workers.
Removing a worker puts its message back at the head of the queue (counted as "requeued").

Scalers compared (``--target`` messages of backlog per worker for every one of them):

- ``juliarun``: the default policy at a 10 s interval on the seed's metric shape,
  ``BoundedMetric(WorkQueueMetric(queue, per_worker=target, per_worker_rate=1/service), 1, 20)``
  (straight to the target, scale-down after a 300 s window, 100 % per 15 s); below it the same
  with the backlog alone (no ``per_worker_rate``), and with a 60 s scale-down window;
- ``plain HPA``: ``desired = ceil(backlog / target)`` with the HPA's 10 % tolerance every 15 s,
  without stabilization windows or rate limits;
- ``KEDA-like``: polled every 30 s, the HPA's default behavior (scale-up the larger of doubling
  and +4 per 15 s, 300 s scale-down window, the "cooldown");
- ``seed loop``: the talk's loop, one worker up or down per 10 s toward a 30 s average.

Columns: ``react s`` — mean seconds from messages first waiting (ready > 0) after a load rise
to the first scale-up call (over rises where messages waited; ``n`` of them); ``reversals`` —
direction flips of the worker count; ``calls`` — scale calls; ``worker-s`` — worker-seconds
used (starting workers count); ``max backlog`` — most messages ready + unacked; ``wait s`` —
mean seconds a message waited before a worker took it; ``requeued`` — messages taken back from
removed workers. The ratio rows divide each baseline by juliarun (``>1``: juliarun is lower).
"""

from __future__ import annotations

import argparse
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from juliarun.backends.base import JobStatus
from juliarun.metrics.base import MetricStore
from juliarun.scaler import JobScaler
from juliarun.scaling.metrics import AverageMetric, BoundedMetric, MetricLike, WorkQueueMetric
from juliarun.scaling.policy import (
    Decision,
    HPAPolicy,
    PolicyLike,
    ScalingPolicy,
    ScalingRules,
    reversals,
)

MAX_WORKERS = 20


@dataclass
class Stats:
    name: str
    ready: int
    unacked: int
    consumers: int
    publish_rate: float
    deliver_rate: float


@dataclass
class Worker:
    ready_at: float
    msg: float | None = None  # publish time of the message in work
    remaining: float = 0.0


@dataclass
class Sim:
    """The simulated queue, its workers and the job's backend, in simulated seconds."""

    load: Callable[[float], float]  # messages published during [t, t + 1)
    startup: float
    service: float
    t: float = 0.0
    queue: deque[float] = field(default_factory=deque)
    workers: list[Worker] = field(default_factory=list)
    published: deque[tuple[float, int]] = field(default_factory=deque)
    delivered: deque[tuple[float, int]] = field(default_factory=deque)
    scale_calls: list[tuple[float, int, int]] = field(default_factory=list)
    history: list[tuple[float, int, int]] = field(default_factory=list)  # t, ready, unacked
    worker_seconds: float = 0.0
    waits: list[float] = field(default_factory=list)
    requeued: int = 0
    owed: float = 0.0  # fractional messages the load has published so far
    cluster: str = "sim"

    # -- the queue handle (QueueSource) -------------------------------------------------------

    def stats(self, name: str) -> Stats:
        busy = sum(1 for w in self.workers if w.msg is not None)
        active = sum(1 for w in self.workers if w.ready_at <= self.t)
        pub = sum(n for t, n in self.published if t > self.t - 10) / 10
        dlv = sum(n for t, n in self.delivered if t > self.t - 10) / 10
        return Stats(name, len(self.queue), busy, active, pub, dlv)

    # -- the backend (ScalableBackend) --------------------------------------------------------

    def status(self, name: str) -> JobStatus:
        return JobStatus(name, "JuliaParBatchWorkers", "running", len(self.workers))

    def scale(self, name: str, workers: int) -> JobStatus:
        self.scale_calls.append((self.t, len(self.workers), workers))
        while len(self.workers) < workers:
            self.workers.append(Worker(ready_at=self.t + self.startup))
        while len(self.workers) > workers:
            gone = self.workers.pop()
            if gone.msg is not None:
                self.queue.appendleft(gone.msg)
                self.requeued += 1
        return self.status(name)

    # -- time ---------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        for _ in range(round(seconds)):
            self.tick()

    def tick(self) -> None:
        t = self.t
        self.owed += self.load(t)
        arrivals = math.floor(self.owed + 1e-9)
        self.owed -= arrivals
        self.queue.extend([t] * arrivals)
        self.published.append((t, arrivals))
        done = 0
        for w in self.workers:
            if w.ready_at > t:
                continue
            if w.msg is None and self.queue:
                w.msg = self.queue.popleft()
                w.remaining = self.service
                self.waits.append(t - w.msg)
            if w.msg is not None:
                w.remaining -= 1
                if w.remaining <= 0:
                    w.msg = None
                    done += 1
        self.delivered.append((t, done))
        while self.published and self.published[0][0] <= t - 10:
            self.published.popleft()
        while self.delivered and self.delivered[0][0] <= t - 10:
            self.delivered.popleft()
        self.worker_seconds += len(self.workers)
        busy = sum(1 for w in self.workers if w.msg is not None)
        self.history.append((t, len(self.queue), busy))
        self.t = t + 1


class Ctx:
    def __init__(self, sim: Sim) -> None:
        self.backend = sim
        self.metrics: MetricStore | None = None


@dataclass
class Result:
    name: str
    reaction: float | None
    rises_waited: int
    reversals: int
    calls: int
    worker_seconds: float
    max_backlog: int
    wait: float
    requeued: int


def simulate(
    name: str,
    load: Callable[[float], float],
    rises: Sequence[float],
    horizon: int,
    interval: float,
    metric: Callable[[Sim], MetricLike],
    policy: PolicyLike,
    args: argparse.Namespace,
) -> Result:
    sim = Sim(load, args.startup, args.service)
    sim.workers.append(Worker(ready_at=0.0))
    decisions: list[Decision] = []
    scaler = JobScaler(
        Ctx(sim),
        "workers",
        metric(sim),
        interval,
        policy,
        clock=lambda: sim.t,
        sleep=sim.advance,
        on_decision=decisions.append,
    )
    scaler.run(steps=math.ceil(horizon / interval))
    sim.advance(horizon - sim.t)
    reactions = []
    for i, rise in enumerate(rises):
        end = rises[i + 1] if i + 1 < len(rises) else horizon
        waited = [t for t, ready, _ in sim.history if rise <= t < end and ready > 0]
        if not waited:
            continue
        first = waited[0]
        ups = [t for t, old, new in sim.scale_calls if t >= first and new > old]
        reactions.append((ups[0] if ups else end) - first)
    return Result(
        name,
        sum(reactions) / len(reactions) if reactions else None,
        len(reactions),
        reversals(decisions),
        len(sim.scale_calls),
        sim.worker_seconds,
        max(ready + unacked for _, ready, unacked in sim.history),
        sum(sim.waits) / len(sim.waits) if sim.waits else 0.0,
        sim.requeued,
    )


def scalers(
    args: argparse.Namespace,
) -> list[tuple[str, float, Callable[[Sim], MetricLike], PolicyLike]]:
    target = args.target

    def seed_step(current: int, value: float, history: Sequence[Decision]) -> int:
        wanted = math.ceil(value - 1e-9)
        return current + (wanted > current) - (wanted < current)

    rate = 1 / args.service  # messages per second one worker handles

    def queue(q: Sim) -> BoundedMetric:
        return BoundedMetric(
            WorkQueueMetric(q, "work", per_worker=target, per_worker_rate=rate), 1, MAX_WORKERS
        )

    return [
        ("juliarun (10 s)", 10, queue, None),
        (
            "  backlog only",
            10,
            lambda q: BoundedMetric(WorkQueueMetric(q, "work", per_worker=target), 1, MAX_WORKERS),
            None,
        ),
        (
            "  60 s down window",
            10,
            queue,
            HPAPolicy(
                min_workers=1,
                max_workers=MAX_WORKERS,
                scale_down=ScalingRules(
                    stabilization=60, policies=[ScalingPolicy(type="Percent", value=100, period=15)]
                ),
            ),
        ),
        (
            "plain HPA (15 s)",
            15,
            lambda q: WorkQueueMetric(q, "work"),
            HPAPolicy(
                target=target, min_workers=1, max_workers=MAX_WORKERS, scale_down=ScalingRules()
            ),
        ),
        (
            "KEDA-like (30 s)",
            30,
            lambda q: WorkQueueMetric(q, "work"),
            HPAPolicy.kubernetes(target=target, max_workers=MAX_WORKERS),
        ),
        (
            "seed loop (10 s)",
            10,
            lambda q: BoundedMetric(
                AverageMetric(WorkQueueMetric(q, "work", per_worker=target), 30, clock=lambda: q.t),
                1,
                MAX_WORKERS,
            ),
            seed_step,
        ),
    ]


def scenarios() -> list[tuple[str, Callable[[float], float], list[float], int]]:
    def square(half: int) -> Callable[[float], float]:  # 3 msg/s, then 0.1 msg/s, each `half` s
        return lambda t: 3.0 if (t // half) % 2 == 0 else 0.1

    bursts = [60, 660, 1260]

    def burst(t: float) -> float:  # 120 messages in 10 s, three times, over 0.1 msg/s
        return 0.1 + (12.0 if any(b <= t < b + 10 for b in bursts) else 0.0)

    return [
        (
            f"square wave: 3 msg/s for {half} s, 0.1 msg/s for {half} s",
            square(half),
            [float(t) for t in range(0, 1800, 2 * half)],
            1800,
        )
        for half in (120, 150, 450)
    ] + [
        ("bursts: 120 messages in 10 s at 60, 660, 1260 s", burst, [float(b) for b in bursts], 1800)
    ]


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(base: float | None, ours: float | None) -> str:
    if base is None or ours is None:
        return "-"
    if ours == 0:
        return "inf" if base > 0 else "="
    return f"{base / ours:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--startup", type=float, default=5.0, help="seconds a worker takes to start"
    )
    parser.add_argument("--service", type=float, default=2.0, help="seconds per message")
    parser.add_argument("--target", type=float, default=2.0, help="backlog per worker")
    args = parser.parse_args()
    print(
        f"startup {args.startup:g}s, {args.service:g}s per message, target {args.target:g} "
        f"messages per worker, 1..{MAX_WORKERS} workers"
    )
    head = (
        f"{'scaler':<18} {'react s':>8} {'n':>2} {'reversals':>9} {'calls':>5} "
        f"{'worker-s':>9} {'max backlog':>11} {'wait s':>7} {'requeued':>8}"
    )
    for title, load, rises, horizon in scenarios():
        results = [
            simulate(name, load, rises, horizon, interval, metric, policy, args)
            for name, interval, metric, policy in scalers(args)
        ]
        print(f"\n{title} ({horizon} s)")
        print(head)
        for r in results:
            print(
                f"{r.name:<18} {fmt(r.reaction):>8} {r.rises_waited:>2} {r.reversals:>9} "
                f"{r.calls:>5} {r.worker_seconds:>9.0f} {r.max_backlog:>11} {fmt(r.wait, 2):>7} "
                f"{r.requeued:>8}"
            )
        ours = results[0]
        for r in results[1:]:
            print(
                f"{'  ' + r.name.strip().split(' (')[0][:11] + '/ours':<18} "
                f"{ratio(r.reaction, ours.reaction):>8} {'':>2} "
                f"{ratio(r.reversals, ours.reversals):>9} {ratio(r.calls, ours.calls):>5} "
                f"{ratio(r.worker_seconds, ours.worker_seconds):>9} "
                f"{ratio(r.max_backlog, ours.max_backlog):>11} {ratio(r.wait, ours.wait):>7} "
                f"{ratio(r.requeued, ours.requeued):>8}"
            )


if __name__ == "__main__":
    main()
