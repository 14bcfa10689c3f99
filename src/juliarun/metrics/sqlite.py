"""The embedded metric store: points in one SQLite file (WAL), aggregated on read."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from juliarun._store import PointRecorder, SqliteStore, from_micros, to_micros, window_micros
from juliarun.errors import StoreError
from juliarun.metrics.base import Aggregation, MetricQuery, Point, Row

__all__ = ["SqliteMetricStore"]

_SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS points (
        seq INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        ts INTEGER NOT NULL,
        value REAL NOT NULL,
        tags TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS points_name_ts ON points (name, ts)",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)


def canonical_tags(tags: Mapping[str, str]) -> str:
    """Tags as canonical JSON text: sorted keys, no spaces, non-ASCII kept.

    >>> canonical_tags({"worker": "w1", "job": "train"})
    '{"job":"train","worker":"w1"}'
    """
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _tag_expr(key: str) -> tuple[str, list[Any]]:
    """SQL for the text of tag ``key`` (NULL when absent)."""
    if any(c in '"\\' or c < " " for c in key):  # not expressible as a SQLite JSON path label
        return "(SELECT value FROM json_each(tags) WHERE key = ?)", [key]
    return "json_extract(tags, ?)", [f'$."{key}"']


@dataclass(slots=True)
class _Acc:
    """Running aggregate of one (group, window)."""

    start: int
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    last: float = math.nan

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.last = value

    def result(self, agg: Aggregation) -> float:
        match agg:
            case "mean":
                return self.total / self.count
            case "max":
                return self.high
            case "min":
                return self.low
            case "sum":
                return self.total
            case "last":
                return self.last
            case "count":
                return float(self.count)


class SqliteMetricStore(PointRecorder, SqliteStore):
    """A :class:`~juliarun.metrics.base.MetricStore` in one SQLite file.

    Timestamps are integer microseconds since the epoch (naive datetimes are taken as UTC); tags
    are canonical JSON. A query selects points by name, tags (every given pair must match) and
    ``[since, until)``, then aggregates per tumbling window aligned to the epoch (a window starts
    at ``floor(ts / window) * window``), or over the whole range when ``window`` is ``None`` (the
    row's start is then the group's first point). ``last`` is the latest point (ties go to the
    one stored last). Points lacking a ``group_by`` tag fall in the group where it is ``""``.
    Rows come ordered by group values, then start. ``clock`` gives "now" to :meth:`record`.

    >>> from datetime import UTC, datetime, timedelta
    >>> t0 = datetime(2024, 1, 1, tzinfo=UTC)
    >>> store = SqliteMetricStore(":memory:", clock=lambda: t0)
    >>> store.record("cpu", 1.0, {"worker": "w1"})
    >>> store.record("cpu", 3.0, {"worker": "w1"}, t0 + timedelta(seconds=30))
    >>> store.record("cpu", 8.0, {"worker": "w2"}, t0 + timedelta(seconds=90))
    >>> for row in store.query(MetricQuery("cpu", window=timedelta(minutes=1))):
    ...     print(row.start.time(), row.value)
    00:00:00 2.0
    00:01:00 8.0
    >>> [(row.group, row.value) for row in store.query(MetricQuery("cpu", group_by=("worker",)))]
    [({'worker': 'w1'}, 2.0), ({'worker': 'w2'}, 8.0)]
    >>> store.close()
    """

    kind = "metric"
    schema = _SCHEMA

    def write(self, points: Iterable[Point]) -> int:
        """Store points in one transaction; returns how many were stored.

        A NaN value is refused (SQLite cannot store it) and nothing of the batch is stored.
        """
        rows = []
        for point in points:
            if math.isnan(point.value):
                raise StoreError(
                    f"metric {point.name!r} at {point.timestamp.isoformat()} is NaN",
                    hint="skip or replace NaN values before recording them",
                )
            rows.append(
                (point.name, to_micros(point.timestamp), point.value, canonical_tags(point.tags))
            )
        if not rows:
            return 0
        with self._guard("write points"), self._transaction() as conn:
            conn.executemany("INSERT INTO points (name, ts, value, tags) VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def query(self, q: MetricQuery) -> list[Row]:
        """Aggregated rows ordered by group values, then window start (see the class notes)."""
        window = window_micros(q.window)
        clauses = ["name = ?"]
        params: list[Any] = [q.name]
        for key, value in sorted(q.tags.items()):
            expr, expr_params = _tag_expr(key)
            clauses.append(f"{expr} = ?")
            params += [*expr_params, value]
        if q.since is not None:
            clauses.append("ts >= ?")
            params.append(to_micros(q.since))
        if q.until is not None:
            clauses.append("ts < ?")
            params.append(to_micros(q.until))
        columns = ["ts", "value"]
        select_params: list[Any] = []
        for key in q.group_by:
            expr, expr_params = _tag_expr(key)
            columns.append(f"coalesce({expr}, '')")
            select_params += expr_params
        sql = (
            f"SELECT {', '.join(columns)} FROM points WHERE {' AND '.join(clauses)}"
            " ORDER BY ts, seq"
        )
        with self._guard("query points") as conn:
            rows = conn.execute(sql, [*select_params, *params]).fetchall()

        accs: dict[tuple[tuple[str, ...], int], _Acc] = {}
        for ts, value, *group in rows:
            start = ts - ts % window if window is not None else 0
            slot = (tuple(group), start)
            acc = accs.get(slot)
            if acc is None:
                acc = accs[slot] = _Acc(start=ts if window is None else start)
            acc.add(value)
        return [
            Row(
                start=from_micros(accs[key].start),
                group=dict(zip(q.group_by, key[0], strict=True)),
                value=accs[key].result(q.agg),
            )
            for key in sorted(accs)
        ]

    def names(self) -> list[str]:
        """Every metric name stored, sorted (read from the name index)."""
        with self._guard("list metric names") as conn:
            rows = conn.execute("SELECT DISTINCT name FROM points ORDER BY name").fetchall()
        return [str(name) for (name,) in rows]

    def flush(self, timeout: float | None = None) -> bool:
        """Writes are stored when ``write`` returns; nothing to wait for."""
        return True
