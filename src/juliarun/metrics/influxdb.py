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

**Retries and the spool.** A batch that meets a retriable error (a connection error or timeout,
401/403/404 -- the database may not exist yet --, 408, 429, any 5xx) is retried ``max_retries``
times with exponential backoff (honouring ``Retry-After``), then written to the spool: a file per
batch under ``spool/<writer>/`` (written to a temporary name, fsync'd, renamed), where
``<writer>`` is this store instance (host, pid, random suffix) and is locked (``flock``) for its
lifetime. From then on every batch goes to the spool, in order, and the background thread probes
InfluxDB with the oldest spooled batch (backoff up to ``max_retry_delay``); when InfluxDB answers,
the spool drains oldest first and normal sending resumes. A batch InfluxDB refuses for good
(400: unparsable or conflicting types, 413) is kept under ``spool/rejected/`` with the error.
Every retry, spooled batch and rejection is reported to ``on_error`` (default: the
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

import bisect
import contextlib
import fcntl
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

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

__all__ = ["InfluxMetricStore", "WriteFailure", "WriteStats", "format_line", "format_series"]

log = logging.getLogger(__name__)

_MIN_TIME = "1677-09-21T00:12:43.145224194Z"  # InfluxDB's earliest and latest timestamps
_MAX_TIME = "2262-04-11T23:47:16.854775806Z"
_NAME_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
_REJECTED = "rejected"
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


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """What ``on_error`` receives: a batch of ``lines`` met ``error``; ``action`` says what
    happened to it: ``retrying`` (sent again after a backoff), ``spooled`` (on disk at ``path``,
    sent when InfluxDB answers again) or ``rejected`` (InfluxDB refused it for good; kept at
    ``path`` with the error next to it)."""

    lines: int
    error: BaseException
    action: Literal["retrying", "spooled", "rejected"]
    path: Path | None = None


@dataclass(slots=True)
class WriteStats:
    """Counters, in lines (points): accepted by ``write``; sent by the buffer; spooled; sent
    from the spool (this writer's and adopted ones); rejected by InfluxDB."""

    accepted: int = 0
    sent: int = 0
    spooled: int = 0
    drained: int = 0
    rejected: int = 0


@dataclass(slots=True)
class _Adopted:
    directory: Path
    lock_fd: int
    files: deque[Path] = field(default_factory=deque)


class _SendError(Exception):
    """A write failed; ``retriable`` says whether sending the same batch again may succeed."""

    def __init__(self, cause: BaseException, retriable: bool, retry_after: float | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retriable = retriable
        self.retry_after = retry_after


class _Spool:
    """This writer's locked spool directory, the directories it adopted, and the rejected ones."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        root.mkdir(parents=True, exist_ok=True)
        # Locked under a hidden name, then renamed: no one can adopt it before it is locked.
        hidden = root / f".new-{self.writer}"
        hidden.mkdir()
        self.lock_fd = os.open(hidden / "lock", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.directory = root / self.writer
        hidden.rename(self.directory)
        self.own: list[Path] = []  # sorted by name, i.e. by batch number
        self.adopted: deque[_Adopted] = deque()

    def put(self, seq: int, data: bytes) -> Path:
        path = self.directory / f"{seq:016d}.lp"
        _write_durably(path, data)
        if path not in self.own:
            bisect.insort(self.own, path)
        return path

    def reject(self, seq: int, data: bytes, error: BaseException) -> Path:
        directory = self.root / _REJECTED
        directory.mkdir(exist_ok=True)
        path = directory / f"{self.writer}-{seq:016d}.lp"
        _write_durably(path, data)
        _write_durably(path.with_suffix(".error"), f"{error}\n".encode())
        return path

    def adopt(self) -> None:
        """Lock every writer directory whose lock is free, and queue its files."""
        known = {a.directory for a in self.adopted}
        for directory in sorted(self.root.iterdir()):
            if (
                directory.name.startswith(".")
                or directory.name == _REJECTED
                or directory == self.directory
                or directory in known
                or not directory.is_dir()
            ):
                continue
            try:
                fd = os.open(directory / "lock", os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if not directory.exists():  # drained and removed by another adopter meanwhile
                os.close(fd)
                continue
            files = sorted(p for p in directory.iterdir() if p.name != "lock")
            self.adopted.append(_Adopted(directory, fd, deque(files)))

    def head(self) -> tuple[Path, bytes] | None:
        """The oldest spooled batch: adopted directories first, then this writer's."""
        while self.adopted:
            adopted = self.adopted[0]
            while adopted.files:
                path = adopted.files[0]
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    adopted.files.popleft()
                    continue
                end = data.rfind(b"\n")  # a torn temporary file: its complete lines only
                if end < 0:
                    path.unlink(missing_ok=True)
                    adopted.files.popleft()
                    continue
                return path, data[: end + 1]
            self.adopted.popleft()
            _remove_dir(adopted.directory)
            os.close(adopted.lock_fd)
        if self.own:
            path = self.own[0]
            return path, path.read_bytes()
        return None

    def done(self, path: Path) -> None:
        """``path`` reached InfluxDB: forget it."""
        path.unlink(missing_ok=True)
        if path in self.own:
            self.own.remove(path)
        elif self.adopted and self.adopted[0].files and self.adopted[0].files[0] == path:
            self.adopted[0].files.popleft()

    def pending(self) -> bool:
        return bool(self.own or self.adopted)

    def release(self) -> None:
        """Unlock everything; this writer's directory is removed when it holds nothing."""
        for adopted in self.adopted:
            os.close(adopted.lock_fd)
        self.adopted.clear()
        if not self.own:
            _remove_dir(self.directory)
        os.close(self.lock_fd)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.rename(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        for child in directory.iterdir():
            child.unlink(missing_ok=True)
        directory.rmdir()


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

        if batch_size < 1 or max_buffer < batch_size:
            raise StoreError(
                f"batch_size {batch_size} must be >= 1 and <= max_buffer {max_buffer}",
                hint="pick e.g. batch_size=5000, max_buffer=100000",
            )
        self.url = url
        self.org = org
        self.bucket = bucket
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.block_timeout = block_timeout
        self.max_retries = max_retries
        self.retry_interval = retry_interval
        self.max_retry_delay = max_retry_delay
        self.close_timeout = close_timeout
        self.adopt_interval = adopt_interval
        self.on_error = on_error or _log_failure
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self.stats = WriteStats()
        try:
            self._spool = _Spool(Path(spool))
        except OSError as exc:
            raise StoreError(
                f"cannot create the metric spool under {str(spool)!r}: {exc}",
                hint="the spool directory must be writable (JULIARUN_HOME/spool/metrics)",
            ) from exc
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout * 1000))
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._query_api = self._client.query_api()
        self._cond = threading.Condition(threading.Lock())
        self._buffer: deque[str] = deque()
        self._series_cache: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._buffer_since: float | None = None
        self._inflight: tuple[int, bytes] | None = None
        self._seq = 0
        self._last_seen: dict[str, tuple[int, int]] = {}  # series -> (nanoseconds, bump)
        self._degraded = False
        self._flush_requested = 0
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self._thread.start()

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
        with self._cond:
            self._check_open()
            last_seen = self._last_seen
            if len(last_seen) > _MAX_SERIES_MEMORY:
                last_seen.clear()
            lines = []
            for key, value, nanos in formatted:
                seen = last_seen.get(key)
                bump = min(seen[1] + 1, 999) if seen is not None and seen[0] == nanos else 0
                last_seen[key] = (nanos, bump)
                lines.append(f"{key} {value} {nanos + bump}\n")
            self.stats.accepted += len(lines)
            self._wait_for_room(len(lines))
            if self._buffer_since is None:
                self._buffer_since = self.monotonic()
            self._buffer.extend(lines)
            if len(self._buffer) >= self.batch_size:
                self._cond.notify_all()
        return len(lines)

    def _wait_for_room(self, incoming: int) -> None:
        """Called holding the lock: wait for the sender, then spill the oldest lines to disk."""
        if len(self._buffer) + incoming <= self.max_buffer:
            return
        self._cond.notify_all()
        deadline = self.monotonic() + self.block_timeout
        while len(self._buffer) + incoming > self.max_buffer:
            left = deadline - self.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        while len(self._buffer) + incoming > self.max_buffer and self._buffer:
            seq, data = self._take_locked()
            try:
                self._spool_batch(seq, data, error=None)
            except OSError as exc:
                raise StoreError(
                    f"metric buffer full and the spool is not writable: {exc}",
                    hint="free disk space under the spool directory, or check that InfluxDB is up",
                ) from exc

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every point accepted so far was sent or spooled (up to ``timeout``
        seconds, default ``close_timeout``); ``True`` when nothing is left in memory or on disk."""
        deadline = self.monotonic() + (self.close_timeout if timeout is None else timeout)
        with self._cond:
            self._flush_requested += 1
            self._cond.notify_all()
            try:
                while self._buffer or self._inflight is not None:
                    left = deadline - self.monotonic()
                    if left <= 0 or not self._thread.is_alive():
                        break
                    self._cond.wait(min(left, 0.1))
                return not (self._buffer or self._inflight or self._spool.pending())
            finally:
                self._flush_requested -= 1

    def _take_locked(self) -> tuple[int, bytes]:
        n = min(self.batch_size, len(self._buffer))
        data = "".join([self._buffer.popleft() for _ in range(n)]).encode()
        self._seq += 1
        self._buffer_since = self.monotonic() if self._buffer else None
        self._cond.notify_all()
        return self._seq, data

    # -- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_probe = 0.0
        backoff = self.retry_interval
        next_adopt = 0.0
        while True:
            with self._cond:
                while True:
                    now = self.monotonic()
                    due = (
                        self._closing
                        or self._buffer_due(now)
                        or (self._spool.pending() and now >= next_probe)
                        or now >= next_adopt
                    )
                    if due:
                        break
                    wake = [next_adopt, (self._buffer_since or now) + self.flush_interval]
                    if self._spool.pending():
                        wake.append(next_probe)
                    self._cond.wait(max(0.001, min(wake) - now))
                closing = self._closing
            drain_failed = False
            try:
                if self.monotonic() >= next_adopt:
                    next_adopt = self.monotonic() + self.adopt_interval
                    self._spool.adopt()
                if self._spool.pending() and (self.monotonic() >= next_probe or closing):
                    if self._drain():
                        self._degraded = False
                        backoff = self.retry_interval
                    else:
                        drain_failed = True
                        self._degraded = True
                        next_probe = self.monotonic() + backoff
                        backoff = min(backoff * 2, self.max_retry_delay)
                self._send_buffer()
            except Exception as exc:  # the sender must survive anything; report it
                drain_failed = True
                log.exception("metric writer: unexpected error")
                self._report(WriteFailure(0, exc, "retrying"))
            with self._cond:
                if (
                    self._closing
                    and not self._buffer
                    and self._inflight is None
                    and (not self._spool.pending() or drain_failed)
                ):
                    return
                self._cond.notify_all()

    def _buffer_due(self, now: float) -> bool:
        return bool(self._buffer) and (
            len(self._buffer) >= self.batch_size
            or bool(self._flush_requested)
            or now - (self._buffer_since or now) >= self.flush_interval
        )

    def _send_buffer(self) -> None:
        """Send (or, while InfluxDB is away, spool) what the buffer holds, one batch at a time."""
        while True:
            with self._cond:
                if not self._buffer or (self._spool.pending() and not self._degraded):
                    return  # the spool goes first: the main loop drains it
                if not (self._closing or self._buffer_due(self.monotonic())):
                    return
                seq, data = self._inflight = self._take_locked()
            try:
                if self._degraded:
                    self._spool_batch(seq, data, error=None)
                    continue
                lines = data.count(b"\n")
                try:
                    self._send_with_retries(data, lines)
                    self.stats.sent += lines
                except _SendError as exc:
                    if exc.retriable:
                        self._degraded = True
                        self._spool_batch(seq, data, error=exc.cause)
                    else:
                        self._reject(seq, data, exc.cause)
                except Exception as exc:  # a bug of ours or the client's: keep the batch
                    self._degraded = True
                    self._spool_batch(seq, data, error=exc)
            finally:
                with self._cond:
                    self._inflight = None
                    self._cond.notify_all()

    def _send_with_retries(self, data: bytes, lines: int) -> None:
        delay = self.retry_interval
        for attempt in range(self.max_retries + 1):
            try:
                self._send(data)
                return
            except _SendError as exc:
                if not exc.retriable or attempt == self.max_retries or self._closing:
                    raise
                self._report(WriteFailure(lines, exc.cause, "retrying"))
                wait = delay if exc.retry_after is None else exc.retry_after
                self.sleep(min(wait, self.max_retry_delay))
                delay = min(delay * 2, self.max_retry_delay)

    def _send(self, data: bytes) -> None:
        from influxdb_client.rest import ApiException

        try:  # the default precision is nanoseconds
            self._write_api.write(bucket=self.bucket, org=self.org, record=data)
        except ApiException as exc:
            status = int(exc.status or 0)
            retry_after = None
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                retry_after = float(exc.headers.get("Retry-After") or "")
            retriable = status in _RETRIABLE_STATUS or status >= 500 or status == 0
            raise _SendError(exc, retriable, retry_after) from exc
        except Exception as exc:  # connection refused, reset, timeouts: urllib3 and OSError
            raise _SendError(exc, True, None) from exc

    def _drain(self) -> bool:
        """Send spooled batches oldest first; ``False`` at the first that fails again."""
        while True:
            with self._cond:
                if self._closed:
                    return False
            head = self._spool.head()
            if head is None:
                return True
            path, data = head
            lines = data.count(b"\n")
            try:
                self._send(data)
            except _SendError as exc:
                if exc.retriable:
                    return False
                self._reject(int(path.stem) if path.stem.isdigit() else 0, data, exc.cause)
            else:
                self.stats.drained += lines
            self._spool.done(path)

    def _spool_batch(self, seq: int, data: bytes, error: BaseException | None) -> None:
        lines = data.count(b"\n")
        try:
            path = self._spool.put(seq, data)
        except OSError as exc:
            log.error("metric writer: cannot spool %d points to %s: %s", lines, self._spool, exc)
            self._report(WriteFailure(lines, exc, "retrying"))
            raise
        self.stats.spooled += lines
        if error is not None:
            self._report(WriteFailure(lines, error, "spooled", path))

    def _reject(self, seq: int, data: bytes, error: BaseException) -> None:
        lines = data.count(b"\n")
        path = self._spool.reject(seq, data, error)
        self.stats.rejected += lines
        self._report(WriteFailure(lines, error, "rejected", path))

    def _report(self, failure: WriteFailure) -> None:
        try:
            self.on_error(failure)
        except Exception:
            log.exception("metric writer: the on_error callback failed")

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
        with self._cond:
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
                else "check that InfluxDB is up (`scripts/testenv up influxdb`) and the bucket"
                f" {self.bucket!r} exists",
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

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Send what is buffered (waiting up to ``close_timeout``), spool what is left, and
        unlock the spool for a later instance. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self.close_timeout)
        with self._cond:
            self._closed = True
            leftovers: list[tuple[int, bytes]] = []
            if self._inflight is not None:  # stuck in a request: keep a copy, dedup covers it
                leftovers.append(self._inflight)
            while self._buffer:
                leftovers.append(self._take_locked())
            for seq, data in leftovers:
                try:
                    self._spool_batch(seq, data, error=None)
                except OSError as exc:
                    log.error("metric writer: %d points lost at close: %s", data.count(b"\n"), exc)
            self._cond.notify_all()
        self._thread.join(1.0)
        self._spool.release()
        self._client.close()  # type: ignore[no-untyped-call]

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise StoreError(
                f"the InfluxDB metric store for {self.bucket!r} is closed",
                hint="open a new store (juliarun.init()) instead of reusing a closed one",
            )


def _log_failure(failure: WriteFailure) -> None:
    if failure.action == "retrying":
        log.debug("metric batch of %d points failed, retrying: %s", failure.lines, failure.error)
    elif failure.action == "spooled":
        log.warning(
            "InfluxDB unavailable (%s): %d points spooled to %s; they are sent when it is back",
            _short(failure.error),
            failure.lines,
            failure.path,
        )
    else:
        log.error(
            "InfluxDB refused %d points (%s); kept in %s",
            failure.lines,
            _short(failure.error),
            failure.path,
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
