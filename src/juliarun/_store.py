"""What the log and metric stores share: UTC time as integer microseconds, closing on ``with``,
``record`` over ``write``, and the plumbing of a store in one SQLite file."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol, Self

from juliarun._files import private_file
from juliarun.errors import StoreError
from juliarun.metrics.base import Point
from juliarun.outbox import retry_call

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_micros(ts: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC.

    >>> to_micros(datetime(1970, 1, 1, 0, 0, 1))
    1000000
    """
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - EPOCH) // MICROSECOND


def from_micros(us: int) -> datetime:
    """The UTC time ``us`` microseconds after the epoch.

    >>> from_micros(-1).isoformat()
    '1969-12-31T23:59:59.999999+00:00'
    """
    return EPOCH + timedelta(microseconds=us)


def window_micros(window: timedelta | None) -> int | None:
    """A metric query's window in whole microseconds (``None``: no window); a window shorter
    than a microsecond is refused.

    >>> window_micros(timedelta(minutes=1))
    60000000
    """
    if window is None:
        return None
    micros = window // MICROSECOND
    if micros <= 0:
        raise StoreError(
            f"window must be at least one microsecond, got {window}",
            hint="pass a positive timedelta, or None to aggregate the whole range",
        )
    return micros


class _Closable(Protocol):
    def close(self) -> None: ...


class ClosingContext:
    """``with store:`` closes the store on the way out."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self: _Closable,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _PointWriter(Protocol):
    clock: Callable[[], datetime]

    def write(self, points: Iterable[Point]) -> int: ...


class PointRecorder:
    """``record``, one point through the store's ``write``."""

    def record(
        self: _PointWriter,
        name: str,
        value: float,
        tags: Mapping[str, str] | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Write one point, at ``clock()`` when no timestamp is given."""
        when = timestamp if timestamp is not None else self.clock()
        self.write([Point(name=name, value=float(value), timestamp=when, tags=dict(tags or {}))])


class SqliteStore(ClosingContext):
    """A store in one SQLite file (or ``":memory:"``), WAL mode, one connection behind a lock.

    Subclasses name what they store (``kind``, for messages) and give their ``schema``; errors
    of SQLite become :class:`~juliarun.errors.StoreError`.
    """

    kind: ClassVar[str]
    schema: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], datetime] = utcnow,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = path if str(path) == ":memory:" else Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        try:
            if isinstance(self.path, Path):
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._conn = _connect(str(self.path), busy_timeout)
            self._prepare(self._conn)
            with self._transaction():
                for statement in self.schema:
                    self._conn.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open {self.kind} store {str(path)!r}: {exc}",
                hint=f"check that the directory is writable and the file is a juliarun {self.kind}"
                " store",
            ) from exc

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Set up a new connection before the schema is applied (e.g. register functions)."""

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taking the write lock up front (waits up to ``busy_timeout``)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _guard(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(
                    f"{self.kind} store {str(self.path)!r}: cannot {action}: {exc}",
                    hint="another process may hold the database locked, or the file is damaged",
                ) from exc

    def close(self) -> None:
        """Close the connection; further calls raise :class:`~juliarun.errors.StoreError`."""
        with self._lock:
            self._conn.close()


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting on locks."""
    if path != ":memory:" and not path.startswith("file:"):
        # Mode 0600 (SQLite gives its -wal and -shm files the database's mode): every job's
        # output and metrics are in there.
        with contextlib.suppress(OSError):  # a missing directory fails in connect, below
            private_file(Path(path))
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        _switch_to_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Put the database in WAL mode, retrying while another process holds it locked.

    Changing the journal mode needs an exclusive lock, and SQLite reports "database is locked"
    at once (without its busy handler) when two processes open a new file at the same moment;
    so the switch is retried here until ``busy_timeout`` runs out.
    """

    def locked(exc: BaseException) -> bool:
        text = str(exc)
        return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)

    retry_call(
        lambda: conn.execute("PRAGMA journal_mode = WAL"),
        retry_on=locked,
        delays=(0.01, 0.25),
        seconds=busy_timeout,
    )
