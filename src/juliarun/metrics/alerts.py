"""Alert rules on metrics, evaluated against any metric store at an injected "now".

Two kinds of rule:

- ``threshold``: the metric aggregated (``agg``) over the last ``window``, per ``group_by``
  group, is above (``op=">"``) or below (``op="<"``) ``value``;
- ``absence``: no point of the metric (with the rule's tags) in the last ``window``; with
  ``group_by``, each group seen in the ``lookback`` before that window and silent in it fires.

>>> from datetime import UTC, datetime, timedelta
>>> from juliarun.metrics.sqlite import SqliteMetricStore
>>> now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
>>> store = SqliteMetricStore(":memory:")
>>> for i, load in enumerate([0.5, 0.9, 0.97]):
...     store.record("load", load, {"worker": "w1"}, now - timedelta(minutes=3 - i))
>>> rules = [
...     ThresholdRule(name="busy", metric="load", op=">", value=0.9, agg="max",
...                   window=timedelta(minutes=5), group_by=("worker",)),
...     AbsenceRule(name="silent", metric="heartbeat", window=timedelta(minutes=1)),
... ]
>>> for alert in evaluate(rules, store, clock=lambda: now):
...     print(alert.message)
busy: max(load) over 0:05:00 is 0.97 > 0.9 (worker=w1)
silent: no heartbeat point in the last 0:01:00
>>> store.close()
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Protocol

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from juliarun.errors import ConfigError, SpecError
from juliarun.metrics.base import Aggregation, MetricQuery, MetricStore
from juliarun.specs import _Model, spec_error

__all__ = [
    "AbsenceRule",
    "Alert",
    "AlertHook",
    "AlertRule",
    "ThresholdRule",
    "evaluate",
    "get_hook",
    "parse_rules",
    "register_hook",
    "run_hooks",
]

_OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, "<": operator.lt}


class _Rule(_Model):
    name: str = Field(min_length=1, description="The rule's name: the alert's identity.")
    metric: str = Field(min_length=1, description="The metric (point name) the rule watches.")
    tags: dict[str, str] = Field(
        default_factory=dict, description="Only points with every one of these tags count."
    )
    window: timedelta = Field(description="How far back from now the rule looks.")
    group_by: tuple[str, ...] = Field(
        default=(), description="Tags that split the metric into groups, each alerting alone."
    )

    @field_validator("window")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value


class ThresholdRule(_Rule):
    """Fires for each group whose aggregate over the window crosses the threshold."""

    kind: Literal["threshold"] = Field(default="threshold", description="The rule's kind.")
    op: Literal[">", "<"] = Field(description="Fire when the aggregate is above (>) or below (<).")
    value: float = Field(description="The threshold.")
    agg: Aggregation = Field(default="mean", description="How points in the window aggregate.")


class AbsenceRule(_Rule):
    """Fires when the metric has no point in the window (per group: for groups seen in the
    ``lookback`` before the window)."""

    kind: Literal["absence"] = Field(default="absence", description="The rule's kind.")
    lookback: timedelta = Field(
        default=timedelta(hours=1),
        description="With group_by: how far before the window to look for the groups expected.",
    )


AlertRule = Annotated[ThresholdRule | AbsenceRule, Field(discriminator="kind")]
_RULE: TypeAdapter[ThresholdRule | AbsenceRule] = TypeAdapter(AlertRule)


def parse_rules(data: Iterable[Mapping[str, object]]) -> list[ThresholdRule | AbsenceRule]:
    """Rules from mappings with a ``kind`` key (as read from YAML or JSON).

    >>> parse_rules([{"kind": "absence", "name": "hb", "metric": "heartbeat", "window": 60}])[0]
    AbsenceRule(name='hb', metric='heartbeat', tags={}, window=datetime.timedelta(seconds=60), \
group_by=(), kind='absence', lookback=datetime.timedelta(seconds=3600))
    """
    rules: list[ThresholdRule | AbsenceRule] = []
    errors: list[tuple[str, str]] = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            errors.append((str(i), "must be a mapping of fields"))
            continue
        try:
            rules.append(_RULE.validate_python(dict(item)))
        except ValidationError as exc:
            errors += [(f"{i}.{f}", rule) for f, rule in spec_error("rule", exc).errors]
        except SpecError as exc:  # raised by the rule model itself
            errors += [(f"{i}.{f}", rule) for f, rule in exc.errors]
    if errors:
        raise SpecError("alert rules", errors)
    return rules


@dataclass(frozen=True, slots=True)
class Alert:
    """A firing rule: for ``group``, at ``at``; ``value`` is the aggregate (``None`` for
    absence), ``message`` says it in one line."""

    rule: str
    kind: Literal["threshold", "absence"]
    metric: str
    at: datetime
    message: str
    group: Mapping[str, str] = field(default_factory=dict)
    value: float | None = None
    threshold: float | None = None


def _where(group: Mapping[str, str]) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in group.items())})" if group else ""


def _threshold(rule: ThresholdRule, store: MetricStore, now: datetime) -> list[Alert]:
    rows = store.query(
        MetricQuery(
            rule.metric,
            tags=rule.tags,
            since=now - rule.window,
            until=now,
            agg=rule.agg,
            group_by=rule.group_by,
        )
    )
    crossed = _OPS[rule.op]
    return [
        Alert(
            rule=rule.name,
            kind="threshold",
            metric=rule.metric,
            at=now,
            group=dict(row.group),
            value=row.value,
            threshold=rule.value,
            message=f"{rule.name}: {rule.agg}({rule.metric}) over {rule.window} is {row.value:g}"
            f" {rule.op} {rule.value:g}{_where(row.group)}",
        )
        for row in rows
        if crossed(row.value, rule.value)
    ]


def _absence(rule: AbsenceRule, store: MetricStore, now: datetime) -> list[Alert]:
    since = now - rule.window

    def groups(start: datetime, end: datetime) -> set[tuple[str, ...]]:
        q = MetricQuery(
            rule.metric, tags=rule.tags, since=start, until=end, agg="count", group_by=rule.group_by
        )
        return {tuple(row.group[k] for k in rule.group_by) for row in store.query(q)}

    present = groups(since, now)
    missing: list[tuple[str, ...]]
    if not rule.group_by:
        missing = [()] if not present else []
    else:
        missing = sorted(groups(since - rule.lookback, since) - present)
    alerts = []
    for values in missing:
        group = dict(zip(rule.group_by, values, strict=True))
        alerts.append(
            Alert(
                rule=rule.name,
                kind="absence",
                metric=rule.metric,
                at=now,
                group=group,
                message=f"{rule.name}: no {rule.metric} point in the last {rule.window}"
                f"{_where(group)}",
            )
        )
    return alerts


def evaluate(
    rules: Iterable[ThresholdRule | AbsenceRule],
    store: MetricStore,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Alert]:
    """The alerts firing now (``clock()``, read once), rule by rule, in the rules' order."""
    now = clock()
    alerts: list[Alert] = []
    for rule in rules:
        if isinstance(rule, ThresholdRule):
            alerts += _threshold(rule, store, now)
        else:
            alerts += _absence(rule, store, now)
    return alerts


# -- hooks: what to do with the alerts of one evaluation ----------------------------------------


class AlertHook(Protocol):
    """Called after every evaluation with the alerts firing (an empty list when none fires, so a
    hook also learns that an alert cleared)."""

    def __call__(self, alerts: list[Alert]) -> None: ...


_HOOKS: dict[str, AlertHook] = {}


def register_hook(name: str, hook: AlertHook) -> None:
    """Make ``hook`` callable by ``name`` (e.g. from the ``evaluate-alerts`` flow's ``hooks``)."""
    _HOOKS[name] = hook


def get_hook(name: str) -> AlertHook:
    """The hook registered as ``name``, else the object a ``"module:attribute"`` name imports
    (so a served deployment, which runs in a fresh process, finds it too)."""
    if name in _HOOKS:
        return _HOOKS[name]
    module, sep, attr = name.partition(":")
    if sep:
        try:
            hook: AlertHook = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"alert hook {name!r} cannot be imported: {exc}") from exc
        return hook
    known = ", ".join(sorted(_HOOKS)) or "none"
    raise ConfigError(
        f"no alert hook {name!r} (registered: {known})",
        hint="register_hook(name, fn) first, or name it as 'module:attribute'",
    )


def run_hooks(names: Iterable[str], alerts: list[Alert]) -> None:
    """Call the hooks named, in order (every name resolved before the first call)."""
    for hook in [get_hook(name) for name in names]:
        hook(list(alerts))
