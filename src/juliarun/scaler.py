"""The process autoscaler: scale a ``JuliaParBatchWorkers`` job's workers from a metric, as in the
talk's session::

    qmetric = WorkQueueMetric(queue, "work")
    metric = BoundedMetric(AverageMetric(qmetric, WINDOW_SIZE), 1, 10)
    scaler = JobScaler(ctx, workers, metric, CHECK_INTERVAL)
    handle = scaler.start()        # the seed's `@async run(scaler)`
    ...                            # INFO juliarun: changing scale of workers to 2
    handle.stop()

Each step reads the job's worker count from the cluster (so a restarted scaler resumes from
what the cluster has and never adds workers twice), reads the metric, lets the policy decide
(:mod:`juliarun.scaling.policy`) and calls ``backend.scale`` when the count changes. A metric
that fails holds the current scale; the :class:`~juliarun.scaling.policy.Decision` says why.
Every decision is recorded in the context's metric store as ``juliarun.scaler.workers`` and
``juliarun.scaler.value`` (tags ``job`` and ``cluster``).

>>> from juliarun.backends.base import JobStatus
>>> from juliarun.scaling.metrics import BoundedMetric
>>> class Cluster:  # a stand-in backend: one job with a worker count
...     cluster = "demo"
...     def __init__(self): self.n = 1
...     def status(self, name): return JobStatus(name, "JuliaParBatchWorkers", "running", self.n)
...     def scale(self, name, n): self.n = n; return self.status(name)
>>> class Ctx:
...     backend = Cluster()
...     metrics = None
>>> backlog = iter([0, 3, 12, 12])
>>> scaler = JobScaler(Ctx(), "workers", BoundedMetric(lambda: next(backlog), 1, 10), 10,
...                    clock=lambda: 0.0)
>>> [scaler.step().desired for _ in range(4)]
[1, 3, 10, 10]
>>> for decision in scaler.decisions[:4]:
...     print(decision)
workers: stays 1: resumed at 1 workers
workers: stays 1: BoundedMetric(<lambda>, 1:10) reads 1: wants 1
workers: 1 -> 3: BoundedMetric(<lambda>, 1:10) reads 3: wants 3
workers: 3 -> 10: BoundedMetric(<lambda>, 1:10) reads 10: wants 10
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from juliarun.backends.base import JobStatus
from juliarun.errors import ConfigError, JobNotFoundError, JuliaRunError, MetricError, SpecError
from juliarun.metrics.base import MetricStore
from juliarun.scaling.metrics import BoundedMetric, MetricLike, as_metric
from juliarun.scaling.policy import MAX_WORKERS, Decision, HPAPolicy, PolicyLike, as_policy
from juliarun.specs import JobSpec, JuliaParBatchWorkers

log = logging.getLogger("juliarun")

WORKERS_METRIC = "juliarun.scaler.workers"
VALUE_METRIC = "juliarun.scaler.value"


class ScalableBackend(Protocol):
    """What a scaler needs of a backend (every :class:`~juliarun.backends.base.Backend`)."""

    @property
    def cluster(self) -> str: ...

    def status(self, name: str) -> JobStatus: ...

    def scale(self, name: str, workers: int) -> JobStatus: ...


class ScalerContext(Protocol):
    """What a scaler needs of a context (a :class:`juliarun.api.Context`): the backend, and
    the metric store decisions are recorded in (``None``: not recorded)."""

    @property
    def backend(self) -> ScalableBackend: ...

    @property
    def metrics(self) -> MetricStore | None: ...


class JobScaler:
    """Scale job ``workers`` (a ``JuliaParBatchWorkers`` spec or its name) every ``interval``
    seconds from ``metric`` by ``policy`` (``None`` / ``"direct"``: the metric is the worker
    count wanted; an :class:`~juliarun.scaling.policy.HPAPolicy` with a ``target``; or any
    ``policy(current, value, history) -> int``).

    ``step()`` runs one round and returns its decision; ``run()`` blocks until ``stop()`` or the
    job ends; ``start()`` runs it in a background thread and returns a :class:`ScalerHandle`.
    ``on_decision`` is called with every decision; ``clock`` and ``sleep`` are injectable.

    With the direct policy and a :class:`~juliarun.scaling.metrics.BoundedMetric` outermost (the
    seed's ``BoundedMetric(..., 1:10)``), the bounds are also the policy's ``min_workers`` and
    ``max_workers``: a count outside them (set by hand, or by another scaler) comes back at once.
    With ``resume`` (the default) the count the job has when the scaler starts counts as a
    recommendation made then, so a (re)started scaler scales down only after the policy's
    scale-down window, as if it had been running all along."""

    def __init__(
        self,
        ctx: ScalerContext,
        workers: JobSpec | str,
        metric: MetricLike,
        interval: float | timedelta = 10.0,
        policy: PolicyLike = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
        on_decision: Callable[[Decision], object] | None = None,
        keep: int = 10_000,
        resume: bool = True,
    ) -> None:
        if isinstance(workers, JobSpec) and not isinstance(workers, JuliaParBatchWorkers):
            rule = f"only JuliaParBatchWorkers jobs can be scaled (got {type(workers).__name__})"
            raise SpecError("JobScaler", [("workers", rule)])
        if not isinstance(workers, str | JobSpec) or not workers:
            raise SpecError("JobScaler", [("workers", "must be a job spec or a job name")])
        seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise SpecError("JobScaler", [("interval", f"must be positive seconds ({interval!r})")])
        if keep < 1:
            raise SpecError("JobScaler", [("keep", "must be at least 1")])
        self.ctx = ctx
        self.name = workers if isinstance(workers, str) else workers.name
        self.metric = as_metric(metric)
        self.policy = as_policy(policy)
        if (policy is None or policy == "direct") and isinstance(self.metric, BoundedMetric):
            low, high = math.ceil(self.metric.low), math.floor(self.metric.high)
            if not 0 <= low <= high <= MAX_WORKERS:
                rule = (
                    f"bounds {self.metric.bounds} must hold whole worker counts in 0..{MAX_WORKERS}"
                )
                raise SpecError("JobScaler", [("metric", rule)])
            self.policy = HPAPolicy(min_workers=low, max_workers=high)
        self.resume = resume
        self.interval = float(seconds)
        self.clock = clock
        self._stop = threading.Event()
        self.sleep: Callable[[float], object] = sleep or self._stop.wait
        self.on_decision = on_decision
        self._lock = threading.Lock()
        self._history: deque[Decision] = deque(maxlen=keep)
        self.ended: JobStatus | None = None
        self._handle: ScalerHandle | None = None

    # -- one round ----------------------------------------------------------------------------

    @property
    def decisions(self) -> list[Decision]:
        """The decisions so far, oldest first (the last ``keep``)."""
        with self._lock:
            return list(self._history)

    def step(self) -> Decision:
        """Read the job's worker count and the metric, decide, and scale when the count changes.
        Raises :class:`~juliarun.errors.JobNotFoundError` when the job is gone and what the
        backend raises when its status cannot be read."""
        now = self.clock()
        status = self.ctx.backend.status(self.name)
        current = status.desired_workers
        history: Sequence[Decision] = self.decisions
        if not history and self.resume and not status.done:
            resumed = Decision(
                now,
                current,
                current,
                None,
                f"resumed at {current} workers",
                {},
                current,
                "",
                self.name,
            )
            with self._lock:
                self._history.append(resumed)
            history = [resumed]
        if status.done:
            self.ended = status
            decision = Decision.hold(current, f"the job has {status.phase}", at=now)
        else:
            try:
                reading = self.metric.read()
            except Exception as exc:
                problem = exc.problem if isinstance(exc, MetricError) else f"{exc}"
                where = exc.source if isinstance(exc, MetricError) else str(self.metric)
                decision = Decision.hold(current, f"metric {where}: {problem}", at=now)
            else:
                decision = self.policy.decide(current, reading, history, now)
        decision = replace(decision, job=self.name, at=now)
        if decision.changed:
            decision = self._scale(decision)
        elif decision.value is None and (not history or history[-1].reason != decision.reason):
            log.warning("scaler for %s: %s", self.name, decision.reason)
        self._record(decision)
        with self._lock:
            self._history.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision

    def _scale(self, decision: Decision) -> Decision:
        log.info("changing scale of %s to %d", self.name, decision.desired)
        try:
            self.ctx.backend.scale(self.name, decision.desired)
        except JuliaRunError as exc:
            log.warning("scaler for %s: scaling to %d failed: %s", self.name, decision.desired, exc)
            return replace(
                decision,
                desired=decision.current,
                reason=f"{decision.reason}; scaling to {decision.desired} failed: {exc}",
            )
        return decision

    def _record(self, decision: Decision) -> None:
        store = self.ctx.metrics
        if store is None:
            return
        tags = {"job": self.name, "cluster": self.ctx.backend.cluster}
        at = datetime.fromtimestamp(decision.at, UTC)
        try:
            store.record(WORKERS_METRIC, float(decision.desired), tags, at)
            if decision.value is not None:
                store.record(VALUE_METRIC, decision.value, tags, at)
        except Exception as exc:  # a scaler keeps scaling when its bookkeeping fails
            log.warning("scaler for %s: cannot record the decision: %s", self.name, exc)

    # -- the loop -----------------------------------------------------------------------------

    def run(self, *, steps: int | None = None) -> list[Decision]:
        """Step every ``interval`` seconds until :meth:`stop`, the job ends or is deleted, or
        ``steps`` rounds ran; returns the decisions of this run. A status that cannot be read
        is logged and retried at the next round."""
        made: list[Decision] = []
        next_at = self.clock()
        rounds = 0
        while not self._stop.is_set() and (steps is None or rounds < steps):
            rounds += 1
            try:
                made.append(self.step())
            except JobNotFoundError:
                log.info("scaler for %s: the job is gone; stopping", self.name)
                break
            except JuliaRunError as exc:
                log.warning("scaler for %s: cannot read the job: %s", self.name, exc)
            if self.ended is not None:
                log.info("scaler for %s: the job has %s; stopping", self.name, self.ended.phase)
                break
            if steps is not None and rounds >= steps:
                break
            next_at += self.interval
            delay = next_at - self.clock()
            if delay < 0:  # a slow round: start the next one now, then keep the cadence
                next_at = self.clock()
                delay = 0.0
            if delay > 0 and not self._stop.is_set():
                self.sleep(delay)
        return made

    def stop(self) -> None:
        """Ask :meth:`run` to return (at once, from its sleep, unless ``sleep`` was injected)."""
        self._stop.set()

    def start(self) -> ScalerHandle:
        """Run in a background thread; the handle stops it. One loop per scaler at a time."""
        if self._handle is not None and self._handle.running:
            raise JuliaRunError(
                f"the scaler for {self.name} is already running",
                hint="stop its handle first (handle.stop()), or step() it by hand",
            )
        self._stop.clear()
        self._handle = ScalerHandle(self)
        self._handle.thread.start()
        return self._handle


class ScalerHandle:
    """A scaler running in a background thread: ``stop()``, ``decisions``, ``error``."""

    def __init__(self, scaler: JobScaler) -> None:
        self.scaler = scaler
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._main, name=f"juliarun-scaler-{scaler.name}", daemon=True
        )

    def _main(self) -> None:
        try:
            self.scaler.run()
        except BaseException as exc:  # surfaced through .error
            log.exception("scaler for %s stopped on an error", self.scaler.name)
            self.error = exc

    @property
    def decisions(self) -> list[Decision]:
        return self.scaler.decisions

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the loop to end; ``True`` when it has."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop the loop and wait for it; ``True`` when it has ended."""
        self.scaler.stop()
        return self.join(timeout)


class PodAutoscaler:
    """The talk's other way: *"or use the Kubernetes pod autoscaler, pointing it to your
    metrics"*. The cluster's own HorizontalPodAutoscaler scales job ``workers`` from
    ``metric``, which juliarun serves to it as an external metric; the HPA wants
    ``ceil(value / target)`` workers between ``min_workers`` and ``max_workers``, scales down
    after ``scale_down_window`` seconds of lower recommendations (the HPA's own 300 s by
    default), and juliarun applies each change with the backend's ``scale``, so workers leave
    as they do under :class:`JobScaler` (drained, nothing redelivered). Kubernetes only (the
    backend must be a :class:`~juliarun.backends.base.PodAutoscalerHost`).

    ``start()`` attaches it and returns ``self``; ``stop()`` removes the HPA and its objects
    (the job keeps its current workers); ``changes`` lists the (from, to) worker counts applied.
    """

    def __init__(
        self,
        ctx: ScalerContext,
        workers: JobSpec | str,
        metric: MetricLike,
        *,
        target: float = 1.0,
        min_workers: int = 1,
        max_workers: int = 10,
        scale_down_window: int = 300,
        interval: float = 1.0,
    ) -> None:
        errors: list[tuple[str, str]] = []
        if isinstance(workers, JobSpec) and not isinstance(workers, JuliaParBatchWorkers):
            rule = f"only JuliaParBatchWorkers jobs can be scaled (got {type(workers).__name__})"
            errors.append(("workers", rule))
        if isinstance(target, bool) or not isinstance(target, int | float) or not target > 0:
            errors.append(("target", f"must be a positive number ({target!r})"))
        if not 1 <= min_workers <= max_workers <= MAX_WORKERS:
            rule = f"need 1 <= min_workers <= max_workers <= {MAX_WORKERS}"
            errors.append(("min_workers", f"{rule} (got {min_workers}, {max_workers})"))
        if not 0 <= scale_down_window <= 3600:
            errors.append(("scale_down_window", "must be 0..3600 seconds"))
        if not interval > 0:
            errors.append(("interval", "must be positive seconds"))
        if errors:
            raise SpecError("PodAutoscaler", errors)
        self.ctx = ctx
        self.name = workers if isinstance(workers, str) else workers.name
        self.metric = as_metric(metric)
        self.target = float(target)
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.scale_down_window = scale_down_window
        self.interval = interval
        self.changes: list[tuple[int, int]] = []
        self._attachment: Any = None

    def _read(self) -> float:
        return self.metric.read().value

    def _changed(self, before: int, after: int) -> None:
        self.changes.append((before, after))
        log.info("changing scale of %s to %d", self.name, after)

    def start(self) -> PodAutoscaler:
        from juliarun.backends.base import PodAutoscalerHost

        backend = self.ctx.backend
        if not isinstance(backend, PodAutoscalerHost):
            raise ConfigError(
                f"the {getattr(backend, 'kind', 'current')} backend has no pod autoscaler",
                hint="use JobScaler, which scales workers on every backend",
            )
        if self._attachment is None:
            self._attachment = backend.pod_autoscaler(
                self.name,
                self._read,
                target=self.target,
                minimum=self.min_workers,
                maximum=self.max_workers,
                scale_down_window=self.scale_down_window,
                interval=self.interval,
                on_change=self._changed,
            )
        return self

    def hpa(self) -> dict[str, Any]:
        """The HorizontalPodAutoscaler as the cluster has it (``status`` says what it saw)."""
        if self._attachment is None:
            raise JuliaRunError("the pod autoscaler is not started", hint="call start() first")
        return dict(self._attachment.hpa())

    def stop(self) -> None:
        if self._attachment is not None:
            self._attachment.stop()
            self._attachment = None
