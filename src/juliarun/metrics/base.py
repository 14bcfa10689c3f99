"""The metric store seam: one protocol, one module per implementation (sqlite, influxdb)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

Aggregation = Literal["mean", "max", "min", "sum", "last", "count"]


@dataclass(frozen=True, slots=True)
class Point:
    """One name-value pair with tags at a timezone-aware UTC time."""

    name: str
    value: float
    timestamp: datetime
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MetricQuery:
    """Select points by name and tags in ``[since, until)``, aggregate per ``window`` (or over
    the whole range when ``window`` is ``None``), one series per value of the ``group_by`` tags."""

    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    window: timedelta | None = None
    agg: Aggregation = "mean"
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Row:
    """One aggregated value: the window's start (or the first point's time without a window),
    the group's tag values, and the value."""

    start: datetime
    group: Mapping[str, str]
    value: float


@runtime_checkable
class MetricStore(Protocol):
    """Where application and system metrics go and how they are aggregated."""

    def write(self, points: Iterable[Point]) -> int:
        """Store points; returns how many were stored."""
        ...

    def record(
        self,
        name: str,
        value: float,
        tags: Mapping[str, str] | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Store one point (now, when no timestamp is given)."""
        ...

    def query(self, q: MetricQuery) -> list[Row]:
        """Aggregated rows ordered by group, then window start."""
        ...

    def flush(self, timeout: float | None = None) -> bool:
        """Hand every point written so far to the store or its durable spool; ``True`` when
        all of them are stored (queries see them), ``False`` when some wait in a spool."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class MetricNames(Protocol):
    """A metric store that can list the names it holds (to tell a misspelt name from a
    metric with no points in the asked period)."""

    def names(self) -> list[str]:
        """Every metric name stored, sorted."""
        ...
