"""The behaviours every :class:`~juliarun.logs.base.LogStore` shares, written once.

A test module runs them against its implementation by subclassing :class:`LogStoreContract`
and providing these fixtures (at module or class level):

- ``store``: an open store on a fresh, empty location (file, index prefix, ...);
- ``make_store``: a factory of further stores on the same location (``make_store()``), as a
  second process would open; every store it makes is closed at teardown;
- ``writer_process``: ``(worker, n) -> (target, args)`` for a ``spawn``-ed process that writes
  ``n`` lines ``f"{worker} line {i}"`` (timestamps increasing with ``i``) from worker ``worker``
  into that location.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from juliarun.errors import StoreError
from juliarun.logs.base import LogLine, LogQuery, LogStore, Stream

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

MakeStore = Callable[[], Any]  # a LogStore that is also its own context manager
WriterProcess = Callable[[str, int], tuple[Callable[..., None], tuple[Any, ...]]]


def line(
    seconds: float,
    message: str,
    *,
    job: str = "job-a",
    worker: str = "w1",
    stream: Stream = "stdout",
    cluster: str = "local",
    tenant: str = "default",
) -> LogLine:
    return LogLine(
        timestamp=T0 + timedelta(seconds=seconds),
        job=job,
        worker=worker,
        stream=stream,
        message=message,
        cluster=cluster,
        tenant=tenant,
    )


def messages(lines: list[LogLine]) -> list[str]:
    return [x.message for x in lines]


class LogStoreContract:
    """The shared behaviours; see the module notes for the fixtures a subclass provides."""

    @pytest.fixture
    def sample(self, store: LogStore) -> list[LogLine]:
        lines = [
            line(0, "starting job", job="job-a", worker="w1"),
            line(1, "hello world!", job="job-a", worker="w2", stream="stderr"),
            line(2, "epoch 1 loss=0.50", job="job-b", worker="w1", cluster="gke"),
            line(3, 'she said "hi" (twice)', job="job-b", worker="w2", tenant="acme"),
            line(4, "epoch 2 loss=0.25", job="job-c", worker="w1", stream="stderr"),
            line(5, "done: world saved", job="job-a", worker="w1"),
        ]
        assert store.write(lines) == len(lines)
        return lines

    # -- shape and round trips ------------------------------------------------------------

    def test_implements_the_protocol(self, store: LogStore) -> None:
        assert isinstance(store, LogStore)

    def test_round_trip_preserves_every_field(self, store: LogStore) -> None:
        original = line(
            1.234567, "ünïcode ✓", job="j", worker="w", stream="stderr", cluster="c", tenant="t"
        )
        store.write([original])
        assert store.query(LogQuery()) == [original]

    def test_naive_timestamps_are_taken_as_utc(self, store: LogStore) -> None:
        naive = LogLine(datetime(2024, 1, 1, 5), "j", "w", "stdout", "m")
        store.write([naive])
        (got,) = store.query(LogQuery(since=datetime(2024, 1, 1, 5, tzinfo=UTC)))
        assert got.timestamp == datetime(2024, 1, 1, 5, tzinfo=UTC)

    def test_write_nothing(self, store: LogStore) -> None:
        assert store.write([]) == 0
        assert store.count(LogQuery()) == 0
        assert store.query(LogQuery()) == []

    def test_order_is_timestamp_then_arrival(self, store: LogStore) -> None:
        store.write([line(5, "late"), line(1, "early-1")])
        store.write([line(1, "early-2"), line(3, "middle")])
        assert messages(store.query(LogQuery())) == ["early-1", "early-2", "middle", "late"]

    def test_reopening_keeps_lines(self, make_store: MakeStore) -> None:
        with make_store() as first:
            first.write([line(0, "kept")])
        with make_store() as second:
            assert messages(second.query(LogQuery())) == ["kept"]

    # -- filters ----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("q", "expected"),
        [
            (LogQuery(), ["starting job", "hello world!", "epoch 1 loss=0.50",
                          'she said "hi" (twice)', "epoch 2 loss=0.25", "done: world saved"]),
            (LogQuery(job="job-a"), ["starting job", "hello world!", "done: world saved"]),
            (LogQuery(jobs=("job-b", "job-c")),
             ["epoch 1 loss=0.50", 'she said "hi" (twice)', "epoch 2 loss=0.25"]),
            (LogQuery(job="job-a", jobs=("job-a", "job-b")),
             ["starting job", "hello world!", "done: world saved"]),
            (LogQuery(job="job-c", jobs=("job-a",)), []),
            (LogQuery(worker="w2"), ["hello world!", 'she said "hi" (twice)']),
            (LogQuery(stream="stderr"), ["hello world!", "epoch 2 loss=0.25"]),
            (LogQuery(cluster="gke"), ["epoch 1 loss=0.50"]),
            (LogQuery(tenant="acme"), ['she said "hi" (twice)']),
            (LogQuery(since=T0 + timedelta(seconds=4)),
             ["epoch 2 loss=0.25", "done: world saved"]),
            (LogQuery(until=T0 + timedelta(seconds=1)), ["starting job"]),
            (LogQuery(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=3)),
             ["hello world!", "epoch 1 loss=0.50"]),
            (LogQuery(job="job-a", worker="w1", stream="stdout"),
             ["starting job", "done: world saved"]),
            (LogQuery(job="nope"), []),
        ],
    )  # fmt: skip
    def test_filters(
        self, store: LogStore, sample: list[LogLine], q: LogQuery, expected: list[str]
    ) -> None:
        assert messages(store.query(q)) == expected
        assert store.count(q) == len(expected)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("world", ["hello world!", "done: world saved"]),
            ("WORLD hello", ["hello world!"]),  # all words, any order, case-folded
            ("hello world!", ["hello world!"]),  # punctuation is not syntax
            ('"hi"', ['she said "hi" (twice)']),  # quotes in user input
            ('said "hi', ['she said "hi" (twice)']),  # an unbalanced quote
            ("(twice) AND OR NOT", []),  # operators are words, not syntax
            ("loss=0.25", ["epoch 2 loss=0.25"]),  # tokens inside one word form a phrase
            ("done:", ["done: world saved"]),
            ("*", []),
            ("NEAR(hello world)", []),
            ("wor", []),  # words, not substrings (use regex for those)
            ("   ", None),  # no words: no text constraint
        ],
    )
    def test_full_text_search(
        self, store: LogStore, sample: list[LogLine], text: str, expected: list[str] | None
    ) -> None:
        got = messages(store.query(LogQuery(text=text)))
        assert got == (messages(sample) if expected is None else expected)

    def test_full_text_combines_with_other_filters(
        self, store: LogStore, sample: list[LogLine]
    ) -> None:
        assert messages(store.query(LogQuery(text="epoch", job="job-c"))) == ["epoch 2 loss=0.25"]
        assert store.count(LogQuery(text="world", worker="w1")) == 1

    @pytest.mark.parametrize(
        ("regex", "expected"),
        [
            (r"loss=0\.\d+", ["epoch 1 loss=0.50", "epoch 2 loss=0.25"]),
            (r"^epoch 2", ["epoch 2 loss=0.25"]),
            (r"wor", ["hello world!", "done: world saved"]),  # substrings
            (r"\(twice\)$", ['she said "hi" (twice)']),
            (r"(?i)HELLO", ["hello world!"]),
            (r"zzz", []),
        ],
    )
    def test_regex_has_python_semantics(
        self, store: LogStore, sample: list[LogLine], regex: str, expected: list[str]
    ) -> None:
        assert messages(store.query(LogQuery(regex=regex))) == expected
        assert store.count(LogQuery(regex=regex)) == len(expected)

    def test_regex_and_text_together(self, store: LogStore, sample: list[LogLine]) -> None:
        q = LogQuery(text="epoch", regex=r"0\.5")
        assert messages(store.query(q)) == ["epoch 1 loss=0.50"]

    @pytest.mark.parametrize("stored", ["empty", "sample"])
    def test_invalid_regex_is_a_store_error(
        self, store: LogStore, stored: str, request: pytest.FixtureRequest
    ) -> None:
        if stored == "sample":
            request.getfixturevalue("sample")
        with pytest.raises(StoreError, match="invalid regular expression") as info:
            store.query(LogQuery(regex="(unclosed"))
        assert info.value.hint
        assert isinstance(info.value.__cause__, re.error)

    # -- limit --------------------------------------------------------------------------------

    def test_limit_returns_most_recent_lines_oldest_first(
        self, store: LogStore, sample: list[LogLine]
    ) -> None:
        assert messages(store.query(LogQuery(limit=2))) == [
            "epoch 2 loss=0.25",
            "done: world saved",
        ]
        assert messages(store.query(LogQuery(job="job-a", limit=2))) == [
            "hello world!",
            "done: world saved",
        ]
        assert store.query(LogQuery(limit=0)) == []
        assert len(store.query(LogQuery(limit=100))) == len(sample)
        assert store.count(LogQuery(limit=2)) == 2
        assert store.count(LogQuery(limit=100)) == len(sample)

    def test_limit_breaks_timestamp_ties_by_arrival(self, store: LogStore) -> None:
        store.write([line(1, f"m{i}") for i in range(5)])
        assert messages(store.query(LogQuery(limit=2))) == ["m3", "m4"]

    def test_negative_limit_is_refused(self, store: LogStore) -> None:
        with pytest.raises(StoreError, match="limit"):
            store.query(LogQuery(limit=-1))

    # -- delete -------------------------------------------------------------------------------

    def test_delete_removes_a_jobs_lines(self, store: LogStore, sample: list[LogLine]) -> None:
        assert store.delete("job-a") == 3
        assert store.delete("job-a") == 0
        assert store.count(LogQuery(job="job-a")) == 0
        assert messages(store.query(LogQuery(text="world"))) == []
        assert store.count(LogQuery()) == 3

    # -- follow -------------------------------------------------------------------------------

    def test_follow_yields_existing_then_new_lines_from_another_writer(
        self, store: LogStore, make_store: MakeStore
    ) -> None:
        store.write([line(0, "old-1"), line(1, "old-2"), line(2, "other", job="job-z")])
        other = make_store()  # a second writer, as a job's supervisor process would be
        sleeps: list[float] = []
        batches = iter(
            [
                [line(3, "new-1"), line(3, "noise", job="job-z")],
                [],
                [line(4, "new-2"), line(5, "new-3")],
            ]
        )

        def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)
            other.write(next(batches, []))

        def stop() -> bool:
            return len(sleeps) >= 3

        got = store.follow(LogQuery(job="job-a"), stop=stop, poll_interval=0.25, sleep=fake_sleep)
        assert messages(list(got)) == ["old-1", "old-2", "new-1", "new-2", "new-3"]
        assert sleeps == [0.25, 0.25, 0.25]

    def test_follow_polls_once_more_after_stop(
        self, store: LogStore, make_store: MakeStore
    ) -> None:
        other = make_store()
        stopped = False

        def fake_sleep(_: float) -> None:
            nonlocal stopped
            other.write([line(9, "written just before stop")])
            stopped = True

        got = list(store.follow(LogQuery(), stop=lambda: stopped, sleep=fake_sleep))
        assert messages(got) == ["written just before stop"]

    def test_follow_applies_limit_to_existing_lines_only(self, store: LogStore) -> None:
        store.write([line(i, f"old-{i}") for i in range(5)])
        polls = 0

        def fake_sleep(_: float) -> None:
            nonlocal polls
            polls += 1
            store.write([line(10 + i, f"new-{i}") for i in range(3)])

        got = store.follow(LogQuery(limit=2), stop=lambda: polls >= 1, sleep=fake_sleep)
        assert messages(list(got)) == ["old-3", "old-4", "new-0", "new-1", "new-2"]

    def test_follow_applies_filters_to_new_lines(self, store: LogStore) -> None:
        polls = 0

        def fake_sleep(_: float) -> None:
            nonlocal polls
            polls += 1
            store.write([line(1, "error: disk full"), line(2, "all good"), line(3, "ERROR again")])

        q = LogQuery(text="error", stream="stdout")
        got = store.follow(q, stop=lambda: polls >= 1, sleep=fake_sleep)
        assert messages(list(got)) == ["error: disk full", "ERROR again"]

    def test_follow_stops_immediately_with_nothing_new(self, store: LogStore) -> None:
        store.write([line(0, "only")])

        def no_sleep(_: float) -> None:
            raise AssertionError("must not sleep when already stopped")

        got = store.follow(LogQuery(), stop=lambda: True, sleep=no_sleep)
        assert messages(list(got)) == ["only"]

    # -- concurrency --------------------------------------------------------------------------

    def test_two_processes_write_concurrently(
        self, make_store: MakeStore, writer_process: WriterProcess
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        procs = []
        for n in range(2):
            target, args = writer_process(f"p{n}", 500)
            procs.append(ctx.Process(target=target, args=args))
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0, 0]
        store = make_store()
        assert store.count(LogQuery()) == 1000
        assert store.count(LogQuery(worker="p0")) == 500
        assert store.count(LogQuery(worker="p1")) == 500
        assert store.count(LogQuery(text="line")) == 1000
        p0 = messages(store.query(LogQuery(worker="p0")))
        assert p0 == [f"p0 line {i}" for i in range(500)]
