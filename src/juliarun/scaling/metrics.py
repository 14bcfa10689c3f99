"""What a process scaler reads: metrics that each yield one number with the inputs behind it.

A metric is anything with ``read() -> Reading`` (or any function returning a number or a
:class:`Reading`); metrics wrap each other like the talk's session::

    qmetric = WorkQueueMetric(queue, "work")
    metric = BoundedMetric(AverageMetric(qmetric, 30), 1, 10)   # the seed's 1:10

A metric that cannot be read, or reads something that is not a finite number, raises
:class:`~juliarun.errors.MetricError`; a scaler holds the current scale on it.

>>> now = [0.0]
>>> backlog = iter([4, 10, 40])
>>> metric = BoundedMetric(AverageMetric(lambda: next(backlog), 20, clock=lambda: now[0]), 1, 10)
>>> [metric.read().value for now[0] in (0.0, 10.0, 20.0)]  # means of 4 | 4,10 | 10,40 (20 s)
[4.0, 7.0, 10.0]
>>> print(metric)
BoundedMetric(AverageMetric(<lambda>, 20s), 1:10)
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from pydantic import Field, model_validator

from juliarun.errors import JuliaRunError, MetricError, SpecError
from juliarun.metrics.base import Aggregation, MetricQuery, MetricStore
from juliarun.specs import _Model

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Reading:
    """One value a metric read, which metric it came from, and the inputs that explain it
    (``ready``, ``unacked``, ``samples``, ``unbounded``, ...)."""

    value: float
    source: str
    inputs: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Metric(Protocol):
    """Anything a scaler can read: ``read()`` returns a :class:`Reading` or raises
    :class:`~juliarun.errors.MetricError`."""

    def read(self) -> Reading: ...


MetricLike = Metric | Callable[[], "float | Reading"]


def as_metric(metric: MetricLike) -> Metric:
    """A :class:`Metric` as given, or a function wrapped in :class:`CallableMetric`."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return CallableMetric(metric)
    raise SpecError("metric", [("metric", "must have read() or be a function returning a number")])


def finite(source: str, value: object) -> float:
    """``value`` as a float, or :class:`MetricError` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MetricError(source, f"read {value!r}, which is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise MetricError(source, f"read {number}, which is not a finite number")
    return number


def _seconds(model: str, name: str, value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise SpecError(model, [(name, "must be seconds (a number) or a timedelta")])
    if not math.isfinite(seconds) or seconds <= 0:
        raise SpecError(model, [(name, f"must be positive (got {seconds})")])
    return float(seconds)


def _fmt(value: float) -> str:
    return f"{value:g}"


class CallableMetric:
    """A function as a metric: it returns a number or a :class:`Reading`; whatever it raises
    becomes a :class:`~juliarun.errors.MetricError`.

    >>> CallableMetric(lambda: 3).read()
    Reading(value=3.0, source='<lambda>', inputs={})
    >>> CallableMetric(lambda: float("nan"), name="probe").read()
    Traceback (most recent call last):
    ...
    juliarun.errors.MetricError: metric probe: read nan, which is not a finite number (hint: ...)
    """

    def __init__(self, fn: Callable[[], float | Reading], *, name: str | None = None) -> None:
        if not callable(fn):
            raise SpecError("CallableMetric", [("fn", "must be callable")])
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__

    def read(self) -> Reading:
        try:
            result = self.fn()
        except MetricError:
            raise
        except Exception as exc:
            raise MetricError(self.name, f"failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, Reading):
            return Reading(finite(self.name, result.value), result.source, dict(result.inputs))
        return Reading(finite(self.name, result), self.name)

    def __str__(self) -> str:
        return self.name


# -- work queue -------------------------------------------------------------------------------


class QueueStatsLike(Protocol):
    """What a work queue reports about one queue (the RabbitMQ handle's ``QueueStats``)."""

    @property
    def name(self) -> str: ...
    @property
    def ready(self) -> int: ...
    @property
    def unacked(self) -> int: ...
    @property
    def consumers(self) -> int: ...
    @property
    def publish_rate(self) -> float: ...
    @property
    def deliver_rate(self) -> float: ...


class QueueSource(Protocol):
    """A work queue handle: ``stats(name)`` of one queue."""

    def stats(self, name: str) -> QueueStatsLike: ...


class _WorkQueueSpec(_Model):
    queue: str = Field(min_length=1, description="Name of the queue the workers consume.")
    per_worker: float = Field(
        1.0, gt=0, description="Messages one worker should have: the value is backlog / this."
    )
    per_worker_rate: float | None = Field(
        None,
        gt=0,
        description="Messages per second one worker handles; when set, the value is at least "
        "publish_rate / this (the workers that keep up with what arrives).",
    )


class WorkQueueMetric:
    """The backlog of a work queue (``ready + unacked``: waiting plus being worked on) divided by
    ``per_worker``, i.e. how many workers the backlog asks for. The inputs carry the counts, the
    consumers and the publish and deliver rates.

    A backlog alone undercounts under steady load: once enough workers run, the backlog is small
    and asks for fewer of them, and the count flaps. Given ``per_worker_rate`` (messages per
    second one worker handles), the value is the larger of the backlog's ask and
    ``publish_rate / per_worker_rate``, the workers that keep up with what arrives.

    >>> from types import SimpleNamespace
    >>> class Queue:
    ...     def stats(self, name):
    ...         return SimpleNamespace(name=name, ready=12, unacked=3, consumers=3,
    ...                                publish_rate=2.5, deliver_rate=1.0)
    >>> reading = WorkQueueMetric(Queue(), "work", per_worker=5).read()
    >>> reading.value, reading.inputs["backlog"], reading.inputs["publish_rate"]
    (3.0, 15.0, 2.5)
    >>> WorkQueueMetric(Queue(), "work", per_worker=5, per_worker_rate=0.5).read().value
    5.0
    """

    def __init__(
        self,
        queue: QueueSource,
        name: str = "work",
        *,
        per_worker: float = 1.0,
        per_worker_rate: float | None = None,
    ) -> None:
        spec = _WorkQueueSpec(queue=name, per_worker=per_worker, per_worker_rate=per_worker_rate)
        self.queue = queue
        self.name = spec.queue
        self.per_worker = spec.per_worker
        self.per_worker_rate = spec.per_worker_rate
        self.last: QueueStatsLike | None = None

    def read(self) -> Reading:
        source = str(self)
        try:
            stats = self.queue.stats(self.name)
            ready, unacked = stats.ready, stats.unacked
            inputs = {
                "ready": finite(source, ready),
                "unacked": finite(source, unacked),
                "consumers": finite(source, stats.consumers),
                "publish_rate": finite(source, stats.publish_rate),
                "deliver_rate": finite(source, stats.deliver_rate),
            }
        except MetricError:
            raise
        except Exception as exc:
            kind = "" if isinstance(exc, JuliaRunError) else f"{type(exc).__name__}: "
            raise MetricError(source, f"cannot read the queue: {kind}{exc}") from exc
        if inputs["ready"] < 0 or inputs["unacked"] < 0:
            raise MetricError(source, f"negative counts (ready={ready}, unacked={unacked})")
        self.last = stats
        backlog = inputs["ready"] + inputs["unacked"]
        inputs["backlog"] = backlog
        value = backlog / self.per_worker
        if self.per_worker_rate is not None:
            inputs["for_backlog"] = value
            inputs["for_rate"] = inputs["publish_rate"] / self.per_worker_rate
            value = max(value, inputs["for_rate"])
        return Reading(value, source, inputs)

    @property
    def publish_rate(self) -> float | None:
        """Messages published per second at the last read (``None`` before one)."""
        return None if self.last is None else float(self.last.publish_rate)

    @property
    def deliver_rate(self) -> float | None:
        """Messages delivered per second at the last read (``None`` before one)."""
        return None if self.last is None else float(self.last.deliver_rate)

    def __str__(self) -> str:
        per = "" if self.per_worker == 1 else f", per_worker={_fmt(self.per_worker)}"
        if self.per_worker_rate is not None:
            per += f", per_worker_rate={_fmt(self.per_worker_rate)}"
        return f"WorkQueueMetric({self.name}{per})"


# -- windows and bounds -----------------------------------------------------------------------


class AverageMetric:
    """The mean of the readings of ``metric`` taken in the last ``window`` seconds (a reading
    at exactly ``now - window`` has left the window). A failed read raises and adds nothing;
    the window keeps the readings before it.

    >>> now = [100.0]
    >>> values = iter([2, 4, 9])
    >>> avg = AverageMetric(lambda: next(values), 15, clock=lambda: now[0])
    >>> [avg.read().value for now[0] in (100.0, 110.0, 115.0)]  # 2 | 2,4 | 4,9
    [2.0, 3.0, 6.5]
    >>> avg.samples  # the reading at 100 s left the window at 115 s
    2
    """

    def __init__(
        self, metric: MetricLike, window: float | timedelta, *, clock: Clock = time.time
    ) -> None:
        self.metric = as_metric(metric)
        self.window = _seconds("AverageMetric", "window", window)
        self.clock = clock
        self._readings: deque[tuple[float, float]] = deque()

    @property
    def samples(self) -> int:
        """How many readings the window holds."""
        return len(self._readings)

    def read(self) -> Reading:
        inner = self.metric.read()
        now = self.clock()
        self._readings.append((now, inner.value))
        while self._readings and self._readings[0][0] <= now - self.window:
            self._readings.popleft()
        mean = sum(v for _, v in self._readings) / len(self._readings)
        inputs = {**inner.inputs, "latest": inner.value, "samples": float(len(self._readings))}
        return Reading(mean, str(self), inputs)

    def __str__(self) -> str:
        return f"AverageMetric({self.metric}, {_fmt(self.window)}s)"


class Bounds(_Model):
    """Inclusive bounds ``low <= value <= high``."""

    low: float = Field(description="Smallest value (inclusive).", allow_inf_nan=False)
    high: float = Field(description="Largest value (inclusive).", allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.high < self.low:
            raise ValueError(f"high: must be >= low ({_fmt(self.low)})")
        return self

    @classmethod
    def of(cls, low: float | range | str | tuple[float, float], high: float | None) -> Bounds:
        """From ``low, high``, a ``range`` (``range(1, 11)`` is 1..10, like the seed's ``1:10``),
        a Julia-style ``"1:10"`` or a ``(low, high)`` pair."""
        if isinstance(low, range | str | tuple):
            if high is not None:
                raise SpecError("Bounds", [("high", "not allowed when low is a range")])
            if isinstance(low, range):
                if len(low) == 0:
                    raise SpecError("Bounds", [("low", f"{low} is empty")])
                return cls(low=min(low), high=max(low))
            if isinstance(low, str):
                parts = low.split(":")
                try:
                    lo, hi = (float(p) for p in parts)
                except ValueError as exc:
                    raise SpecError("Bounds", [("low", f"{low!r} is not 'low:high'")]) from exc
                return cls(low=lo, high=hi)
            if len(low) != 2:
                raise SpecError("Bounds", [("low", "a pair must be (low, high)")])
            return cls(low=low[0], high=low[1])
        if high is None:
            raise SpecError("Bounds", [("high", "is required with a numeric low")])
        return cls(low=low, high=high)

    def __str__(self) -> str:
        return f"{_fmt(self.low)}:{_fmt(self.high)}"


class BoundedMetric:
    """``metric`` clamped to ``low..high`` (inclusive): ``BoundedMetric(m, 1, 10)``,
    ``BoundedMetric(m, range(1, 11))`` or ``BoundedMetric(m, "1:10")`` (the seed's ``1:10``).

    >>> BoundedMetric(lambda: 42, range(1, 11)).read().value
    10.0
    >>> BoundedMetric(lambda: 0, 1, 10).read().inputs["unbounded"]
    0.0
    >>> BoundedMetric(lambda: 0, 10, 1)
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid Bounds: high: must be >= low (10) (hint: ...)
    """

    def __init__(
        self,
        metric: MetricLike,
        low: float | range | str | tuple[float, float],
        high: float | None = None,
    ) -> None:
        self.bounds = Bounds.of(low, high)
        self.metric = as_metric(metric)

    @property
    def low(self) -> float:
        return self.bounds.low

    @property
    def high(self) -> float:
        return self.bounds.high

    def read(self) -> Reading:
        inner = self.metric.read()
        value = min(max(inner.value, self.low), self.high)
        inputs = {**inner.inputs, "unbounded": inner.value, "low": self.low, "high": self.high}
        return Reading(value, str(self), inputs)

    def __str__(self) -> str:
        return f"BoundedMetric({self.metric}, {self.bounds})"


# -- metric store -----------------------------------------------------------------------------


class _StoreQuery(_Model):
    name: str = Field(min_length=1, description="The metric (point name) to read.")
    agg: Aggregation = Field("mean", description="How the points in the period combine.")
    last: timedelta = Field(timedelta(seconds=60), description="How far back from now to read.")
    tags: dict[str, str] = Field(default_factory=dict, description="Only points with these tags.")

    @model_validator(mode="after")
    def _positive(self) -> _StoreQuery:
        if self.last <= timedelta(0):
            raise ValueError("last: must be positive")
        return self


class StoreMetric:
    """A metric juliarun's metric store holds (what jobs ``record``), aggregated with ``agg``
    over the ``last`` period (seconds or a timedelta) before now. No point in that period is
    a :class:`~juliarun.errors.MetricError` (a scaler holds), never zero.

    >>> from juliarun.metrics.sqlite import SqliteMetricStore
    >>> store = SqliteMetricStore(":memory:")
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    >>> for i, v in enumerate([10, 20, 60]):
    ...     store.record("backlog", v, {"queue": "work"}, datetime.fromtimestamp(t0 + i, UTC))
    >>> metric = StoreMetric(store, "backlog", agg="max", last=60, tags={"queue": "work"},
    ...                      clock=lambda: t0 + 10)
    >>> metric.read().value
    60.0
    >>> StoreMetric(store, "backlog", last=5, clock=lambda: t0 + 10).read()
    Traceback (most recent call last):
    ...
    juliarun.errors.MetricError: metric StoreMetric(mean(backlog) over 5s): no points ...
    >>> store.close()
    """

    def __init__(
        self,
        store: MetricStore,
        name: str,
        *,
        agg: Aggregation = "mean",
        last: float | timedelta = 60.0,
        tags: Mapping[str, str] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.spec = _StoreQuery(name=name, agg=agg, last=last, tags=dict(tags or {}))
        self.store = store
        self.clock = clock

    def read(self) -> Reading:
        now = datetime.fromtimestamp(self.clock(), UTC)
        query = MetricQuery(
            name=self.spec.name,
            tags=self.spec.tags,
            since=now - self.spec.last,
            until=now + timedelta(microseconds=1),
            agg=self.spec.agg,
        )
        try:
            rows = self.store.query(query)
        except Exception as exc:
            raise MetricError(str(self), f"the metric store failed: {exc}") from exc
        if not rows:
            raise MetricError(str(self), "no points in that period")
        value = finite(str(self), rows[0].value)
        return Reading(value, str(self), {self.spec.agg: value})

    def __str__(self) -> str:
        last = _fmt(self.spec.last.total_seconds())
        tags = "".join(f", {k}={v}" for k, v in sorted(self.spec.tags.items()))
        return f"StoreMetric({self.spec.agg}({self.spec.name}){tags} over {last}s)"


def describe(reading: Reading) -> str:
    """``value (input=..., ...)`` for a decision's reason."""
    detail = ", ".join(f"{k}={_fmt(v)}" for k, v in reading.inputs.items())
    return f"{_fmt(reading.value)}" + (f" ({detail})" if detail else "")
