"""The behaviours every :class:`~juliarun.metrics.base.MetricStore` shares, written once.

A test module runs them against its implementation by subclassing :class:`MetricStoreContract`
and providing a ``store`` fixture: an open store on a fresh, empty location whose clock reads
``at(1000)``. Class attributes say what the implementation takes as awkward names and tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from juliarun.errors import StoreError
from juliarun.metrics.base import MetricNames, MetricQuery, MetricStore, Point, Row

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)  # a multiple of every window used below


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# cpu points: (seconds after T0, value, worker, job)
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


def rows(store: MetricStore, **kwargs: Any) -> list[tuple[Any, ...]]:
    """(seconds after T0, group, value) of each row."""
    result = store.query(MetricQuery("cpu", **kwargs))
    return [((r.start - T0).total_seconds(), dict(r.group), r.value) for r in result]


class MetricStoreContract:
    """The shared behaviours; see the module notes for what a subclass provides."""

    #: a metric name with characters that need quoting or escaping somewhere
    AWKWARD_NAME: str = "x"
    #: tag keys and values with such characters (each key is tested on its own)
    AWKWARD_TAGS: Mapping[str, str] = {}

    @pytest.fixture
    def cpu(self, store: MetricStore) -> MetricStore:
        points = [Point("cpu", v, at(s), {"worker": w, "job": j}) for s, v, w, j in CPU]
        points += [Point("mem", 100.0, at(0), {"worker": "w1", "job": "a"})]
        assert store.write(points) == len(points)
        return store

    def test_implements_the_protocol(self, store: MetricStore) -> None:
        assert isinstance(store, MetricStore)

    def test_names_lists_every_metric_once_sorted(self, cpu: MetricStore) -> None:
        assert isinstance(cpu, MetricNames)
        cpu.record(self.AWKWARD_NAME, 1.0, timestamp=at(3))
        assert cpu.names() == sorted({"cpu", "mem", self.AWKWARD_NAME})

    # -- record -------------------------------------------------------------------------------

    def test_record_uses_the_clock_without_a_timestamp(self, store: MetricStore) -> None:
        store.record("loss", 0.5)
        store.record("loss", 0.25, {"epoch": "2"}, at(5))
        result = store.query(MetricQuery("loss", agg="count", group_by=("epoch",)))
        assert result == [Row(at(1000), {"epoch": ""}, 1.0), Row(at(5), {"epoch": "2"}, 1.0)]

    def test_record_accepts_ints(self, store: MetricStore) -> None:
        store.record("n", 3, timestamp=at(0))
        assert store.query(MetricQuery("n", agg="sum")) == [Row(at(0), {}, 3.0)]

    # -- aggregations and windows -------------------------------------------------------------

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
    def test_whole_range_aggregates(self, cpu: MetricStore, agg: str, expected: float) -> None:
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
    def test_windowed_aggregates(self, cpu: MetricStore, agg: str, expected: list[float]) -> None:
        got = rows(cpu, agg=agg, window=timedelta(minutes=1))
        assert got == [
            (s, {}, pytest.approx(v)) for s, v in zip([0.0, 60.0, 120.0], expected, strict=True)
        ]

    def test_windows_are_aligned_to_the_epoch(self, store: MetricStore) -> None:
        base = datetime(2024, 1, 1, 0, 0, 7, tzinfo=UTC)
        store.write([Point("x", 1.0, base), Point("x", 2.0, base + timedelta(seconds=5))])
        result = store.query(MetricQuery("x", window=timedelta(seconds=10), agg="count"))
        assert [(r.start.second, r.value) for r in result] == [(0, 1.0), (10, 1.0)]

    def test_bad_window_is_refused(self, store: MetricStore) -> None:
        with pytest.raises(StoreError, match="window"):
            store.query(MetricQuery("x", window=timedelta(0)))

    # -- groups -------------------------------------------------------------------------------

    def test_group_by_one_tag(self, cpu: MetricStore) -> None:
        # w1: 1,3,2,4,6 (first at 0)   w2: 5,7,10 (first at 20)
        assert rows(cpu, group_by=("worker",)) == [
            (0.0, {"worker": "w1"}, pytest.approx(16 / 5)),
            (20.0, {"worker": "w2"}, pytest.approx(22 / 3)),
        ]

    @pytest.mark.parametrize(
        ("agg", "expected"),
        [("last", (4.0, 3.0)), ("max", (9.0, 8.0)), ("min", (2.0, 1.0)), ("count", (3.0, 3.0))],
    )
    def test_group_by_with_selectors(
        self, store: MetricStore, agg: str, expected: tuple[float, float]
    ) -> None:
        # In each group the last value is neither its largest nor its smallest, so a store
        # that answered `last` with `max` (or `min`) fails.
        data = [(0, 2.0, "w1"), (5, 8.0, "w2"), (10, 9.0, "w1"), (15, 1.0, "w2")]
        data += [(20, 4.0, "w1"), (25, 3.0, "w2")]
        store.write([Point("sel", v, at(t), {"worker": w}) for t, v, w in data])
        got = store.query(MetricQuery("sel", group_by=("worker",), agg=agg))  # type: ignore[arg-type]
        assert got == [
            Row(at(0), {"worker": "w1"}, expected[0]),
            Row(at(5), {"worker": "w2"}, expected[1]),
        ]

    def test_group_by_two_tags_with_windows(self, cpu: MetricStore) -> None:
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

    def test_group_by_missing_tag_is_the_empty_group(self, store: MetricStore) -> None:
        store.write([Point("x", 1.0, at(0), {"gpu": "0"}), Point("x", 5.0, at(1))])
        result = store.query(MetricQuery("x", group_by=("gpu",)))
        assert result == [Row(at(1), {"gpu": ""}, 5.0), Row(at(0), {"gpu": "0"}, 1.0)]

    # -- selection ----------------------------------------------------------------------------

    def test_tag_filter_requires_every_pair(self, cpu: MetricStore) -> None:
        assert rows(cpu, tags={"worker": "w2"}, agg="sum") == [(20.0, {}, 22.0)]
        assert rows(cpu, tags={"worker": "w1", "job": "b"}, agg="sum") == [(60.0, {}, 2.0)]
        assert rows(cpu, tags={"worker": "w3"}) == []
        assert rows(cpu, tags={"absent": "x"}) == []

    def test_names_and_tags_with_awkward_characters(self, store: MetricStore) -> None:
        name, tags = self.AWKWARD_NAME, self.AWKWARD_TAGS
        assert tags, "a contract subclass lists its awkward tags"
        store.write([Point(name, 1.0, at(0), tags), Point(name, 2.0, at(1), {})])
        for key, value in tags.items():
            got = store.query(MetricQuery(name, tags={key: value}, agg="sum"))
            assert got == [Row(at(0), {}, 1.0)], key
            groups = [r.group for r in store.query(MetricQuery(name, group_by=(key,)))]
            assert groups == [{key: ""}, {key: value}], key

    def test_name_filter(self, cpu: MetricStore) -> None:
        assert cpu.query(MetricQuery("mem")) == [Row(at(0), {}, 100.0)]
        assert cpu.query(MetricQuery("nope")) == []

    def test_time_range_is_since_inclusive_until_exclusive(self, cpu: MetricStore) -> None:
        assert rows(cpu, since=at(20), until=at(60), agg="count") == [(20.0, {}, 2.0)]
        assert rows(cpu, since=at(60), agg="sum") == [(60.0, {}, 22.0)]
        assert rows(cpu, until=at(10), agg="sum") == [(0.0, {}, 1.0)]

    # -- order of arrival ---------------------------------------------------------------------

    def test_equal_timestamps_are_all_stored_and_last_is_the_last_written(
        self, store: MetricStore
    ) -> None:
        store.write([Point("x", 1.0, at(0)), Point("x", 2.0, at(0))])
        store.write([Point("x", 3.0, at(0))])
        assert store.query(MetricQuery("x", agg="last")) == [Row(at(0), {}, 3.0)]
        assert store.query(MetricQuery("x", agg="count")) == [Row(at(0), {}, 3.0)]

    def test_out_of_order_writes_aggregate_by_time(self, store: MetricStore) -> None:
        store.write([Point("x", 9.0, at(50)), Point("x", 1.0, at(5))])
        assert store.query(MetricQuery("x", agg="last")) == [Row(at(5), {}, 9.0)]

    def test_many_points_by_hand(self, store: MetricStore) -> None:
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
