"""The InfluxDB metric store against the real InfluxDB 1.8 server: the shared MetricStore
contract (tests/contracts/metric_store_contract.py), Flux's quirks, the spool, dedup, a metric
recorded from a Julia job, and an outage in the middle of a stream of writes."""

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
from tests.contracts.metric_store_contract import MetricStoreContract, at, rows
from tests.integration.fixtures._service import env
from tests.integration.fixtures.influxdb import influxql
from tests.unit.local_jobs import eventually

pytestmark = pytest.mark.influxdb

ROOT = Path(__file__).resolve().parents[2]
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens there: every write fails to connect


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


# -- the MetricStore contract (tests/contracts/metric_store_contract.py), and beyond it ---


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


class TestInfluxMetricStore(MetricStoreContract):
    AWKWARD_NAME = "odd name, really"
    AWKWARD_TAGS = {
        'we"ird': 'va"l',
        "dot.ted": "2",
        "back\\slash": "c:\\dir",
        "ü ber": "a b,c=d",
        "dollar${x}": "${y}",
    }

    def test_window_start_is_the_windows_even_when_since_cuts_it(
        self, cpu: InfluxMetricStore
    ) -> None:
        # Flux clamps the first window to `since`; the row still starts where the window does
        got = rows(cpu, since=at(20), window=timedelta(minutes=1), agg="sum", until=at(150))
        assert got == [(0.0, {}, 12.0), (60.0, {}, 6.0), (120.0, {}, 10.0)]

    def test_windowed_last_per_group(self, cpu: InfluxMetricStore) -> None:
        got = rows(cpu, group_by=("job",), window=timedelta(minutes=1), agg="last")
        # job a: [0,60) 1,3,5 -> 5; [60,120) 4; [120,180) 10,6 -> 6.  job b: 7; 2
        assert got == [
            (0.0, {"job": "a"}, 5.0),
            (60.0, {"job": "a"}, 4.0),
            (120.0, {"job": "a"}, 6.0),
            (0.0, {"job": "b"}, 7.0),
            (60.0, {"job": "b"}, 2.0),
        ]


def test_an_empty_tag_value_is_no_tag(store: InfluxMetricStore) -> None:
    store.write([Point("x", 1.0, at(0), {"gpu": "0"}), Point("x", 5.0, at(1))])
    # an empty tag value is no tag at all, and filtering on "" finds the points without it
    store.write([Point("x", 2.0, at(2), {"gpu": ""})])
    assert store.query(MetricQuery("x", tags={"gpu": ""}, agg="sum")) == [Row(at(1), {}, 7.0)]


def test_points_before_the_epoch(store: InfluxMetricStore) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    store.write([Point("x", 1.0, epoch - timedelta(seconds=1)), Point("x", 2.0, epoch)])
    # stored and aggregated over the whole range ...
    assert store.query(MetricQuery("x", agg="sum")) == [Row(epoch - timedelta(seconds=1), {}, 3.0)]
    # ... but InfluxDB 1.8's windows start at the epoch: refused rather than silently empty
    assert store.query(MetricQuery("x", window=timedelta(seconds=10))) == [Row(epoch, {}, 2.0)]
    with pytest.raises(StoreError, match="before 1970"):
        store.query(MetricQuery("x", window=timedelta(seconds=10), since=epoch - timedelta(1)))


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


@pytest.mark.serial  # stops the shared InfluxDB (docs/testing.md)
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


@pytest.mark.serial  # stops the shared InfluxDB (docs/testing.md)
def test_a_local_jobs_points_survive_an_outage_exactly_once(
    juliarun_home: Path, influx_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real job on the local backend appends N points (line protocol with nanosecond
    timestamps) to its ``$JULIARUN_METRICS_FILE`` over ~10 s; its supervisor ingests them into
    InfluxDB, which is stopped after the first points arrived and started again ~3 s later. The
    supervisor spools during the outage and drains after it (or, if the job ended first, a later
    store adopts its spool); every point is stored exactly once."""
    monkeypatch.setenv("JULIARUN_METRIC_STORE", "influxdb")
    monkeypatch.setenv("JULIARUN_INFLUX_BUCKET", influx_bucket)
    n = 200
    script = (
        f"for i in $(seq 1 {n}); do "
        'echo "outage_job,phase=loop value=$i $(date +%s%N)" >> "$JULIARUN_METRICS_FILE"; '
        "sleep 0.05; done; echo emitted"
    )
    name = "influx-outage"
    with juliarun.init("local") as ctx:
        job = juliarun.Batch(name, command=["bash", "-c", script])
        juliarun.submit(ctx, job)
        eventually(
            lambda: count_in(influx_bucket, "outage_job") >= 20,
            timeout=60,
            interval=0.1,
            what="the first points in InfluxDB",
        )
        try:
            _testenv("down")
            # the job keeps emitting: its supervisor spools the points
            eventually(
                lambda: spooled_files(juliarun_home / "spool" / "metrics"),
                timeout=30,
                interval=0.1,
                what="the supervisor to spool",
            )
            time.sleep(2)
        finally:
            _testenv("up")  # always leave InfluxDB up
        assert str(juliarun.wait(ctx, job, timeout=120)) == "succeeded"
    # a later store drains whatever the supervisor left in the spool
    with juliarun.init("local") as ctx:

        def all_stored() -> bool:
            try:
                return count_in(influx_bucket, "outage_job") >= n
            except OSError:
                return False

        eventually(all_stored, timeout=180, interval=0.5, what="every point after the restart")
        rows = juliarun.metrics(ctx, "outage_job", tags={"job": name}, agg="count")
        assert [r.value for r in rows] == [float(n)]
        total = juliarun.metrics(ctx, "outage_job", tags={"job": name}, agg="sum")
        assert [r.value for r in total] == [float(n * (n + 1) // 2)]
    assert count_in(influx_bucket, "outage_job") == n
    assert spooled_files(juliarun_home / "spool" / "metrics") == []
