"""Alert rules evaluated against the SQLite metric store with an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from juliarun.errors import SpecError
from juliarun.metrics.alerts import AbsenceRule, ThresholdRule, evaluate, parse_rules
from juliarun.metrics.base import Point
from juliarun.metrics.sqlite import SqliteMetricStore

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


@pytest.fixture
def store() -> Iterator[SqliteMetricStore]:
    s = SqliteMetricStore(":memory:")
    # load per worker: w1 busy lately, w2 idle; an old spike of w2 outside every window below
    s.write(
        [
            Point("load", 0.2, ago(30), {"worker": "w2"}),
            Point("load", 5.0, ago(20), {"worker": "w2"}),
            Point("load", 0.95, ago(4), {"worker": "w1"}),
            Point("load", 0.99, ago(2), {"worker": "w1"}),
            Point("load", 0.10, ago(3), {"worker": "w2"}),
            Point("load", 0.30, ago(1), {"worker": "w2"}),
            Point("load", 100.0, NOW, {"worker": "w2"}),  # at "now": outside [now - window, now)
            Point("heartbeat", 1.0, ago(12), {"worker": "w1"}),
            Point("heartbeat", 1.0, ago(2), {"worker": "w2"}),
        ]
    )
    yield s
    s.close()


def run(store: SqliteMetricStore, *rules: ThresholdRule | AbsenceRule) -> list[tuple[str, ...]]:
    return [
        (a.rule, ",".join(f"{k}={v}" for k, v in a.group.items()), a.message)
        for a in evaluate(rules, store, clock=lambda: NOW)
    ]


def busy(**kwargs: object) -> ThresholdRule:
    base: dict[str, object] = {
        "name": "busy",
        "metric": "load",
        "op": ">",
        "value": 0.9,
        "window": 5 * MINUTE,
        "group_by": ("worker",),
    }
    return ThresholdRule(**{**base, **kwargs})  # type: ignore[arg-type]


def test_threshold_above_per_group(store: SqliteMetricStore) -> None:
    assert run(store, busy()) == [
        ("busy", "worker=w1", "busy: mean(load) over 0:05:00 is 0.97 > 0.9 (worker=w1)")
    ]


def test_threshold_below_and_other_aggregations(store: SqliteMetricStore) -> None:
    idle = busy(name="idle", op="<", value=0.25, agg="min")
    assert [(r, g) for r, g, _ in run(store, idle)] == [("idle", "worker=w2")]  # min 0.10
    assert run(store, busy(agg="count", value=1.5, op=">"))[0][1] == "worker=w1"  # 2 points each
    assert len(run(store, busy(agg="count", value=1.5, op=">"))) == 2


def test_threshold_window_excludes_older_points_and_now(store: SqliteMetricStore) -> None:
    # the 5.0 spike (20 min ago) and the 100.0 point at exactly now do not count
    assert run(store, busy(name="spike", value=1.0, agg="max")) == []
    assert [
        g for _, g, _ in run(store, busy(name="spike", value=1.0, agg="max", window=25 * MINUTE))
    ] == ["worker=w2"]


def test_threshold_without_groups_and_with_tags(store: SqliteMetricStore) -> None:
    rule = busy(group_by=(), tags={"worker": "w2"}, agg="max", value=0.2)
    assert run(store, rule) == [("busy", "", "busy: max(load) over 0:05:00 is 0.3 > 0.2")]


def test_no_points_no_threshold_alert(store: SqliteMetricStore) -> None:
    assert run(store, busy(metric="nothing")) == []


def test_absence_without_groups(store: SqliteMetricStore) -> None:
    rule = AbsenceRule(name="quiet", metric="heartbeat", window=MINUTE)
    assert run(store, rule) == [("quiet", "", "quiet: no heartbeat point in the last 0:01:00")]
    assert run(store, rule.model_copy(update={"window": 5 * MINUTE})) == []


def test_absence_per_group_fires_for_groups_gone_silent(store: SqliteMetricStore) -> None:
    rule = AbsenceRule(name="hb", metric="heartbeat", window=5 * MINUTE, group_by=("worker",))
    assert run(store, rule) == [
        ("hb", "worker=w1", "hb: no heartbeat point in the last 0:05:00 (worker=w1)")
    ]
    # a group last seen before the lookback is no longer expected
    short = rule.model_copy(update={"lookback": 5 * MINUTE})
    assert run(store, short) == []


def test_rules_run_in_order_and_read_the_clock_once(store: SqliteMetricStore) -> None:
    calls = []

    def clock() -> datetime:
        calls.append(1)
        return NOW

    rules = [AbsenceRule(name="quiet", metric="heartbeat", window=MINUTE), busy()]
    alerts = evaluate(rules, store, clock=clock)
    assert [a.rule for a in alerts] == ["quiet", "busy"]
    assert calls == [1]
    assert alerts[1].value == pytest.approx(0.97) and alerts[1].threshold == 0.9
    assert alerts[1].at == NOW and alerts[0].value is None


def test_invalid_rules_name_the_field() -> None:
    with pytest.raises(SpecError) as err:
        ThresholdRule(name="x", metric="m", op=">=", value=1, window=0)  # type: ignore[arg-type]
    assert {f for f, _ in err.value.errors} == {"op", "window"}
    good = {"kind": "absence", "name": "x", "metric": "m", "window": 60}
    with pytest.raises(SpecError) as err:
        parse_rules([good, {**good, "typo": 1}, {**good, "kind": "nope"}])
    fields = [f for f, _ in err.value.errors]
    assert fields[0] == "1.typo" and fields[1].startswith("2") and len(fields) == 2


def test_parse_rules_by_kind() -> None:
    rules = parse_rules(
        [
            {"kind": "threshold", "name": "t", "metric": "m", "op": "<", "value": 2, "window": 30},
            {"kind": "absence", "name": "a", "metric": "m", "window": "PT5M"},
        ]
    )
    assert isinstance(rules[0], ThresholdRule) and rules[0].window == timedelta(seconds=30)
    assert isinstance(rules[1], AbsenceRule) and rules[1].window == 5 * MINUTE
