"""The InfluxDB metric store against the real InfluxDB 1.8 server: the SQLite store's query
semantics, the spool, dedup, a metric recorded from a Julia job, and an outage in the middle of
a stream of writes."""

from __future__ import annotations

import os
import subprocess
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import juliarun
from juliarun.errors import StoreError
from juliarun.metrics import open_metric_store
from juliarun.metrics.base import MetricQuery, MetricStore, Point, Row
from juliarun.metrics.influxdb import InfluxMetricStore, WriteFailure
from tests.integration.fixtures._service import env
from tests.integration.fixtures.influxdb import influxql
from tests.unit.local_jobs import eventually

pytestmark = pytest.mark.influxdb

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)  # a multiple of every window used below
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens there: every write fails to connect


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_store(bucket: str, spool: Path, **kwargs: Any) -> InfluxMetricStore:
    return InfluxMetricStore(
        kwargs.pop("url", env("JULIARUN_INFLUX_URL")),
        env("JULIARUN_INFLUX_TOKEN") or ":",
        env("JULIARUN_INFLUX_ORG") or "-",
        bucket,
        spool=spool,
        **kwargs,
    )


def count_in(bucket: str, name: str) -> int:
    """Points of ``name`` in ``bucket``, counted by InfluxQL (independently of the store)."""
    database = bucket.split("/", maxsplit=1)[0]
    body = influxql(f'SELECT count("value") FROM "{database}"."autogen"."{name}"')
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def spooled_files(spool: Path) -> list[Path]:
    return sorted(p for p in spool.glob("*/*.lp") if p.parent.name != "rejected")


@pytest.fixture
def store(influx_bucket: str, tmp_path: Path) -> Iterator[InfluxMetricStore]:
    s = make_store(influx_bucket, tmp_path / "spool", clock=lambda: at(1000))
    yield s
    s.close()


# cpu points: (seconds after T0, value, worker, job) -- the same as the SQLite store's tests
CPU = [
    (0, 1.0, "w1", "a"),
    (10, 3.0, "w1", "a"),
    (20, 5.0, "w2", "a"),
    (59, 7.0, "w2", "b"),
    (60, 2.0, "w1", "b"),
    (61, 4.0, "w1", "a"),
    (130, 10.0, "w2", "a"),
    (150, 6.0, "w1", "a"),
]


@pytest.fixture
def cpu(store: InfluxMetricStore) -> InfluxMetricStore:
    points = [Point("cpu", v, at(s), {"worker": w, "job": j}) for s, v, w, j in CPU]
    points += [Point("mem", 100.0, at(0), {"worker": "w1", "job": "a"})]
    assert store.write(points) == len(points)
    return store


def rows(store: InfluxMetricStore, **kwargs: Any) -> list[tuple[Any, ...]]:
    """(seconds after T0, group, value) of each row."""
    result = store.query(MetricQuery("cpu", **kwargs))
    return [((r.start - T0).total_seconds(), dict(r.group), r.value) for r in result]


# -- the SQLite store's semantics -----------------------------------------------------------


def test_implements_the_protocol_and_is_registered(influx_bucket: str, tmp_path: Path) -> None:
    config = {
        "kind": "influxdb",
        "url": env("JULIARUN_INFLUX_URL"),
        "token": env("JULIARUN_INFLUX_TOKEN") or ":",
        "org": env("JULIARUN_INFLUX_ORG") or "-",
        "bucket": influx_bucket,
        "spool": str(tmp_path / "spool"),
    }
    store = open_metric_store(config)
    try:
        assert isinstance(store, InfluxMetricStore)
        assert isinstance(store, MetricStore)
        store.record("x", 2.0, {"k": "v"}, at(0))
        assert store.query(MetricQuery("x")) == [Row(at(0), {}, 2.0)]
    finally:
        store.close()


def test_record_uses_the_clock_without_a_timestamp(store: InfluxMetricStore) -> None:
    store.record("loss", 0.5)
    store.record("loss", 0.25, {"epoch": "2"}, at(5))
    result = store.query(MetricQuery("loss", agg="count", group_by=("epoch",)))
    assert result == [Row(at(1000), {"epoch": ""}, 1.0), Row(at(5), {"epoch": "2"}, 1.0)]


def test_record_accepts_ints(store: InfluxMetricStore) -> None:
    store.record("n", 3, timestamp=at(0))
    assert store.query(MetricQuery("n", agg="sum")) == [Row(at(0), {}, 3.0)]


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        ("mean", (1 + 3 + 5 + 7 + 2 + 4 + 10 + 6) / 8),
        ("sum", 38.0),
        ("max", 10.0),
        ("min", 1.0),
        ("count", 8.0),
        ("last", 6.0),
    ],
)
def test_whole_range_aggregates(cpu: InfluxMetricStore, agg: str, expected: float) -> None:
    assert rows(cpu, agg=agg) == [(0.0, {}, pytest.approx(expected))]


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        # windows [0,60): 1,3,5,7  [60,120): 2,4  [120,180): 10,6
        ("mean", [4.0, 3.0, 8.0]),
        ("sum", [16.0, 6.0, 16.0]),
        ("max", [7.0, 4.0, 10.0]),
        ("min", [1.0, 2.0, 6.0]),
        ("count", [4.0, 2.0, 2.0]),
        ("last", [7.0, 4.0, 6.0]),
    ],
)
def test_windowed_aggregates(cpu: InfluxMetricStore, agg: str, expected: list[float]) -> None:
    got = rows(cpu, agg=agg, window=timedelta(minutes=1))
    assert got == [
        (s, {}, pytest.approx(v)) for s, v in zip([0.0, 60.0, 120.0], expected, strict=True)
    ]


def test_windows_are_aligned_to_the_epoch(store: InfluxMetricStore) -> None:
    base = datetime(2024, 1, 1, 0, 0, 7, tzinfo=UTC)
    store.write([Point("x", 1.0, base), Point("x", 2.0, base + timedelta(seconds=5))])
    result = store.query(MetricQuery("x", window=timedelta(seconds=10), agg="count"))
    assert [(r.start.second, r.value) for r in result] == [(0, 1.0), (10, 1.0)]


def test_window_start_is_the_windows_even_when_since_cuts_it(cpu: InfluxMetricStore) -> None:
    # Flux clamps the first window to `since`; the row still starts where the window does
    got = rows(cpu, since=at(20), window=timedelta(minutes=1), agg="sum", until=at(150))
    assert got == [(0.0, {}, 12.0), (60.0, {}, 6.0), (120.0, {}, 10.0)]


def test_points_before_the_epoch(store: InfluxMetricStore) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    store.write([Point("x", 1.0, epoch - timedelta(seconds=1)), Point("x", 2.0, epoch)])
    # stored and aggregated over the whole range ...
    assert store.query(MetricQuery("x", agg="sum")) == [Row(epoch - timedelta(seconds=1), {}, 3.0)]
    # ... but InfluxDB 1.8's windows start at the epoch: refused rather than silently empty
    assert store.query(MetricQuery("x", window=timedelta(seconds=10))) == [Row(epoch, {}, 2.0)]
    with pytest.raises(StoreError, match="before 1970"):
        store.query(MetricQuery("x", window=timedelta(seconds=10), since=epoch - timedelta(1)))


def test_group_by_one_tag(cpu: InfluxMetricStore) -> None:
    # w1: 1,3,2,4,6 (first at 0)   w2: 5,7,10 (first at 20)
    assert rows(cpu, group_by=("worker",)) == [
        (0.0, {"worker": "w1"}, pytest.approx(16 / 5)),
        (20.0, {"worker": "w2"}, pytest.approx(22 / 3)),
    ]


@pytest.mark.parametrize("agg", ["last", "max"])
def test_group_by_with_selectors(cpu: InfluxMetricStore, agg: str) -> None:
    expected = {"last": (6.0, 10.0), "max": (6.0, 10.0)}[agg]
    assert rows(cpu, group_by=("worker",), agg=agg) == [
        (0.0, {"worker": "w1"}, expected[0]),
        (20.0, {"worker": "w2"}, expected[1]),
    ]


def test_group_by_two_tags_with_windows(cpu: InfluxMetricStore) -> None:
    got = rows(cpu, group_by=("job", "worker"), window=timedelta(minutes=1), agg="sum")
    assert got == [
        (0.0, {"job": "a", "worker": "w1"}, 4.0),  # 1 + 3
        (60.0, {"job": "a", "worker": "w1"}, 4.0),
        (120.0, {"job": "a", "worker": "w1"}, 6.0),
        (0.0, {"job": "a", "worker": "w2"}, 5.0),
        (120.0, {"job": "a", "worker": "w2"}, 10.0),
        (60.0, {"job": "b", "worker": "w1"}, 2.0),
        (0.0, {"job": "b", "worker": "w2"}, 7.0),
    ]  # fmt: skip


def test_windowed_last_per_group(cpu: InfluxMetricStore) -> None:
    got = rows(cpu, group_by=("job",), window=timedelta(minutes=1), agg="last")
    # job a: [0,60) 1,3,5 -> 5; [60,120) 4; [120,180) 10,6 -> 6.  job b: 7; 2
    assert got == [
        (0.0, {"job": "a"}, 5.0),
        (60.0, {"job": "a"}, 4.0),
        (120.0, {"job": "a"}, 6.0),
        (0.0, {"job": "b"}, 7.0),
        (60.0, {"job": "b"}, 2.0),
    ]


def test_group_by_missing_tag_is_the_empty_group(store: InfluxMetricStore) -> None:
    store.write([Point("x", 1.0, at(0), {"gpu": "0"}), Point("x", 5.0, at(1))])
    result = store.query(MetricQuery("x", group_by=("gpu",)))
    assert result == [Row(at(1), {"gpu": ""}, 5.0), Row(at(0), {"gpu": "0"}, 1.0)]
    # an empty tag value is no tag at all, and filtering on "" finds the points without it
    store.write([Point("x", 2.0, at(2), {"gpu": ""})])
    assert store.query(MetricQuery("x", tags={"gpu": ""}, agg="sum")) == [Row(at(1), {}, 7.0)]


def test_tag_filter_requires_every_pair(cpu: InfluxMetricStore) -> None:
    assert rows(cpu, tags={"worker": "w2"}, agg="sum") == [(20.0, {}, 22.0)]
    assert rows(cpu, tags={"worker": "w1", "job": "b"}, agg="sum") == [(60.0, {}, 2.0)]
    assert rows(cpu, tags={"worker": "w3"}) == []
    assert rows(cpu, tags={"absent": "x"}) == []


def test_tag_keys_and_values_with_awkward_characters(store: InfluxMetricStore) -> None:
    tags = {
        'we"ird': 'va"l',
        "dot.ted": "2",
        "back\\slash": "c:\\dir",
        "ü ber": "a b,c=d",
        "dollar${x}": "${y}",
    }
    store.write(
        [Point("odd name, really", 1.0, at(0), tags), Point("odd name, really", 2.0, at(1))]
    )
    for key, value in tags.items():
        got = store.query(MetricQuery("odd name, really", tags={key: value}, agg="sum"))
        assert got == [Row(at(0), {}, 1.0)], key
        groups = [r.group for r in store.query(MetricQuery("odd name, really", group_by=(key,)))]
        assert groups == [{key: ""}, {key: value}], key


@pytest.mark.parametrize(
    ("name", "tags", "rule"),
    [
        ("x", {"k": "ends\\"}, "backslash"),
        ("x", {"k": "a\\,b"}, "backslash"),
        ("x\ny", {}, "newline"),
        ("", {}, "empty"),
        ("x", {"": "v"}, "empty tag key"),
    ],
)
def test_what_influxdb_cannot_store_is_refused(
    store: InfluxMetricStore, name: str, tags: dict[str, str], rule: str
) -> None:
    with pytest.raises(StoreError, match=rule):
        store.write([Point("ok", 1.0, at(0)), Point(name, 1.0, at(1), tags)])
    assert store.query(MetricQuery("ok")) == []  # nothing of the call was queued


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinities_are_refused(store: InfluxMetricStore, value: float) -> None:
    with pytest.raises(StoreError, match="finite"):
        store.write([Point("x", 1.0, at(0)), Point("x", value, at(1))])
    assert store.query(MetricQuery("x")) == []


def test_name_filter(cpu: InfluxMetricStore) -> None:
    assert cpu.query(MetricQuery("mem")) == [Row(at(0), {}, 100.0)]
    assert cpu.query(MetricQuery("nope")) == []


def test_time_range_is_since_inclusive_until_exclusive(cpu: InfluxMetricStore) -> None:
    assert rows(cpu, since=at(20), until=at(60), agg="count") == [(20.0, {}, 2.0)]
    assert rows(cpu, since=at(60), agg="sum") == [(60.0, {}, 22.0)]
    assert rows(cpu, until=at(10), agg="sum") == [(0.0, {}, 1.0)]


def test_equal_timestamps_are_all_stored_and_last_is_the_last_written(
    store: InfluxMetricStore,
) -> None:
    store.write([Point("x", 1.0, at(0)), Point("x", 2.0, at(0))])
    store.write([Point("x", 3.0, at(0))])
    assert store.query(MetricQuery("x", agg="last")) == [Row(at(0), {}, 3.0)]
    assert store.query(MetricQuery("x", agg="count")) == [Row(at(0), {}, 3.0)]


def test_out_of_order_writes_aggregate_by_time(store: InfluxMetricStore) -> None:
    store.write([Point("x", 9.0, at(50)), Point("x", 1.0, at(5))])
    assert store.query(MetricQuery("x", agg="last")) == [Row(at(5), {}, 9.0)]


def test_bad_window_is_refused(store: InfluxMetricStore) -> None:
    with pytest.raises(StoreError, match="window"):
        store.query(MetricQuery("x", window=timedelta(0)))


def test_use_after_close_is_a_store_error(store: InfluxMetricStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.record("x", 1.0)
    with pytest.raises(StoreError, match="closed"):
        store.query(MetricQuery("x"))


def test_query_on_a_missing_database_is_a_store_error(tmp_path: Path, influx_client: Any) -> None:
    with make_store("juliarun_no_such_db/autogen", tmp_path / "spool") as s:
        with pytest.raises(StoreError, match="cannot query") as info:
            s.query(MetricQuery("x"))
        assert "exists" in str(info.value)


def test_many_points_by_hand(store: InfluxMetricStore) -> None:
    # 3 workers x 1000 points, one per second; compare windowed means against plain Python
    points = [
        Point("load", float((i * 7 + w) % 13), at(i), {"worker": f"w{w}"})
        for i in range(1000)
        for w in range(3)
    ]
    store.write(points)
    got = store.query(
        MetricQuery("load", window=timedelta(seconds=100), group_by=("worker",), agg="mean")
    )
    expected = []
    for w in range(3):
        for start in range(0, 1000, 100):
            values = [float((i * 7 + w) % 13) for i in range(start, start + 100)]
            expected.append(Row(at(start), {"worker": f"w{w}"}, sum(values) / len(values)))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g.start, g.group) == (e.start, e.group)
        assert g.value == pytest.approx(e.value)


# -- batching, close, the spool, dedup -----------------------------------------------------


def test_close_sends_what_is_buffered(influx_bucket: str, tmp_path: Path) -> None:
    s = make_store(influx_bucket, tmp_path / "spool", batch_size=1000, flush_interval=3600)
    s.write([Point("buffered", float(i), at(i)) for i in range(2500)])
    s.close()
    assert count_in(influx_bucket, "buffered") == 2500
    assert (s.stats.accepted, s.stats.sent, s.stats.spooled) == (2500, 2500, 0)
    assert list((tmp_path / "spool").iterdir()) == []  # an empty spool leaves nothing behind


def test_a_full_buffer_spills_to_the_spool_and_drains(influx_bucket: str, tmp_path: Path) -> None:
    failures: list[WriteFailure] = []
    s = make_store(
        influx_bucket,
        tmp_path / "spool",
        url=CLOSED_PORT,
        batch_size=100,
        max_buffer=200,
        block_timeout=0.05,
        max_retries=0,
        close_timeout=1,
        on_error=failures.append,
    )
    s.write([Point("spilled", float(i), at(i)) for i in range(1000)])
    s.close()
    assert s.stats.spooled == 1000
    assert {f.action for f in failures} <= {"spooled"}
    assert sum(int(p.read_bytes().count(b"\n")) for p in spooled_files(tmp_path / "spool")) == 1000

    # A later store on the same spool directory adopts the orphan and drains it, in order.
    with make_store(influx_bucket, tmp_path / "spool") as later:
        eventually(lambda: later.stats.drained == 1000, timeout=30, what="the spool drained")
        assert later.query(MetricQuery("spilled", agg="last")) == [Row(at(0), {}, 999.0)]
    assert count_in(influx_bucket, "spilled") == 1000
    assert spooled_files(tmp_path / "spool") == []


def test_a_batch_sent_twice_is_stored_once(influx_bucket: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with make_store(influx_bucket, spool, url=CLOSED_PORT, max_retries=0, close_timeout=1) as s:
        s.write([Point("dedup", float(i), at(0), {"k": "v"}) for i in range(5)])  # same time!
    (batch,) = spooled_files(spool)
    copy = spool / "crashed-writer"  # as if a writer died after sending, before unlinking
    copy.mkdir()
    (copy / "lock").touch()
    (copy / batch.name).write_bytes(batch.read_bytes())
    with make_store(influx_bucket, spool) as later:
        eventually(lambda: later.stats.drained == 10, timeout=30, what="both copies sent")
        assert later.query(MetricQuery("dedup", agg="count")) == [Row(at(0), {}, 5.0)]
        assert later.query(MetricQuery("dedup", agg="last")) == [Row(at(0), {}, 4.0)]
    assert count_in(influx_bucket, "dedup") == 5


def test_a_spool_locked_by_a_live_writer_is_left_alone(influx_bucket: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    alive = make_store(influx_bucket, spool, url=CLOSED_PORT, max_retries=0, close_timeout=1)
    try:
        alive.write([Point("mine", 1.0, at(0))])
        assert not alive.flush(timeout=5)
        with make_store(influx_bucket, spool, adopt_interval=0.05) as other:
            time.sleep(0.5)
            assert other.stats.drained == 0
        assert len(spooled_files(spool)) == 1
    finally:
        alive.close()
    with make_store(influx_bucket, spool) as later:
        eventually(lambda: later.stats.drained == 1, timeout=30, what="the spool drained")


def test_a_missing_database_is_retried_until_it_exists(tmp_path: Path, influx_client: Any) -> None:
    database = f"juliarun_test_late_{os.getpid()}_{time.monotonic_ns()}"
    failures: list[WriteFailure] = []
    s = make_store(
        f"{database}/autogen",
        tmp_path / "spool",
        max_retries=0,
        flush_interval=0.05,
        max_retry_delay=0.2,
        on_error=failures.append,
    )
    try:
        s.write([Point("late", 1.0, at(0))])
        eventually(lambda: s.stats.spooled == 1, timeout=10, what="the batch spooled")
        assert failures[0].action == "spooled" and "404" in str(failures[0].error)
        influxql(f'CREATE DATABASE "{database}"')
        eventually(lambda: s.stats.drained == 1, timeout=10, what="the spool drained")
        assert s.query(MetricQuery("late")) == [Row(at(0), {}, 1.0)]
    finally:
        s.close()
        influxql(f'DROP DATABASE "{database}"')


def test_a_refused_batch_is_kept_and_reported(influx_bucket: str, tmp_path: Path) -> None:
    database = influx_bucket.split("/", maxsplit=1)[0]
    # `value` already holds strings in this series' shard: floats conflict with it for good
    body = f'conflict value="text" {int(at(0).timestamp()) * 10**9}'.encode()
    request = urllib.request.Request(
        f"{env('JULIARUN_INFLUX_URL')}/write?db={database}", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    failures: list[WriteFailure] = []
    with make_store(influx_bucket, tmp_path / "spool", on_error=failures.append) as s:
        s.write([Point("conflict", 1.0, at(1))])
        assert s.flush(timeout=10)  # nothing left to send: the batch was refused for good
    assert s.stats.rejected == 1
    (failure,) = failures
    assert failure.action == "rejected" and failure.path is not None
    assert failure.path.read_text().startswith("conflict value=1.0 ")
    assert "conflict" in failure.path.with_suffix(".error").read_text()


# -- a real Julia job ----------------------------------------------------------------------


@pytest.mark.julia
def test_metric_recorded_inside_a_julia_job(
    julia: str,
    juliarun_home: Path,
    influx_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JULIARUN_METRIC_STORE", "influxdb")
    monkeypatch.setenv("JULIARUN_INFLUX_BUCKET", influx_bucket)
    code = tmp_path / "code"
    code.mkdir()
    (code / "count.jl").write_text(
        textwrap.dedent(
            """
            include(ENV["JULIARUN_JL"])
            JuliaRun.record("files_processed", 3; stage="parse")
            println("counted")
            """
        )
    )
    ctx = juliarun.init()
    try:
        assert isinstance(ctx.metrics, InfluxMetricStore)
        juliarun.define_storage(ctx, name="code", kind="host", path=str(code))
        job = juliarun.JuliaBatch("influx-counter", "/mnt/code/count.jl", "code")
        juliarun.submit(ctx, job)
        assert str(juliarun.wait(ctx, job, timeout=120)) == "succeeded"

        def recorded() -> list[Row]:
            return juliarun.metrics(
                ctx,
                "files_processed",
                tags={"job": "influx-counter"},
                agg="sum",
                group_by=("job", "worker", "stage", "cluster"),
            )

        # the supervisor sends its buffer when it closes the store, just after the job ends
        got = eventually(recorded, timeout=30, what="the Julia metric in InfluxDB")
        assert [(dict(r.group), r.value) for r in got] == [
            (
                {
                    "job": "influx-counter",
                    "worker": "influx-counter-0",
                    "stage": "parse",
                    "cluster": "local",
                },
                3.0,
            )
        ]
        memory = juliarun.metrics(
            ctx, "juliarun.memory_bytes", tags={"job": "influx-counter"}, group_by=("worker",)
        )
        assert [r.group["worker"] for r in memory] == ["influx-counter-0"]
        assert memory[0].value > 0
        juliarun.delete(ctx, job)
    finally:
        ctx.close()
    spool = juliarun_home / "spool" / "metrics"
    assert spooled_files(spool) == []


# -- an outage in the middle of the writes -------------------------------------------------


def _testenv(action: str) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "testenv"), action, "influxdb"],
        check=True,
        capture_output=True,
        timeout=300,
    )


def test_outage_loses_and_duplicates_nothing(influx_bucket: str, tmp_path: Path) -> None:
    """3000 points over ~10 s; InfluxDB is stopped after ~3 s and started again ~3 s later."""
    failures: list[WriteFailure] = []
    s = make_store(
        influx_bucket,
        tmp_path / "spool",
        batch_size=100,
        flush_interval=0.2,
        max_retries=2,
        retry_interval=0.1,
        max_retry_delay=0.5,
        timeout=2,
        close_timeout=60,
        on_error=failures.append,
    )
    total, per_tick, tick = 3000, 10, 10.0 / 300
    base = datetime.now(UTC).replace(microsecond=0)
    errors: list[BaseException] = []

    def emit() -> None:
        try:
            for i in range(0, total, per_tick):
                # one series per worker; timestamps like a job's, one per point
                s.write(
                    [
                        Point("outage", 1.0, base + timedelta(milliseconds=j), {"w": str(j % 3)})
                        for j in range(i, i + per_tick)
                    ]
                )
                time.sleep(tick)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=emit)
    writer.start()
    try:
        time.sleep(3)
        _testenv("down")
        time.sleep(3)
    finally:
        _testenv("up")  # always leave InfluxDB up
    writer.join(timeout=60)
    assert not errors
    s.close()
    assert s.stats.accepted == total
    assert s.stats.spooled > 0, "the outage should have sent some points to the spool"
    assert any(f.action == "spooled" for f in failures)
    assert s.stats.sent + s.stats.drained == total
    assert count_in(influx_bucket, "outage") == total
    assert spooled_files(tmp_path / "spool") == []
