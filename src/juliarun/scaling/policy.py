"""How many workers a job should have, given how many it has, what the metric reads and the
decisions made before: a :class:`Decision` that says why.

Two readings of a metric, both supported by the one default policy, :class:`HPAPolicy`:

- **direct** (the seed's style, and the default when no ``target`` is given): the metric *is*
  the worker count wanted. ``BoundedMetric(AverageMetric(WorkQueueMetric(q), 30), 1, 10)``
  reads "the averaged backlog, between 1 and 10" and the policy asks for ``ceil(value)``.
- **target** (the Kubernetes HPA's formula): ``target`` is what one worker should carry. With
  ``target_type="AverageValue"`` the value is a total (a backlog) and
  ``desired = ceil(value / target)``; with ``target_type="Value"`` the value is per worker (a
  utilisation) and ``desired = ceil(current * value / target)``. Either way a ratio within
  ``tolerance`` of 1 keeps the current count.

The recommendation then goes through the HPA's ``behavior``: separate scale-up and scale-down
stabilization windows (scale down only to the highest recommendation of the down window, up
only to the lowest of the up window), rate limits per period (``Pods`` or ``Percent``, the most
or least permissive one selected), and ``min_workers..max_workers``. Unlike a loop that adds one
worker per interval, it goes straight to the target: by default scale-up is immediate and
unlimited, and scale-down waits out a 300 s window, then may remove every surplus worker per
15 s, as the HPA does.

>>> policy = HPAPolicy()  # direct
>>> d = policy.decide(1, Reading(4.2, "backlog"), [], now=0.0)
>>> d.desired, d.reason
(5, 'backlog reads 4.2: wants 5')
>>> hpa = HPAPolicy(target=10, min_workers=1, max_workers=8)
>>> d = hpa.decide(2, Reading(95.0, "backlog"), [], now=0.0)
>>> d.desired, d.recommendation, d.reason
(8, 10, 'backlog reads 95 for target 10 per worker (ratio 4.75): wants 10; held at max_workers 8')
>>> hpa.decide(8, Reading(84.0, "backlog"), [], now=15.0).reason  # 84 / (8 * 10) = 1.05
'backlog reads 84 for target 10 per worker (ratio 1.05): within tolerance 0.1, keeps 8'

Scale-down stabilization: the backlog drops, but for 300 s the highest recent recommendation
holds the count; after that it goes down in one step.

>>> history = [hpa.decide(2, Reading(95.0, "backlog"), [], now=0.0)]
>>> d = hpa.decide(8, Reading(10.0, "backlog"), history, now=60.0)
>>> print(d.desired, d.reason)
8 backlog reads 10 for target 10 per worker (ratio 0.125): wants 1; scale-down stabilization
keeps 8 (highest in 300s: 10)
>>> hpa.decide(8, Reading(10.0, "backlog"), history, now=300.0).desired
1

Any function ``policy(current, value, history) -> int`` is a policy too:

>>> double = as_policy(lambda current, value, history: 2 * current)
>>> double.decide(3, Reading(0.0, "m"), [], now=0.0).desired
6
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from pydantic import Field, ValidationError, model_validator

from juliarun.errors import SpecError
from juliarun.scaling.metrics import Reading
from juliarun.specs import _Model, spec_error

MAX_WORKERS = 1000  # what a JuliaParBatchWorkers job allows


@dataclass(frozen=True, slots=True)
class Decision:
    """One scaler step: the count the job had (``current``) and should have (``desired``), the
    metric's ``value`` and ``inputs`` (``None`` / empty when it could not be read), the policy's
    raw ``recommendation`` before stabilization, rate limits and bounds, why (``reason``), and
    when (``at``, the scaler's clock)."""

    at: float
    current: int
    desired: int
    value: float | None
    reason: str
    inputs: Mapping[str, float] = field(default_factory=dict)
    recommendation: int | None = None
    source: str = ""
    job: str = ""

    @property
    def changed(self) -> bool:
        """Whether the step changes the worker count."""
        return self.desired != self.current

    @classmethod
    def hold(
        cls, current: int, why: str, *, at: float, job: str = "", source: str = ""
    ) -> Decision:
        """Keep ``current`` workers because of ``why`` (a metric that failed, a bad policy)."""
        return cls(
            at, current, current, None, f"holding at {current}: {why}", {}, None, source, job
        )

    def __str__(self) -> str:
        what = f"{self.current} -> {self.desired}" if self.changed else f"stays {self.current}"
        return f"{self.job or 'job'}: {what}: {self.reason}"


@runtime_checkable
class Policy(Protocol):
    """Decides the worker count from the current count, a reading and the history (oldest
    first) of earlier decisions, at time ``now``."""

    def decide(
        self, current: int, reading: Reading, history: Sequence[Decision], now: float
    ) -> Decision: ...


PolicyFunction = Callable[[int, float, Sequence[Decision]], int]
PolicyLike = Policy | PolicyFunction | Literal["direct"] | None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class ScalingPolicy(_Model):
    """A rate limit (the HPA's ``HPAScalingPolicy``): at most ``value`` workers (``Pods``) or
    ``value`` percent of the count at the period's start (``Percent``) per ``period`` seconds."""

    type: Literal["Pods", "Percent"] = Field(description="Pods (a count) or Percent.")
    value: int = Field(gt=0, description="Workers, or percent, the period allows.")
    period: float = Field(15.0, gt=0, le=1800, description="The period in seconds.")

    def __str__(self) -> str:
        unit = "%" if self.type == "Percent" else " workers"
        return f"{self.value}{unit} per {_fmt(self.period)}s"


class ScalingRules(_Model):
    """One direction's behavior (the HPA's ``HPAScalingRules``): the stabilization window and
    the rate limits (none: no limit), of which ``select`` picks the one allowing the most
    change (``Max``), the least (``Min``), or forbids this direction (``Disabled``)."""

    stabilization: float = Field(
        0.0, ge=0, le=3600, description="Seconds of recommendations to stabilize over."
    )
    policies: list[ScalingPolicy] = Field(
        default_factory=list, description="Rate limits; empty: change at once."
    )
    select: Literal["Max", "Min", "Disabled"] = Field(
        "Max", description="Which rate limit applies: Max (most change), Min, or Disabled."
    )


def _default_down() -> ScalingRules:
    return ScalingRules(
        stabilization=300, policies=[ScalingPolicy(type="Percent", value=100, period=15)]
    )


class HPAPolicy(_Model):
    """The default policy: the Kubernetes HPA's algorithm on any metric (see the module notes).

    Defaults: direct reading (no ``target``), tolerance 0.1, scale-up immediate and unlimited,
    scale-down stabilized over 300 s and limited to 100 % per 15 s (the HPA's), 0..1000 workers.
    :meth:`kubernetes` gives the HPA's exact defaults (scale-up limited to doubling or +4
    workers per 15 s, at least one worker)."""

    target: float | None = Field(
        None, gt=0, description="What one worker should carry; None: the value is the count."
    )
    target_type: Literal["AverageValue", "Value"] = Field(
        "AverageValue",
        description="AverageValue: the value is a total (desired = value / target); "
        "Value: the value is per worker (desired = current * value / target).",
    )
    tolerance: float = Field(
        0.1, ge=0, lt=1, description="A ratio to target within this of 1 keeps the count."
    )
    min_workers: int = Field(0, ge=0, le=MAX_WORKERS, description="Fewest workers.")
    max_workers: int = Field(MAX_WORKERS, ge=0, le=MAX_WORKERS, description="Most workers.")
    scale_up: ScalingRules = Field(
        default_factory=ScalingRules, description="Behavior when adding workers."
    )
    scale_down: ScalingRules = Field(
        default_factory=_default_down, description="Behavior when removing workers."
    )

    @model_validator(mode="after")
    def _ordered(self) -> HPAPolicy:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers: must be >= min_workers ({self.min_workers})")
        return self

    @classmethod
    def kubernetes(cls, target: float, **fields: object) -> HPAPolicy:
        """The HPA's defaults for ``target``: tolerance 0.1, at least one worker, scale-up to
        the larger of doubling and +4 per 15 s, scale-down stabilized 300 s, 100 % per 15 s."""
        up = ScalingRules(
            policies=[
                ScalingPolicy(type="Percent", value=100, period=15),
                ScalingPolicy(type="Pods", value=4, period=15),
            ]
        )
        base: dict[str, object] = {"target": target, "min_workers": 1, "scale_up": up}
        try:
            return cls.model_validate({**base, **fields})
        except ValidationError as exc:
            raise spec_error(cls.__name__, exc) from exc

    # -- the algorithm ------------------------------------------------------------------------

    def recommend(self, current: int, value: float) -> tuple[int, str]:
        """The raw recommendation for ``value`` at ``current`` workers, and why."""
        if self.target is None:
            wanted = max(math.ceil(value - 1e-9), 0)
            return wanted, f": wants {wanted}"
        per = "per worker"
        if self.target_type == "AverageValue":
            if current == 0:
                wanted = math.ceil(value / self.target - 1e-9)
                wanted = max(wanted, 0)
                return wanted, f" for target {_fmt(self.target)} {per}: wants {wanted}"
            ratio = value / (self.target * current)
            wanted = math.ceil(value / self.target - 1e-9)
        else:
            ratio = value / self.target
            wanted = math.ceil(max(current, 1) * ratio - 1e-9)
        head = f" for target {_fmt(self.target)} {per} (ratio {_fmt(ratio)})"
        if abs(ratio - 1.0) <= self.tolerance:
            return current, f"{head}: within tolerance {_fmt(self.tolerance)}, keeps {current}"
        return max(wanted, 0), f"{head}: wants {max(wanted, 0)}"

    def _bounded(self, n: int) -> int:
        return min(max(n, self.min_workers), self.max_workers)

    def decide(
        self, current: int, reading: Reading, history: Sequence[Decision], now: float
    ) -> Decision:
        rec, why = self.recommend(current, reading.value)
        notes: list[str] = []

        # Stabilization: up to the lowest recommendation of the up window, down to the
        # highest of the down window (both include this one).
        up_rec = down_rec = rec
        up_cut = now - self.scale_up.stabilization
        down_cut = now - self.scale_down.stabilization
        for d in history:
            if d.recommendation is None:
                continue
            if d.at > up_cut:
                up_rec = min(up_rec, d.recommendation)
            if d.at > down_cut:
                down_rec = max(down_rec, d.recommendation)
        stable = current
        stable = max(stable, up_rec)
        stable = min(stable, down_rec)
        if stable < rec and stable >= current:
            window = _fmt(self.scale_up.stabilization)
            notes.append(f"scale-up stabilization keeps {stable} (lowest in {window}s: {up_rec})")
        elif stable > rec:
            window = _fmt(self.scale_down.stabilization)
            highest = f"highest in {window}s: {down_rec}"
            if self._bounded(stable) != stable:
                highest += f", bounded to {self._bounded(stable)}"
            notes.append(f"scale-down stabilization keeps {self._bounded(stable)} ({highest})")

        # Rate limits and bounds, as the HPA applies them.
        low, high = self.min_workers, self.max_workers
        limit_note = ""
        if stable > current:
            limit, limit_note = self._up_limit(current, history, now)
            limit = max(limit, current)
            high = min(high, limit)
        elif stable < current:
            limit, limit_note = self._down_limit(current, history, now)
            limit = min(limit, current)
            low = max(low, limit)
        desired = stable
        if desired < low:
            desired = low
            if low == self.min_workers:
                notes.append(f"held at min_workers {low}")
            else:
                notes.append(f"rate limit {limit_note} allows down to {low}")
        elif desired > high:
            desired = high
            if high == self.max_workers:
                notes.append(f"held at max_workers {high}")
            else:
                notes.append(f"rate limit {limit_note} allows up to {high}")
        reason = f"{reading.source} reads {_fmt(reading.value)}{why}"
        if notes:
            reason += "; " + "; ".join(dict.fromkeys(notes))
        return Decision(
            now, current, desired, reading.value, reason, dict(reading.inputs), rec, reading.source
        )

    def _up_limit(self, current: int, history: Sequence[Decision], now: float) -> tuple[int, str]:
        rules = self.scale_up
        if rules.select == "Disabled":
            return current, "(scale-up disabled)"
        if not rules.policies:
            return MAX_WORKERS, ""
        found: list[tuple[int, str]] = []
        for p in rules.policies:
            added = sum(
                d.desired - d.current
                for d in history
                if d.desired > d.current and d.at > now - p.period
            )
            start = current - added
            if p.type == "Pods":
                proposed = start + p.value
            else:
                proposed = math.ceil(max(start, 1) * (1 + p.value / 100))
            found.append((proposed, str(p)))
        return (max if rules.select == "Max" else min)(found, key=lambda x: x[0])

    def _down_limit(self, current: int, history: Sequence[Decision], now: float) -> tuple[int, str]:
        rules = self.scale_down
        if rules.select == "Disabled":
            return current, "(scale-down disabled)"
        if not rules.policies:
            return 0, ""
        found: list[tuple[int, str]] = []
        for p in rules.policies:
            removed = sum(
                d.current - d.desired
                for d in history
                if d.desired < d.current and d.at > now - p.period
            )
            start = current + removed
            proposed = start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
            found.append((proposed, str(p)))
        # "Max" selects the policy allowing the most change: the lowest count.
        return (min if rules.select == "Max" else max)(found, key=lambda x: x[0])


class CallablePolicy:
    """A function ``policy(current, value, history) -> int`` as a policy. Anything but a
    whole number in ``0..1000`` (or an exception) holds the current count and says why."""

    def __init__(self, fn: PolicyFunction, *, name: str | None = None) -> None:
        if not callable(fn):
            raise SpecError("policy", [("policy", "must be callable")])
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__

    def decide(
        self, current: int, reading: Reading, history: Sequence[Decision], now: float
    ) -> Decision:
        try:
            result: object = self.fn(current, reading.value, history)
        except Exception as exc:
            why = f"policy {self.name} failed: {type(exc).__name__}: {exc}"
            return Decision.hold(current, why, at=now, source=reading.source)
        if isinstance(result, float) and result.is_integer():
            result = int(result)
        if isinstance(result, bool) or not isinstance(result, int):
            why = f"policy {self.name} returned {result!r}, not a worker count"
            return Decision.hold(current, why, at=now, source=reading.source)
        if not 0 <= result <= MAX_WORKERS:
            why = f"policy {self.name} returned {result}, outside 0..{MAX_WORKERS}"
            return Decision.hold(current, why, at=now, source=reading.source)
        reason = f"{reading.source} reads {_fmt(reading.value)}: policy {self.name} wants {result}"
        return Decision(
            now,
            current,
            result,
            reading.value,
            reason,
            dict(reading.inputs),
            result,
            reading.source,
        )


def reversals(decisions: Sequence[Decision]) -> int:
    """How often the direction of change flips (up then down, or down then up) over the
    decisions that changed the count: a measure of flapping.

    >>> ups_and_downs = [Decision(t, c, d, 0.0, "") for t, (c, d) in enumerate(
    ...     [(1, 4), (4, 4), (4, 6), (6, 2), (2, 5)])]
    >>> reversals(ups_and_downs)
    2
    """
    signs = [1 if d.desired > d.current else -1 for d in decisions if d.changed]
    return sum(1 for a, b in itertools.pairwise(signs) if a != b)


def as_policy(policy: PolicyLike) -> Policy:
    """``None`` or ``"direct"``: the default :class:`HPAPolicy` (the metric is the count); a
    :class:`Policy` as given; a function wrapped in :class:`CallablePolicy`."""
    if policy is None or policy == "direct":
        return HPAPolicy()
    if isinstance(policy, str):
        raise SpecError("JobScaler", [("policy", f"unknown policy {policy!r} (known: direct)")])
    if isinstance(policy, Policy):
        return policy
    if callable(policy):
        return CallablePolicy(policy)
    raise SpecError("JobScaler", [("policy", "must be a Policy, a function or 'direct'")])
