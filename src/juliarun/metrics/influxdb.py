"""The InfluxDB metric store: batched writes that survive outages, Flux queries.

**Points.** A point becomes one line of InfluxDB line protocol: measurement = the metric name, its
tags as tags, one float field ``value``, the timestamp in nanoseconds. InfluxDB's own escaping
rules apply (``,``, ``=`` and spaces are escaped with a backslash, a backslash is literal), so a
name, tag key or tag value that ends with a backslash or has one right before ``,``, ``=`` or a
space cannot be carried and is refused, as are newlines, empty names, NaN and infinities (which
InfluxDB cannot store). A tag whose value is ``""`` is left out: InfluxDB has no empty tags.

**Batching.** :meth:`InfluxMetricStore.write` formats the points in the caller's thread (bad
points fail there, before anything is queued) and appends them to an in-memory buffer; one
background thread sends the buffer in batches of ``batch_size`` lines, at least every
``flush_interval`` seconds. The buffer holds at most ``max_buffer`` lines: a writer that outruns
the server waits up to ``block_timeout`` seconds for room, then moves the oldest lines to the
spool itself, so memory stays bounded and nothing is dropped.

**Retries and the spool** are :class:`juliarun.outbox.Outbox`'s (its ``put``), as for the
Elasticsearch log store. A batch that meets a retriable error (a connection error or timeout,
401/403/404 -- the database may not exist yet --, 408, 429, any 5xx) is retried ``max_retries``
times with exponential backoff (honouring ``Retry-After``), then written to the spool: a file per
batch under ``spool/<writer>/`` (written to a temporary name, fsync'd, renamed), where ``<writer>``
is this store instance (host, pid, random suffix), made at its first spooled batch and locked
(``flock``) for its lifetime. From then on every batch goes to the spool, in order, and the
background thread probes InfluxDB with the oldest spooled batch (backoff up to ``max_retry_delay``);
when InfluxDB answers, the spool drains oldest first and normal sending resumes. A batch InfluxDB
refuses for good (400: unparsable or conflicting types, 413) is kept under ``spool/rejected/`` with
the error. Every retry, spooled batch and rejection is reported to ``on_error`` (default: the
``juliarun.metrics.influxdb`` logger) -- nothing is dropped silently.

**Process exit.** :meth:`~InfluxMetricStore.close` waits up to ``close_timeout`` seconds for the
buffer and the spool to reach InfluxDB, then writes whatever is left to the spool and unlocks it.
Any later store instance on the same spool directory adopts the spool directories whose lock is
free (their writer is gone) and drains them, checking again every ``adopt_interval`` seconds.
Points still in memory when a process is killed with SIGKILL are lost (at most one
``flush_interval`` worth, plus the buffer).

**Exactly once.** InfluxDB keeps one point per measurement + tag set + timestamp (a second write
replaces the first), so a batch sent twice -- a retry after a lost response, a spool file sent
again after a crash between the write and the unlink -- is stored once. That needs a batch to be
byte-identical every time it is sent: points are formatted once, at ``write``, with their
timestamps at nanosecond precision, and never re-stamped. Two points of one series that a writer
receives with the same microsecond (a ``datetime`` has no finer resolution) would collide; the
store gives the second one the next nanosecond (up to 999 per microsecond), so every point
written is stored, as in the SQLite store, and ``last`` prefers the one written last.

**Queries** run in Flux against ``[since, until)`` (all time when unset) and have the SQLite
store's semantics: windows aligned to the epoch, the row's start is the window's start (or the
group's first point without a window), points lacking a ``group_by`` tag fall in the group where
it is ``""``, a tag filter ``{"k": ""}`` matches points without ``k``, rows ordered by group then
start. Unlike SQLite, windowed queries cover 1970 onwards only (InfluxDB 1.8's Flux windows lose
earlier points). :meth:`~InfluxMetricStore.query` first flushes this store's buffer, so a store
reads its own writes. InfluxDB 1.8 has no delete API: a retention policy (``bucket="db/rp"``)
expires old points.

Without a reachable server every point lands in the spool, and is kept for the next instance:

>>> import tempfile
>>> from datetime import UTC, datetime
>>> spool = tempfile.mkdtemp()
>>> store = InfluxMetricStore(
...     "http://127.0.0.1:9", ":", "-", "juliarun/autogen", spool=spool, max_retries=0,
...     close_timeout=0.5, on_error=lambda failure: None,
... )
>>> store.record("loss", 0.25, {"epoch": "3"}, datetime(2024, 1, 1, tzinfo=UTC))
>>> store.close()
>>> store.stats.accepted, store.stats.spooled
(1, 1)
>>> [p.read_text() for p in Path(spool).glob("*/*.lp")]
['loss,epoch=3 value=0.25 1704067200000000000\\n']
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from juliarun._store import (
    EPOCH,
    MICROSECOND,
    ClosingContext,
    PointRecorder,
    from_micros,
    to_micros,
    utcnow,
    window_micros,
)
from juliarun.errors import StoreError
from juliarun.metrics.base import Aggregation, MetricQuery, Point, Row
from juliarun.outbox import (
    DELIVERED,
    Delivered,
    DeliveryError,
    Failure,
    Outbox,
    Stats,
    failure_logger,
)

__all__ = ["InfluxMetricStore", "WriteFailure", "WriteStats", "format_line", "format_series"]

log = logging.getLogger(__name__)

_MIN_TIME = "1677-09-21T00:12:43.145224194Z"  # InfluxDB's earliest and latest timestamps
_MAX_TIME = "2262-04-11T23:47:16.854775806Z"
_NAME_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
_RETRIABLE_STATUS = frozenset({401, 403, 404, 408, 429})
_MAX_SERIES_MEMORY = 100_000
_FLUX_AGG = {"mean": "mean", "max": "max", "min": "min", "sum": "sum", "count": "count"}


def _check_text(what: str, text: str, name: str) -> None:
    bad = None
    if "\n" in text or "\r" in text:
        bad = "a newline"
    elif "\\" in text and (text.endswith("\\") or any(f"\\{c}" in text for c in ", =")):
        bad = "a backslash at the end or before ',', '=' or a space"
    if bad:
        raise StoreError(
            f"metric {name!r}: {what} {text!r} has {bad}, which InfluxDB cannot store",
            hint="rename the metric or tag, or replace the character",
        )


def format_series(name: str, tags: Mapping[str, str]) -> str:
    """The series of a point: its measurement and tags (sorted; empty values left out), escaped.

    >>> format_series("run time", {"b": "", "a": "x,y"})
    'run\\\\ time,a=x\\\\,y'
    """
    if not name or name.startswith("#"):
        raise StoreError(
            f"metric name {name!r} is empty or starts with '#'",
            hint="give the metric a name that starts with a letter",
        )
    _check_text("name", name, name)
    parts = [name.translate(_NAME_ESCAPES)]
    for key, tag in sorted(tags.items()):
        if not tag:
            continue
        if not key:
            raise StoreError(f"metric {name!r} has an empty tag key", hint="name every tag")
        _check_text("tag key", key, name)
        _check_text("tag value", tag, name)
        parts.append(f"{key.translate(_KEY_ESCAPES)}={tag.translate(_KEY_ESCAPES)}")
    return ",".join(parts)


def _field(point: Point) -> str:
    value = float(point.value)
    if not math.isfinite(value):
        raise StoreError(
            f"metric {point.name!r} at {point.timestamp.isoformat()} is {value!r}",
            hint="InfluxDB stores finite numbers only: skip or replace NaN and infinities",
        )
    return f"value={value!r}"


def format_line(point: Point) -> tuple[str, str, int]:
    """``(series, field, nanoseconds)`` of ``point``: its line is ``f"{series} {field} {ns}"``.

    >>> from datetime import UTC, datetime
    >>> format_line(Point("run time", 1.5, datetime(2024, 1, 1, tzinfo=UTC), {"a": "x,y", "b": ""}))
    ('run\\\\ time,a=x\\\\,y', 'value=1.5', 1704067200000000000)
    """
    return format_series(point.name, point.tags), _field(point), to_micros(point.timestamp) * 1000


WriteFailure = Failure
"""What ``on_error`` receives (:class:`juliarun.outbox.Failure`): a batch of ``lines`` points
met ``error``, and was ``retrying``, ``spooled`` (at ``path``) or ``rejected`` (kept at
``path`` with the error next to it)."""

WriteStats = Stats
"""The store's counters in points (:class:`juliarun.outbox.Stats`): ``accepted`` by ``write``,
``sent`` by the buffer, ``spooled``, ``drained`` from a spool, ``rejected`` by InfluxDB."""


class InfluxMetricStore(PointRecorder, ClosingContext):
    """A :class:`~juliarun.metrics.base.MetricStore` on InfluxDB (the v2 API; 1.8 works with
    token ``"user:password"`` or ``":"``, org ``"-"`` and bucket ``"database/retention"``).

    See the module notes for batching, the spool and exactly-once delivery. ``write`` returns
    how many points it accepted (they are stored, or spooled, by the background thread).
    ``clock`` gives "now" to :meth:`record`; ``sleep`` waits between retries of a batch;
    ``monotonic`` measures intervals and deadlines.
    """

    def __init__(
        self,
        url: str,
        token: str,
        org: str,
        bucket: str,
        *,
        spool: Path | str,
        batch_size: int = 5000,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        block_timeout: float = 1.0,
        max_retries: int = 3,
        retry_interval: float = 0.2,
        max_retry_delay: float = 2.0,
        timeout: float = 10.0,
        close_timeout: float = 10.0,
        adopt_interval: float = 60.0,
        on_error: Callable[[WriteFailure], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url = url
        self.org = org
        self.bucket = bucket
        self.close_timeout = close_timeout
        self.clock = clock
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout * 1000))
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._query_api = self._client.query_api()
        self._lock = threading.Lock()  # the series' last timestamps, and the order of writes
        self._series_cache: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._last_seen: dict[str, tuple[int, int]] = {}  # series -> (nanoseconds, bump)
        try:
            self._outbox = Outbox(
                Path(spool),
                self._deliver,
                suffix=".lp",
                batch_size=batch_size,
                max_age=flush_interval,
                max_buffer=max_buffer,
                block_timeout=block_timeout,
                max_retries=max_retries,
                retry_delays=(retry_interval, max_retry_delay),
                probe_delays=(retry_interval, max_retry_delay),
                close_timeout=close_timeout,
                adopt_interval=adopt_interval,
                on_failure=on_error or failure_logger(log, "InfluxDB", "points", _short),
                clock=monotonic,
                sleep=sleep,
                name="metric",
            )
        except StoreError:
            self._client.close()  # type: ignore[no-untyped-call]
            raise

    @property
    def stats(self) -> WriteStats:
        """Counters, in points (see :class:`WriteStats`)."""
        return self._outbox.stats

    # -- writing -------------------------------------------------------------------------

    def write(self, points: Iterable[Point]) -> int:
        """Queue points for InfluxDB; returns how many were accepted.

        Every point is checked first: one that InfluxDB cannot store raises
        :class:`~juliarun.errors.StoreError` and nothing of the call is queued.
        """
        cache = self._series_cache
        if len(cache) > _MAX_SERIES_MEMORY:
            cache.clear()
        formatted = []
        for p in points:
            memo = (p.name, tuple(p.tags.items()))
            series = cache.get(memo)
            if series is None:
                series = cache[memo] = format_series(p.name, p.tags)
            formatted.append((series, _field(p), to_micros(p.timestamp) * 1000))
        if not formatted:
            return 0
        with self._lock:
            self._check_open()
            last_seen = self._last_seen
            if len(last_seen) > _MAX_SERIES_MEMORY:
                last_seen.clear()
            lines = []
            for key, value, nanos in formatted:
                seen = last_seen.get(key)
                bump = min(seen[1] + 1, 999) if seen is not None and seen[0] == nanos else 0
                last_seen[key] = (nanos, bump)
                lines.append(f"{key} {value} {nanos + bump}")
            self._outbox.put(lines)
        return len(lines)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every point accepted so far was sent or spooled (up to ``timeout``
        seconds, default ``close_timeout``); ``True`` when nothing is left in memory or on disk."""
        return self._outbox.flush(timeout)

    def _deliver(self, lines: list[str], timeout: float | None) -> Delivered:
        """Write one batch (the outbox's ``deliver``); the default precision is nanoseconds."""
        from influxdb_client.rest import ApiException

        data = "".join(f"{line}\n" for line in lines).encode()
        try:  # every request has the client's timeout
            self._write_api.write(bucket=self.bucket, org=self.org, record=data)
        except ApiException as exc:
            status = int(exc.status or 0)
            retry_after = None
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                retry_after = float(exc.headers.get("Retry-After") or "")
            retriable = status in _RETRIABLE_STATUS or status >= 500 or status == 0
            raise DeliveryError(exc, retriable=retriable, retry_after=retry_after) from exc
        except Exception as exc:  # connection refused, reset, timeouts: urllib3 and OSError
            raise DeliveryError(exc, retriable=True) from exc
        return DELIVERED

    # -- reading -------------------------------------------------------------------------

    def query(self, q: MetricQuery) -> list[Row]:
        """Aggregated rows ordered by group values, then window start (see the module notes).
        This store's buffered points are flushed first."""
        window = window_micros(q.window)
        if window is not None and q.since is not None and to_micros(q.since) < 0:
            raise StoreError(
                f"windows before 1970 are not supported by InfluxDB 1.8 (since={q.since})",
                hint="query from 1970 on, or aggregate without a window",
            )
        self._check_open()
        self.flush()
        flux = build_flux(self.bucket, q)
        try:
            tables = self._query_api.query(flux, org=self.org)
        except Exception as exc:
            refused = getattr(exc, "status", None) in (401, 403)
            raise StoreError(
                f"InfluxDB at {self.url} cannot query {q.name!r}: {_short(exc)}",
                hint="InfluxDB refused the token: check it (InfluxDB 1.8: 'user:password')"
                if refused
                else f"check that InfluxDB is up and the bucket {self.bucket!r} exists",
            ) from exc
        firsts: dict[tuple[str, ...], int] = {}
        values: list[tuple[tuple[str, ...], int | None, float]] = []
        for table in tables:
            for record in table.records:
                row = record.values
                group = tuple(str(row.get(k) or "") for k in q.group_by)
                if row.get("result") == "first":
                    firsts[group] = to_micros(row["_time"])
                elif window is not None:
                    begin = to_micros(row["_start"])  # clamped to `since`: floor it
                    values.append((group, begin - begin % window, float(row["_value"])))
                else:
                    values.append((group, None, float(row["_value"])))
        rows = []
        for group, start, value in values:
            first = start if start is not None else firsts.get(group)
            if first is not None:
                rows.append((group, first, value))
        rows.sort(key=lambda r: (r[0], r[1]))
        return [
            Row(
                start=from_micros(micros),
                group=dict(zip(q.group_by, group, strict=True)),
                value=value,
            )
            for group, micros, value in rows
        ]

    def names(self) -> list[str]:
        """Every metric name (measurement) in the bucket, sorted; buffered points first."""
        self._check_open()
        self.flush()
        flux = (
            f'import "influxdata/influxdb/v1"\nv1.measurements(bucket: {flux_string(self.bucket)})'
        )
        try:
            tables = self._query_api.query(flux, org=self.org)
        except Exception as exc:
            raise StoreError(
                f"InfluxDB at {self.url} cannot list the metric names: {_short(exc)}",
                hint=f"check that InfluxDB is up and the bucket {self.bucket!r} exists",
            ) from exc
        return sorted(
            {str(record.values.get("_value")) for table in tables for record in table.records}
        )

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Send what is buffered (waiting up to ``close_timeout``), spool what is left, and
        unlock the spool for a later instance. Idempotent."""
        with self._lock:
            closing = self._outbox.closing
        if closing:
            return
        self._outbox.close()
        self._client.close()  # type: ignore[no-untyped-call]

    def _check_open(self) -> None:
        if self._outbox.closing:
            raise StoreError(
                f"the InfluxDB metric store for {self.bucket!r} is closed",
                hint="open a new store (juliarun.init()) instead of reusing a closed one",
            )


def _short(exc: BaseException) -> str:
    headers: Any = getattr(exc, "headers", None)
    if headers is not None and getattr(exc, "status", None):
        detail = headers.get("X-Influxdb-Error") or getattr(exc, "reason", "")
        return f"HTTP {exc.status}: {detail}"  # type: ignore[attr-defined]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- Flux ----------------------------------------------------------------------------------


def flux_string(text: str) -> str:
    """A Flux string literal for ``text``.

    >>> print(flux_string('a "b" ${c} \\\\'))
    "a \\"b\\" \\${c} \\\\"
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def _flux_time(ts: datetime) -> str:
    micros = to_micros(ts)
    whole, frac = divmod(micros, 1_000_000)
    moment = EPOCH + timedelta(seconds=whole)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{frac:06d}Z"


def build_flux(bucket: str, q: MetricQuery) -> str:
    """The Flux program for ``q``: a ``first`` result (each group's first point, without a
    window) and the aggregated rows.

    >>> print(build_flux("db/autogen", MetricQuery("cpu", tags={"job": "a"}, agg="max")))
    data = from(bucket: "db/autogen")
      |> range(start: 1677-09-21T00:12:43.145224194Z, stop: 2262-04-11T23:47:16.854775806Z)
      |> filter(fn: (r) => r._measurement == "cpu" and r._field == "value")
      |> filter(fn: (r) => r["job"] == "a")
    data |> first() |> group(columns: []) |> sort(columns: ["_time"]) |> first()
      |> yield(name: "first")
    data |> group(columns: []) |> max() |> yield(name: "agg")
    """
    if q.since is not None:
        start = _flux_time(q.since)
    else:  # Flux's window() in InfluxDB 1.8 loses points before the epoch
        start = _MIN_TIME if q.window is None else "1970-01-01T00:00:00.000000Z"
    stop = _flux_time(q.until) if q.until is not None else _MAX_TIME
    lines = [
        f"data = from(bucket: {flux_string(bucket)})",
        f"  |> range(start: {start}, stop: {stop})",
        f'  |> filter(fn: (r) => r._measurement == {flux_string(q.name)} and r._field == "value")',
    ]
    conditions = []
    if q.until is not None:  # InfluxDB 1.8's range() also returns points at `stop`
        conditions.append(f"r._time < {stop}")
    for key, value in sorted(q.tags.items()):
        column = f"r[{flux_string(key)}]"
        if value:
            conditions.append(f"{column} == {flux_string(value)}")
        else:
            conditions.append(f'(not exists {column} or {column} == "")')
    if conditions:
        lines.append(f"  |> filter(fn: (r) => {' and '.join(conditions)})")
    group = ", ".join(flux_string(k) for k in q.group_by)
    agg: Aggregation = q.agg
    if q.window is None:
        lines.append(
            f'data |> first() |> group(columns: [{group}]) |> sort(columns: ["_time"]) |> first()'
        )
        lines.append('  |> yield(name: "first")')
        if agg == "last":
            lines.append(
                f'data |> last() |> group(columns: [{group}]) |> sort(columns: ["_time"])'
                ' |> last() |> yield(name: "agg")'
            )
        else:
            lines.append(
                f'data |> group(columns: [{group}]) |> {_FLUX_AGG[agg]}() |> yield(name: "agg")'
            )
    else:
        every = f"{q.window // MICROSECOND * 1000}ns"
        if agg == "last":
            with_start = ", ".join([*(flux_string(k) for k in q.group_by), '"_start"'])
            lines.append(
                f"data |> window(every: {every}) |> last() |> group(columns: [{with_start}])"
                ' |> sort(columns: ["_time"]) |> last() |> yield(name: "agg")'
            )
        else:
            lines.append(
                f"data |> group(columns: [{group}]) |> window(every: {every})"
                f' |> {_FLUX_AGG[agg]}() |> yield(name: "agg")'
            )
    return "\n".join(lines)
