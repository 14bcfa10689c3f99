"""The Elasticsearch log store: daily indices, idempotent bulk shipping and a local spool.

**Indices.** Lines go to ``<prefix>-YYYY.MM.DD`` (the UTC day of the line's timestamp), created on
demand from the composable index template ``<prefix>`` (put idempotently before the first bulk;
its priority grows with the prefix length, so a longer prefix wins over a shorter one that also
matches). One primary shard per day (``follow`` reads per-shard sequence numbers) and
``auto_expand_replicas: 0-1``. Fields: ``@timestamp`` (``date_nanos``, microseconds kept),
``cluster``/``tenant``/``job``/``worker``/``stream`` (``keyword``), ``message`` (``text`` with a
``message.keyword`` subfield, ``ignore_above`` 2048), and ``writer`` (``keyword``) + ``seq``
(``long``): the writing store instance and its line counter, which order lines of equal timestamp
(the order is ``@timestamp``, ``writer``, ``seq``: arrival order within a writer) and make the
document id ``<writer>.<seq>``.

**Exactly once.** Every line gets its id before its first attempt and is sent with the bulk
``create`` action: a retried bulk whose first attempt was stored (a timeout, a crash between
shipping and forgetting a spooled line) meets ``409`` for those lines, which counts as success.
Per-item results are inspected: ``429`` and ``5xx`` items are retried (with backoff, through the
injected ``sleep``), as are whole requests refused with those statuses or a connection error; a
request that times out goes straight to the spool (the drainer retries it later, without blocking
the writer again); any other item error (a mapping error) is logged (the ``juliarun.logs.
elasticsearch`` logger) with the line, counted in :attr:`rejected`, kept under the spool's
``rejected/`` and not retried.

**Reads are whole or fail.** Searches ask for no partial results and a count that some shards
did not answer is not taken: a shard that is not started yet (the daily index the first lines of
a day just created, indices recovering after a restart) makes Elasticsearch answer ``503``, which
reads retry, like ``429``, for up to ``read_retry`` seconds before failing with
:class:`~juliarun.errors.StoreError`. An index of the pattern lacking the sort fields (not made
from the template) sorts as empty rather than failing the search.

**Write-through, then the spool.** Shipping, retries and the spool are
:class:`juliarun.outbox.Outbox`'s (its ``send``), as for the InfluxDB metric store. ``write``
ships its lines (in bulks of ``bulk_size``) before it returns, so a line ``write`` accepted is in
Elasticsearch or in the spool on disk, never only in memory: the local supervisor publishes a job
as finished right after its last ``write``, and a ``wait`` followed by ``tail`` must see every
line. Memory is bounded by ``bulk_size`` (an iterable is consumed a bulk at a time; callers
batch, as the supervisor does, up to 1000 lines). When retries are exhausted, the unsent lines
are appended to this writer's spool, a directory ``<spool>/<host>-<pid>-<random>/`` of
``.ndjson`` files (one per bulk, fsync'd, renamed into place); from then on lines go to the spool
too, so the writer's lines reach Elasticsearch in order, and a background thread drains the
spool, oldest first, as soon as Elasticsearch answers (retrying every ``retry_interval``
seconds). ``close`` drains for at most ``close_timeout`` seconds and leaves the rest in the
spool.

**Dead writers' spools.** A writer holds an exclusive ``flock`` on its spool directory's
``lock`` file for its lifetime (the kernel drops it when the process dies). The background thread
of *every* store instance, on start and every ``adopt_interval`` seconds, tries that lock on the
other spool directories; one it obtains belongs to a closed or dead writer, and it drains it (the
ids in the spool keep this idempotent) and removes it. So a supervisor that exited during an
outage is drained by the next juliarun process that opens the store: the next job's supervisor,
``juliarun tail``/``search``, a flow.

**Auth.** ``username`` + ``password`` (basic auth) or ``api_key``; none by default.

**Reads.** ``query``/``count``/``follow`` refresh the store's indices first, so a line written by
any process before the read started is seen (a refresh of an unchanged index costs a round trip;
``bench/es_shipping.py`` measures it). ``text``: every whitespace-separated word must appear, each
word as a phrase of its tokens (``match_phrase``; the standard analyzer), like the SQLite store's
FTS5 query. ``regex``: the other filters run in Elasticsearch and Python's :func:`re.search` is
applied to each returned message, so the semantics are exactly the SQLite store's (Lucene's
``regexp`` is anchored and lacks ``\\d``, ``(?i)``, lookarounds); a regex query therefore reads
every line the other filters match. ``limit=n``: the ``n`` most recent, oldest first.

**Follow.** Each poll reads the local checkpoint of every index's primary shard (all operations up
to it are applied), refreshes, then fetches the lines whose ``_seq_no`` lies between the previous
poll's checkpoint and this one. Unlike polling on timestamps, this sees late lines too (a drained
spool, a writer whose clock lags) and never yields a line twice.

**Deleting.** This distribution has no ``_delete_by_query``: ``delete(job)`` pages through the
job's lines with ``search_after`` and bulk-deletes them by id; the job's lines still in this
writer's spool are dropped too (lines in a dead writer's spool arrive later, when it is drained).

>>> ElasticsearchLogStore.index_for(datetime(2024, 3, 1, 23, 59, tzinfo=UTC), "juliarun-logs")
'juliarun-logs-2024.03.01'
>>> ElasticsearchLogStore.text_query("loss=0.25 done!")
[{'match_phrase': {'message': 'loss=0.25'}}, {'match_phrase': {'message': 'done!'}}]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar, cast

from elasticsearch import ApiError, ConnectionTimeout, Elasticsearch, TransportError

from juliarun._store import ClosingContext
from juliarun.errors import StoreError
from juliarun.logs.base import LogLine, LogQuery, Stream
from juliarun.outbox import (
    DELIVERED,
    Delivered,
    DeliveryError,
    Outbox,
    failure_logger,
    retry_call,
)

_T = TypeVar("_T")

__all__ = ["ElasticsearchLogStore", "index_template"]

log = logging.getLogger(__name__)

TEMPLATE_VERSION = 1
PAGE = 5000
MESSAGE_KEYWORD_MAX = 2048

# index -> (index uuid, local checkpoint of its primary shard)
_Marks = dict[str, tuple[str, int]]
# index -> (after, upto]: the _seq_no range to read
_Ranges = dict[str, tuple[int, int]]


def _retriable(status: int) -> bool:
    return status == 429 or status >= 500


@functools.lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise StoreError(
            f"invalid regular expression {pattern!r}: {exc}",
            hint="the regex filter takes Python `re` syntax",
        ) from exc


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _iso(ts: datetime) -> str:
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def index_template(prefix: str) -> dict[str, Any]:
    """The template of ``<prefix>-*`` indices, as ``put_index_template`` keywords.

    >>> index_template("juliarun-logs")["template"]["mappings"]["properties"]["job"]
    {'type': 'keyword'}
    """
    keyword = {"type": "keyword"}
    return {
        "index_patterns": [f"{prefix}-*"],
        "priority": 100 + len(prefix),
        "template": {
            "settings": {
                "number_of_shards": 1,
                "auto_expand_replicas": "0-1",
                "refresh_interval": "1s",
            },
            "mappings": {
                "dynamic": False,
                "properties": {
                    "@timestamp": {"type": "date_nanos"},
                    "cluster": keyword,
                    "tenant": keyword,
                    "job": keyword,
                    "worker": keyword,
                    "stream": keyword,
                    "message": {
                        "type": "text",
                        "fields": {
                            "keyword": {"type": "keyword", "ignore_above": MESSAGE_KEYWORD_MAX}
                        },
                    },
                    "writer": keyword,
                    "seq": {"type": "long"},
                },
            },
        },
        "meta": {"managed_by": "juliarun", "version": TEMPLATE_VERSION},
    }


class ElasticsearchLogStore(ClosingContext):
    """A :class:`~juliarun.logs.base.LogStore` in Elasticsearch (see the module docstring).

    ``url``: the cluster; ``spool``: the directory for this host's spool files (shared by every
    store instance on the host, e.g. ``$JULIARUN_HOME/spool/logs``); ``index_prefix``: index and
    template name prefix (prefixes in one cluster must not extend each other with ``-``);
    ``bulk_size``: lines per bulk request; ``max_retries``: retries of a bulk's retriable
    failures before its lines are spooled; ``retry_interval``: seconds between attempts to drain
    the spool while Elasticsearch is unreachable; ``request_timeout``: seconds per request;
    ``close_timeout``: the longest ``close`` spends draining; ``adopt_interval``: how often dead
    writers' spools are looked for; ``read_retry``: how long a read (search, count, refresh)
    retries while Elasticsearch answers 429 or 503. ``clock`` (monotonic seconds) and ``sleep``
    drive backoff and deadlines.
    """

    def __init__(
        self,
        url: str,
        *,
        spool: Path | str,
        index_prefix: str = "juliarun-logs",
        bulk_size: int = 1000,
        max_retries: int = 3,
        retry_interval: float = 1.0,
        request_timeout: float = 10.0,
        close_timeout: float = 10.0,
        adopt_interval: float = 5.0,
        read_retry: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", index_prefix):
            raise StoreError(
                f"invalid index prefix {index_prefix!r}",
                hint="use lowercase letters, digits, '.', '_' and '-'",
            )
        if bulk_size < 1:
            raise StoreError(f"bulk_size must be at least 1, got {bulk_size}")
        self.url = url
        self.prefix = index_prefix
        self.pattern = f"{index_prefix}-*"
        self.spool_dir = Path(spool)
        self.bulk_size = bulk_size
        self.read_retry = read_retry
        self.clock = clock
        self.sleep = sleep
        self.writer = secrets.token_hex(6)
        self._es = Elasticsearch(
            url,
            request_timeout=request_timeout,
            max_retries=0,
            retry_on_timeout=False,
            basic_auth=(username, password or "") if username is not None else None,
            api_key=api_key,
        )
        self._seq = 0
        self._template_ready = False
        self._write_lock = threading.Lock()  # one write() at a time: a writer's order
        self._closed = False
        self._outbox = Outbox(
            self.spool_dir,
            self._deliver,
            suffix=".ndjson",
            batch_size=bulk_size,
            max_buffer=bulk_size,  # write-through: nothing is buffered
            max_retries=max_retries,
            retry_delays=(0.1, 2.0),
            probe_delays=(retry_interval, retry_interval),
            close_timeout=close_timeout,
            adopt_interval=adopt_interval,
            on_failure=failure_logger(log, "Elasticsearch", "log lines"),
            clock=clock,
            sleep=sleep,
            name="log",
        )

    @property
    def rejected(self) -> int:
        """Lines Elasticsearch refused for good (each logged, and kept under the spool's
        ``rejected/``)."""
        return self._outbox.stats.rejected

    @property
    def spooled(self) -> int:
        """Lines this instance appended to its spool."""
        return self._outbox.stats.spooled

    # -- naming and documents ---------------------------------------------------------------

    @staticmethod
    def index_for(ts: datetime, prefix: str) -> str:
        """The daily index of a line stamped ``ts`` (naive is UTC)."""
        return f"{prefix}-{_utc(ts):%Y.%m.%d}"

    @staticmethod
    def text_query(text: str) -> list[dict[str, Any]]:
        """One ``match_phrase`` per whitespace-separated word of ``text`` (all must match)."""
        return [{"match_phrase": {"message": word}} for word in text.split()]

    def template(self) -> dict[str, Any]:
        """The index template body (``put_index_template`` keywords)."""
        return index_template(self.prefix)

    def _item(self, line: LogLine) -> str:
        """The outbox record of ``line``: ``<index> <document id> <document JSON>``."""
        seq = self._seq
        self._seq += 1
        doc = {
            "@timestamp": _iso(line.timestamp),
            "cluster": line.cluster,
            "tenant": line.tenant,
            "job": line.job,
            "worker": line.worker,
            "stream": line.stream,
            "message": line.message,
            "writer": self.writer,
            "seq": seq,
        }
        index = self.index_for(line.timestamp, self.prefix)
        return f"{index} {self.writer}.{seq} {json.dumps(doc, ensure_ascii=False)}"

    @staticmethod
    def _line(source: Mapping[str, Any]) -> LogLine:
        return LogLine(
            timestamp=datetime.fromisoformat(source["@timestamp"]),
            job=source["job"],
            worker=source["worker"],
            stream=cast(Stream, source["stream"]),
            message=source["message"],
            cluster=source["cluster"],
            tenant=source["tenant"],
        )

    # -- shipping ---------------------------------------------------------------------------

    def _ensure_template(self) -> None:
        if self._template_ready:
            return
        try:
            self._es.indices.put_index_template(name=self.prefix, **self.template())
        except ApiError as exc:
            if _retriable(exc.meta.status):
                raise
            # Not allowed or not accepted: ship anyway (indices then get dynamic mappings).
            log.warning("cannot put index template %s: %s", self.prefix, exc)
        self._template_ready = True

    def _deliver(self, records: list[str], timeout: float | None) -> Delivered:
        """Bulk-create one batch of records (``<index> <id> <document>``): the outbox's
        ``deliver``. Lines already stored (``409``) count as stored; ``429``/``5xx`` items come
        back to be sent again; other refused items are logged. A request that times out is not
        retried in place: the server is struggling, so the lines go to the spool."""
        es = self._es if timeout is None else self._es.options(request_timeout=max(timeout, 0.1))
        body: list[str] = []
        for record in records:
            index, doc_id, doc = record.split(" ", 2)
            body.append(json.dumps({"create": {"_index": index, "_id": doc_id}}))
            body.append(doc)
        try:
            self._ensure_template()
            response = es.bulk(operations=cast(Any, body))  # NDJSON lines
        except ApiError as exc:
            status = exc.meta.status
            raise DeliveryError(
                StoreError(f"Elasticsearch at {self.url}: HTTP {status}: {exc.message}"),
                retriable=_retriable(status),
            ) from exc
        except ConnectionTimeout as exc:
            raise DeliveryError(exc, retriable=True, in_place=False) from exc
        except TransportError as exc:  # connection refused or reset
            raise DeliveryError(exc, retriable=True) from exc
        retry: list[str] = []
        rejected: list[tuple[str, str]] = []
        for record, result in zip(records, response["items"], strict=True):
            outcome = result["create"]
            status = int(outcome["status"])
            if status < 300 or status == 409:  # 409: stored by an earlier attempt
                continue
            if _retriable(status):
                retry.append(record)
            else:
                error = outcome.get("error", {})
                reason = f"{status} {error.get('type')}: {error.get('reason')}"
                index, _id, doc = record.split(" ", 2)
                log.error("Elasticsearch refused a log line for %s (%s): %s", index, reason, doc)
                rejected.append((record, reason))
        return Delivered(retry, rejected) if retry or rejected else DELIVERED

    def write(self, lines: Iterable[LogLine]) -> int:
        """Ship ``lines`` (spooling what cannot be shipped now); returns how many were accepted
        (all but those Elasticsearch refused for good)."""
        accepted = 0
        it = iter(lines)
        with self._write_lock:
            if self._closed:
                raise StoreError("the Elasticsearch log store is closed")
            while chunk := list(islice(it, self.bulk_size)):
                records = [self._item(line) for line in chunk]
                try:
                    accepted += len(records) - self._outbox.send(records)
                except OSError as exc:
                    raise StoreError(
                        f"cannot spool {len(records)} log lines to {self.spool_dir}: {exc}",
                        hint="free disk space under the spool directory; Elasticsearch is"
                        " unreachable",
                    ) from exc
        return accepted

    def backlog(self) -> int:
        """Lines of this writer waiting in its spool."""
        return self._outbox.backlog()

    # -- reading ----------------------------------------------------------------------------

    def _guard(self, action: str) -> contextlib.AbstractContextManager[None]:
        return _guard(self.url, action)

    def _read(self, action: str, call: Callable[[], _T]) -> _T:
        """A read request, retried for up to ``read_retry`` seconds while Elasticsearch answers
        429 or 503 — busy, or shards not yet started (a daily index that the first lines just
        created, indices recovering after a restart); other errors fail at once."""

        def attempt() -> _T:
            with self._guard(action):
                result = call()
            shards = _get(result, "_shards") or {}
            if shards.get("failed"):
                # Some shards answered, some did not: an answer that may miss lines is not one.
                raise StoreError(
                    f"Elasticsearch at {self.url}: cannot {action}: {shards['failed']} of "
                    f"{shards.get('total', '?')} shards failed (503: not started yet?)",
                    hint="check the log indices' health (GET _cluster/health?level=indices)",
                ) from _PartialResultsError()
            return result

        def transient(exc: BaseException) -> bool:
            cause = exc.__cause__
            return isinstance(exc, StoreError) and (
                isinstance(cause, _PartialResultsError)
                or (isinstance(cause, ApiError) and cause.status_code in {429, 503})
            )

        return retry_call(
            attempt,
            retry_on=transient,
            delays=(0.05, 1.0),
            seconds=self.read_retry,
            clock=self.clock,
            sleep=self.sleep,
        )

    def refresh(self) -> None:
        """Make every line stored so far visible to searches."""
        self._read(
            "refresh the log indices",
            lambda: self._es.indices.refresh(
                index=self.pattern, ignore_unavailable=True, allow_no_indices=True
            ),
        )

    def _filters(self, q: LogQuery) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = []
        for name, value in (
            ("job", q.job),
            ("worker", q.worker),
            ("stream", q.stream),
            ("cluster", q.cluster),
            ("tenant", q.tenant),
        ):
            if value is not None:
                filters.append({"term": {name: value}})
        if q.jobs:
            filters.append({"terms": {"job": list(q.jobs)}})
        span: dict[str, str] = {}
        if q.since is not None:
            span["gte"] = _iso(q.since)
        if q.until is not None:
            span["lt"] = _iso(q.until)
        if span:
            filters.append({"range": {"@timestamp": span}})
        if q.text is not None:
            filters.extend(self.text_query(q.text))
        if q.regex is not None:
            _compile(q.regex)
        if q.limit is not None and q.limit < 0:
            raise StoreError(f"limit must not be negative, got {q.limit}", hint="pass None for all")
        return filters

    @staticmethod
    def _ranges_filter(ranges: _Ranges) -> dict[str, Any]:
        return {
            "bool": {
                "should": [
                    {
                        "bool": {
                            "filter": [
                                {"term": {"_index": index}},
                                {"range": {"_seq_no": {"gt": after, "lte": upto}}},
                            ]
                        }
                    }
                    for index, (after, upto) in ranges.items()
                ],
                "minimum_should_match": 1,
            }
        }

    def _scan(
        self, filters: list[dict[str, Any]], *, newest_first: bool, source: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Every matching hit, in (timestamp, writer, seq) order, a page at a time."""
        order = "desc" if newest_first else "asc"
        # unmapped_type: an index of the pattern without these fields (not made from the
        # template) sorts as empty instead of failing the search.
        sort = [
            {"@timestamp": {"order": order, "unmapped_type": "date"}},
            {"writer": {"order": order, "unmapped_type": "keyword"}},
            {"seq": {"order": order, "unmapped_type": "long"}},
        ]
        after: list[Any] | None = None
        while True:
            page = self._read(
                "search the log indices",
                functools.partial(
                    self._es.search,
                    index=self.pattern,
                    query={"bool": {"filter": filters}},
                    sort=sort,
                    size=PAGE,
                    search_after=after,
                    source=source,
                    ignore_unavailable=True,
                    allow_no_indices=True,
                    allow_partial_search_results=False,
                    track_total_hits=False,
                ),
            )
            hits = page["hits"]["hits"]
            yield from hits
            if len(hits) < PAGE:
                return
            after = hits[-1]["sort"]

    def _select(self, q: LogQuery, ranges: _Ranges | None = None) -> list[LogLine]:
        filters = self._filters(q)
        if ranges is not None:
            if not ranges:
                return []
            filters.append(self._ranges_filter(ranges))
        pattern = None if q.regex is None else _compile(q.regex)
        if q.limit == 0:
            return []
        newest_first = q.limit is not None
        lines: list[LogLine] = []
        for hit in self._scan(filters, newest_first=newest_first):
            line = self._line(hit["_source"])
            if pattern is not None and pattern.search(line.message) is None:
                continue
            lines.append(line)
            if q.limit is not None and len(lines) >= q.limit:
                break
        if newest_first:
            lines.reverse()
        return lines

    def query(self, q: LogQuery) -> list[LogLine]:
        """Matching lines ordered by timestamp, then arrival within a writer; with
        ``limit=n`` the most recent ``n`` (still oldest first)."""
        self._filters(q)  # bad input fails before any request
        self.refresh()
        return self._select(q)

    def count(self, q: LogQuery) -> int:
        """How many lines match (at most ``limit`` when one is given)."""
        filters = self._filters(q)
        self.refresh()
        if q.regex is not None:
            pattern = _compile(q.regex)
            n = sum(
                1
                for hit in self._scan(filters, newest_first=False)
                if pattern.search(hit["_source"]["message"])
            )
        else:
            n = int(
                self._read(
                    "count log lines",
                    lambda: self._es.count(
                        index=self.pattern,
                        query={"bool": {"filter": filters}},
                        ignore_unavailable=True,
                        allow_no_indices=True,
                    ),
                )["count"]
            )
        return n if q.limit is None else min(n, q.limit)

    def _marks(self) -> _Marks:
        """Each index's uuid and the local checkpoint of its primary shard."""
        stats = self._read(
            "read the log indices' checkpoints",
            lambda: self._es.indices.stats(
                index=self.pattern,
                level="shards",
                metric="docs",
                filter_path="indices.*.uuid,indices.*.shards.*.routing.primary,"
                "indices.*.shards.*.seq_no.local_checkpoint",
            ),
        )
        marks: _Marks = {}
        for index, info in (stats.get("indices") or {}).items():
            checkpoint = -1
            for copies in info.get("shards", {}).values():
                for copy in copies:
                    if copy.get("routing", {}).get("primary"):
                        checkpoint = int(copy["seq_no"]["local_checkpoint"])
            marks[index] = (info["uuid"], checkpoint)
        return marks

    def follow(
        self,
        q: LogQuery,
        *,
        stop: Callable[[], bool],
        poll_interval: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[LogLine]:
        """Yield the lines :meth:`query` returns, then lines stored later.

        Polls every ``poll_interval`` seconds (through ``sleep``) for lines past each index's
        last seen checkpoint (see the module docstring); ``stop()`` is checked before each poll
        and the poll after it turns true is the last, so every line stored before then is
        yielded. ``limit`` applies only to the lines already stored.
        """
        self._filters(q)
        marks = self._marks()
        self.refresh()
        yield from self._select(q, {i: (-1, cp) for i, (_u, cp) in marks.items()})
        unlimited = dataclasses.replace(q, limit=None)
        while True:
            stopping = stop()
            now = self._marks()
            ranges: _Ranges = {}
            for index, (uuid, checkpoint) in now.items():
                seen = marks.get(index)
                after = seen[1] if seen is not None and seen[0] == uuid else -1
                if checkpoint > after:
                    ranges[index] = (after, checkpoint)
            if ranges:
                self.refresh()
                new = self._select(unlimited, ranges)
                marks = now
                yield from new
            else:
                marks = now
            if stopping:
                return
            sleep(poll_interval)

    # -- deleting ---------------------------------------------------------------------------

    def delete(self, job: str) -> int:
        """Remove every line of ``job`` (including those in this writer's spool); returns how
        many were removed from Elasticsearch."""
        self._outbox.discard(lambda record: _job_of(record) != job)
        self.refresh()
        removed = 0
        batch: list[str] = []

        def flush() -> int:
            with self._guard("delete log lines"):
                response = self._es.bulk(operations=cast(Any, batch))
            batch.clear()
            return sum(1 for r in response["items"] if r["delete"].get("result") == "deleted")

        for hit in self._scan([{"term": {"job": job}}], newest_first=False, source=False):
            batch.append(json.dumps({"delete": {"_index": hit["_index"], "_id": hit["_id"]}}))
            if len(batch) >= PAGE:
                removed += flush()
        if batch:
            removed += flush()
        self.refresh()
        return removed

    # -- lifecycle --------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Drain this writer's spool for at most ``timeout`` (default ``close_timeout``)
        seconds, then release it: what is left is drained by the next store that starts."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
        self._outbox.close(timeout)
        self._es.close()


def _job_of(record: str) -> str:
    return str(json.loads(record.split(" ", 2)[2])["job"])


class _PartialResultsError(Exception):
    """A search or count that some shards did not answer."""


def _get(response: Any, key: str) -> Any:
    """``response[key]`` of an API response (or a plain mapping); ``None`` when absent."""
    try:
        return response[key]
    except (KeyError, TypeError):
        return None


@contextlib.contextmanager
def _guard(url: str, action: str) -> Iterator[None]:
    try:
        yield
    except (ApiError, TransportError) as exc:
        raise StoreError(
            f"Elasticsearch at {url}: cannot {action}: {exc}",
            hint="check that Elasticsearch is up and JULIARUN_ES_URL points at it",
        ) from exc
