"""The embedded SQLite metric store, on real database files: the shared MetricStore contract
(tests/contracts/metric_store_contract.py) and what is particular to SQLite (canonical JSON tags,
NaN and infinities, windows before 1970, reopening)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from juliarun.errors import StoreError
from juliarun.metrics.base import MetricQuery, Point, Row
from juliarun.metrics.sqlite import SqliteMetricStore, canonical_tags
from tests.contracts.metric_store_contract import MetricStoreContract, at


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteMetricStore]:
    s = SqliteMetricStore(tmp_path / "metrics.db", clock=lambda: at(1000))
    yield s
    s.close()


class TestSqliteMetricStore(MetricStoreContract):
    AWKWARD_TAGS = {
        'we"ird': "1",
        "dot.ted": "2",
        "back\\slash": "3",
        "new\nline": "4",
        "ü ber": "5",
    }


def test_tags_are_stored_as_canonical_json(store: SqliteMetricStore) -> None:
    store.write([Point("x", 1.0, at(0), {"b": "2", "a": "ü"})])
    conn = sqlite3.connect(store.path)
    try:
        (tags,) = conn.execute("SELECT tags FROM points").fetchone()
    finally:
        conn.close()
    assert tags == '{"a":"ü","b":"2"}' == canonical_tags({"b": "2", "a": "ü"})


def test_windows_before_the_epoch_floor(store: SqliteMetricStore) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    store.write([Point("x", 1.0, epoch - timedelta(seconds=1))])
    (row,) = store.query(MetricQuery("x", window=timedelta(seconds=10)))
    assert row.start == epoch - timedelta(seconds=10)


def test_nan_is_refused_and_nothing_is_stored(store: SqliteMetricStore) -> None:
    with pytest.raises(StoreError, match="NaN"):
        store.write([Point("x", 1.0, at(0)), Point("x", float("nan"), at(1))])
    assert store.query(MetricQuery("x")) == []


def test_infinities_are_kept(store: SqliteMetricStore) -> None:
    store.write([Point("x", float("inf"), at(0)), Point("x", 1.0, at(1))])
    assert store.query(MetricQuery("x", agg="max")) == [Row(at(0), {}, float("inf"))]


def test_reopen_and_use_after_close(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.db"
    with SqliteMetricStore(path) as first:
        first.record("x", 1.0, timestamp=at(0))
    second = SqliteMetricStore(path)
    assert second.query(MetricQuery("x")) == [Row(at(0), {}, 1.0)]
    second.close()
    with pytest.raises(StoreError, match="cannot query points") as info:
        second.query(MetricQuery("x"))
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="cannot open metric store"):
        SqliteMetricStore(bad)
