"""The embedded log store: one SQLite file in WAL mode with an FTS5 index over messages.

Several processes may use the same file at once (each job's supervisor writes its lines while the
user's process reads them): WAL lets readers proceed while one writer writes, and ``busy_timeout``
makes writers queue for the write lock instead of failing.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from juliarun._store import SqliteStore, from_micros, to_micros
from juliarun.errors import StoreError
from juliarun.logs.base import LogLine, LogQuery, Stream

__all__ = ["SqliteLogStore"]

_SCHEMA_VERSION = 1
_COLUMNS = "seq, ts, cluster, tenant, job, worker, stream, message"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lines (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        tenant TEXT NOT NULL,
        job TEXT NOT NULL,
        worker TEXT NOT NULL,
        stream TEXT NOT NULL,
        message TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS lines_job_ts ON lines (job, ts, seq)",
    "CREATE INDEX IF NOT EXISTS lines_worker_ts ON lines (worker, ts, seq)",
    "CREATE INDEX IF NOT EXISTS lines_ts ON lines (ts, seq)",
    """CREATE VIRTUAL TABLE IF NOT EXISTS lines_fts
        USING fts5(message, content='lines', content_rowid='seq')""",
    """CREATE TRIGGER IF NOT EXISTS lines_ai AFTER INSERT ON lines BEGIN
        INSERT INTO lines_fts (rowid, message) VALUES (new.seq, new.message);
    END""",
    """CREATE TRIGGER IF NOT EXISTS lines_ad AFTER DELETE ON lines BEGIN
        INSERT INTO lines_fts (lines_fts, rowid, message) VALUES ('delete', old.seq, old.message);
    END""",
    """CREATE TRIGGER IF NOT EXISTS lines_au AFTER UPDATE OF message ON lines BEGIN
        INSERT INTO lines_fts (lines_fts, rowid, message) VALUES ('delete', old.seq, old.message);
        INSERT INTO lines_fts (rowid, message) VALUES (new.seq, new.message);
    END""",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)


@functools.lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str, value: str | None) -> bool:
    """SQLite's ``value REGEXP pattern`` calls ``regexp(pattern, value)``."""
    return value is not None and _compile(pattern).search(value) is not None


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression requiring every whitespace-separated word of ``text``.

    Each word is quoted (quotes doubled), so punctuation and FTS5 operators in user input are
    taken literally; ``None`` when ``text`` has no words.

    >>> fts_query('hello world!')
    '"hello" "world!"'
    >>> fts_query('say a"b OR NOT')
    '"say" "a""b" "OR" "NOT"'
    >>> fts_query("   ") is None
    True
    """
    words = text.split()
    if not words:
        return None
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


def _where(q: LogQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("job", q.job),
        ("worker", q.worker),
        ("stream", q.stream),
        ("cluster", q.cluster),
        ("tenant", q.tenant),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if q.jobs:
        clauses.append(f"job IN ({', '.join('?' for _ in q.jobs)})")
        params.extend(q.jobs)
    if q.since is not None:
        clauses.append("ts >= ?")
        params.append(to_micros(q.since))
    if q.until is not None:
        clauses.append("ts < ?")
        params.append(to_micros(q.until))
    if q.text is not None:
        match = fts_query(q.text)
        if match is not None:
            clauses.append("seq IN (SELECT rowid FROM lines_fts WHERE lines_fts MATCH ?)")
            params.append(match)
    if q.regex is not None:
        try:
            _compile(q.regex)
        except re.error as exc:
            raise StoreError(
                f"invalid regular expression {q.regex!r}: {exc}",
                hint="the regex filter takes Python `re` syntax",
            ) from exc
        clauses.append("message REGEXP ?")
        params.append(q.regex)
    if q.limit is not None and q.limit < 0:
        raise StoreError(f"limit must not be negative, got {q.limit}", hint="pass None for all")
    return (" AND ".join(clauses) or "1"), params


def _line(row: tuple[Any, ...]) -> LogLine:
    _seq, ts, cluster, tenant, job, worker, stream, message = row
    return LogLine(
        timestamp=from_micros(ts),
        job=job,
        worker=worker,
        stream=cast(Stream, stream),
        message=message,
        cluster=cluster,
        tenant=tenant,
    )


class SqliteLogStore(SqliteStore):
    """A :class:`~juliarun.logs.base.LogStore` in one SQLite file.

    Timestamps are stored as integer microseconds since the epoch (naive datetimes are taken as
    UTC); ``seq`` numbers lines in arrival order and is never reused, which is what ``follow``
    polls on. ``text`` filters use the FTS5 index: every word must appear as a word (case-folded,
    punctuation ignored, no substrings; use ``regex`` for those). ``limit=n`` returns the most
    recent ``n`` matching lines, still in chronological order. ``job`` and ``jobs`` combine with
    AND. One connection per instance, guarded by a lock, so an instance may be shared by threads.
    ``clock`` is the store's time source (lines carry their own timestamps, so it is not consulted
    for writes).

    >>> from datetime import UTC, datetime
    >>> store = SqliteLogStore(":memory:")
    >>> t = datetime(2024, 1, 1, tzinfo=UTC)
    >>> store.write([LogLine(t, "job-1", "w1", "stdout", "hello, world!")])
    1
    >>> [line.render() for line in store.query(LogQuery(job="job-1", text="world!"))]
    ['2024-01-01T00:00:00+00:00, w1, hello, world!']
    >>> store.close()
    """

    kind = "log"
    schema = _SCHEMA

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.create_function("regexp", 2, _regexp, deterministic=True)

    # -- plumbing ---------------------------------------------------------------------------

    def _select(self, q: LogQuery, *, after: int = 0, upto: int | None = None) -> list[LogLine]:
        where, params = _where(q)
        where += " AND seq > ?"
        params.append(after)
        if upto is not None:
            where += " AND seq <= ?"
            params.append(upto)
        if q.limit is None:
            sql = f"SELECT {_COLUMNS} FROM lines WHERE {where} ORDER BY ts, seq"
        else:
            sql = (
                f"SELECT * FROM (SELECT {_COLUMNS} FROM lines WHERE {where}"
                " ORDER BY ts DESC, seq DESC LIMIT ?) ORDER BY ts, seq"
            )
            params.append(q.limit)
        with self._guard("query lines") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_line(row) for row in rows]

    def _max_seq(self) -> int:
        with self._guard("read the last sequence number") as conn:
            row = conn.execute("SELECT max(seq) FROM lines").fetchone()
        return int(row[0] or 0)

    # -- LogStore -----------------------------------------------------------------------------

    def write(self, lines: Iterable[LogLine]) -> int:
        """Store lines in one transaction; returns how many were stored."""
        rows = [
            (
                to_micros(line.timestamp),
                line.cluster,
                line.tenant,
                line.job,
                line.worker,
                line.stream,
                line.message,
            )
            for line in lines
        ]
        if not rows:
            return 0
        with self._guard("write lines"), self._transaction() as conn:
            conn.executemany(
                "INSERT INTO lines (ts, cluster, tenant, job, worker, stream, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def query(self, q: LogQuery) -> list[LogLine]:
        """Matching lines ordered by timestamp, then arrival; with ``limit=n`` the most recent
        ``n`` of them (still oldest first)."""
        return self._select(q)

    def follow(
        self,
        q: LogQuery,
        *,
        stop: Callable[[], bool],
        poll_interval: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[LogLine]:
        """Yield the lines :meth:`query` returns, then lines stored later, in arrival order.

        Polls every ``poll_interval`` seconds (through ``sleep``) for lines whose ``seq`` is
        past the last one seen. ``stop()`` is checked before each poll; the poll after it turns
        true is the last, so every line stored before then is yielded. ``limit`` applies only to
        the lines already stored.
        """
        last = self._max_seq()
        yield from self._select(q, upto=last)
        unlimited = dataclasses.replace(q, limit=None)
        while True:
            stopping = stop()
            upto = self._max_seq()
            if upto > last:
                new = self._select(unlimited, after=last, upto=upto)
                last = upto
                yield from new
            if stopping:
                return
            sleep(poll_interval)

    def count(self, q: LogQuery) -> int:
        """How many lines match (at most ``limit`` when one is given)."""
        where, params = _where(q)
        with self._guard("count lines") as conn:
            (n,) = conn.execute(f"SELECT count(*) FROM lines WHERE {where}", params).fetchone()
        return int(n) if q.limit is None else min(int(n), q.limit)

    def delete(self, job: str) -> int:
        """Remove every line of ``job`` (and its full-text entries); returns how many."""
        with self._guard("delete lines"), self._transaction() as conn:
            cursor = conn.execute("DELETE FROM lines WHERE job = ?", (job,))
        return cursor.rowcount
