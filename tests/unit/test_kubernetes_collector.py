"""The Kubernetes collector's pure parts: the exactly-once watermark, which read a pod needs
next, and how read lines become log lines and metric points (SQLite stores, no cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from juliarun.backends.kubernetes.collector import (
    METRIC_PREFIX,
    KubernetesCollector,
    Watermark,
    _Pod,
    next_read,
)
from juliarun.logs import LogLine, LogQuery
from juliarun.logs.sqlite import SqliteLogStore
from juliarun.metrics import MetricQuery
from juliarun.metrics.sqlite import SqliteMetricStore

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def stamp(seconds: float) -> str:
    return (T + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def raw_pod(
    state: str, restarts: int = 0, *, last_terminated: bool = False, index: int = 0
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "main", "state": {state: {}}, "restartCount": restarts}
    if last_terminated:
        cs["lastState"] = {"terminated": {"exitCode": 1}}
    return {
        "metadata": {
            "name": f"job-{index}-abcde",
            "namespace": "jr",
            "labels": {
                "batch.kubernetes.io/job-completion-index": str(index),
                "juliarun.io/tenant": "acme",
            },
        },
        "spec": {"nodeName": "node-1"},
        "status": {"containerStatuses": [cs]},
    }


def new_pod() -> _Pod:
    return _Pod("job-0-abcde", "job-0", "acme", Watermark())


def test_watermark_skips_what_was_shipped_across_a_reconnect() -> None:
    mark = Watermark()
    first = [(T, 0), (T, 1), (T + timedelta(seconds=1), 0)]
    assert [mark.admit(t, i) for t, i in first] == [True, True, True]
    # the reconnect re-reads from the watermark's second: everything is old but the new line
    again = [(T, 0), (T, 1), (T + timedelta(seconds=1), 0), (T + timedelta(seconds=1), 1)]
    assert [mark.admit(t, i) for t, i in again] == [False, False, False, True]


def test_next_read_follows_the_current_container_until_it_is_read_to_its_end() -> None:
    pod = new_pod()
    assert next_read(pod, raw_pod("waiting")) is None  # not started: nothing to read
    assert next_read(pod, raw_pod("running")) == (0, False)
    pod.last, pod.clean = (0, False), True  # the stream ended cleanly while running: reconnect
    assert next_read(pod, raw_pod("running")) == (0, False)
    assert next_read(pod, raw_pod("terminated")) is None  # ended cleanly after it terminated
    assert (0, False) in pod.done


def test_next_read_reads_a_restarted_container_it_did_not_watch_with_previous() -> None:
    pod = new_pod()
    assert next_read(pod, raw_pod("running", restarts=2)) == (1, True)
    pod.last, pod.clean = (1, True), True
    assert next_read(pod, raw_pod("running", restarts=2)) == (2, False)
    # a stream that failed is read again
    pod.last, pod.clean = (2, False), False
    assert next_read(pod, raw_pod("terminated", restarts=2)) == (2, False)


def test_next_read_in_crash_loop_back_off_reads_the_previous_container() -> None:
    pod = new_pod()
    assert next_read(pod, raw_pod("waiting", 1, last_terminated=True)) == (0, True)
    pod.last, pod.clean = (0, True), True
    assert next_read(pod, raw_pod("waiting", 1, last_terminated=True)) == (1, True)
    pod.last, pod.clean = (1, True), True
    assert next_read(pod, raw_pod("waiting", 1, last_terminated=True)) is None


@pytest.fixture
def stores() -> Iterator[tuple[SqliteLogStore, SqliteMetricStore]]:
    logs, metrics = SqliteLogStore(":memory:"), SqliteMetricStore(":memory:")
    yield logs, metrics
    logs.close()
    metrics.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def collector(
    logs: SqliteLogStore, metrics: SqliteMetricStore, seen: list[LogLine], home: Path
) -> KubernetesCollector:
    routes: Any = SimpleNamespace(client=None, namespace="jr", ns_of=lambda name: "jr")
    return KubernetesCollector(
        routes,
        "job",
        logs,
        metrics,
        cluster="kube",
        home=home,
        poll_interval=0.1,
        on_line=seen.append,
    )


def test_lines_are_shipped_once_and_metric_lines_become_points(
    stores: tuple[SqliteLogStore, SqliteMetricStore], home: Path
) -> None:
    logs, metrics = stores
    seen: list[LogLine] = []
    c = collector(logs, metrics, seen, home)
    pod = c.pods["job-0-abcde"] = new_pod()
    batch = [
        ("job-0-abcde", f"{stamp(0)} one"),
        ("job-0-abcde", f"{stamp(0)} two"),  # same timestamp: the index tells them apart
        ("job-0-abcde", f"{stamp(1)} {METRIC_PREFIX}loss,epoch=1 value=0.5"),
        ("job-0-abcde", f"{stamp(2)} {METRIC_PREFIX}broken line"),
    ]
    c._ship(batch)
    pod.run_stamp, pod.run_index = None, -1  # a reconnect re-reads from the start
    c._ship([*batch, ("job-0-abcde", f"{stamp(3)} three")])
    got = logs.query(LogQuery(job="job"))
    assert [x.message for x in got[:2]] == ["one", "two"]
    assert got[2].message.startswith("juliarun: ignored 1 metric line (")
    assert "broken" not in got[2].message  # counts and rules only, never the line itself
    assert [x.message for x in got[3:]] == ["three"]
    assert {(x.worker, x.stream, x.cluster, x.tenant) for x in got} == {
        ("job-0", "stdout", "kube", "acme")
    }
    assert [x.message for x in seen] == [x.message for x in got]
    rows = metrics.query(MetricQuery("loss", agg="count", group_by=("job", "worker", "epoch")))
    assert [(dict(r.group), r.value) for r in rows] == [
        ({"job": "job", "worker": "job-0", "epoch": "1"}, 1.0)
    ]
    assert c.result.lines == 4 and c.result.metric_points == 1 and c.result.skipped == 4


def test_a_job_cannot_forge_identity_tags_or_platform_metrics(
    stores: tuple[SqliteLogStore, SqliteMetricStore], home: Path
) -> None:
    logs, metrics = stores
    c = collector(logs, metrics, [], home)
    c.pods["job-0-abcde"] = new_pod()
    c._ship(
        [
            ("job-0-abcde", f"{stamp(0)} {METRIC_PREFIX}loss,job=victim,worker=w9 value=2"),
            ("job-0-abcde", f"{stamp(1)} {METRIC_PREFIX}juliarun.cpu,tenant=other value=99"),
        ]
    )
    rows = metrics.query(MetricQuery("loss", agg="sum", group_by=("job", "worker", "tenant")))
    assert [(dict(r.group), r.value) for r in rows] == [
        ({"job": "job", "worker": "job-0", "tenant": "acme"}, 2.0)
    ]
    assert metrics.query(MetricQuery("juliarun.cpu", agg="count")) == []
    assert [x.message for x in logs.query(LogQuery(job="job"))] == [
        "juliarun: ignored 1 point with a reserved juliarun.* name"
    ]


def test_a_second_collector_resumes_after_what_the_store_holds(
    stores: tuple[SqliteLogStore, SqliteMetricStore], home: Path
) -> None:
    logs, metrics = stores
    first = collector(logs, metrics, [], home)
    first.pods["job-0-abcde"] = new_pod()
    lines = [("job-0-abcde", f"{stamp(s)} line {i}") for i, s in enumerate([0, 1, 1, 2, 2])]
    first._ship(lines[:4])  # shipped up to the first line of second 2
    (home / "collector" / "jr" / "job.json").unlink()  # another machine: only the store
    second = collector(logs, metrics, [], home)
    second.pods["job-0-abcde"] = _Pod("job-0-abcde", "job-0", "acme", second._floor("job-0"))
    second._ship(lines)
    assert [x.message for x in logs.query(LogQuery(job="job"))] == [f"line {i}" for i in range(5)]
    assert second.result.lines == 1


def test_metric_lines_after_the_last_log_line_are_not_shipped_again(
    stores: tuple[SqliteLogStore, SqliteMetricStore], home: Path
) -> None:
    """The store's newest log line is behind the metric lines printed after it: the
    collector's checkpoint under JULIARUN_HOME carries the watermark past them."""
    logs, metrics = stores
    lines = [
        ("job-0-abcde", f"{stamp(0)} hello"),
        ("job-1-abcde", f"{stamp(0)} hello"),
        ("job-0-abcde", f"{stamp(1)} {METRIC_PREFIX}loss value=0.5"),
        ("job-0-abcde", f"{stamp(1)} {METRIC_PREFIX}loss value=0.25"),
        ("job-0-abcde", f"{stamp(2)} {METRIC_PREFIX}loss value=0.125"),
        ("job-1-abcde", f"{stamp(3)} {METRIC_PREFIX}loss value=1"),
    ]
    for _ in range(3):  # the first collector and two more
        c = collector(logs, metrics, [], home)
        for index in (0, 1):
            pname = f"job-{index}-abcde"
            c.pods[pname] = _Pod(pname, f"job-{index}", "acme", c._floor(f"job-{index}"))
        c._ship(lines)
    rows = metrics.query(MetricQuery("loss", agg="count", group_by=("worker",)))
    assert [(r.group["worker"], r.value) for r in rows] == [("job-0", 3.0), ("job-1", 1.0)]
    assert logs.count(LogQuery(job="job")) == 2
    assert c.result.lines == 0 and c.result.metric_points == 0 and c.result.skipped == 6
