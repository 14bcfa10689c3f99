"""The process autoscaler's pure logic: metrics (queue backlog, time windows, bounds, the metric
store, functions) and policies (the HPA's formula, tolerance, stabilization windows, rate
limits, bounds, functions), on a fake clock with exact values."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from juliarun.errors import JuliaRunError, MetricError, SpecError
from juliarun.metrics.sqlite import SqliteMetricStore
from juliarun.scaling.metrics import (
    AverageMetric,
    BoundedMetric,
    CallableMetric,
    Metric,
    Reading,
    StoreMetric,
    WorkQueueMetric,
    as_metric,
)
from juliarun.scaling.policy import (
    CallablePolicy,
    Decision,
    HPAPolicy,
    Policy,
    ScalingPolicy,
    ScalingRules,
    as_policy,
    reversals,
)

T0 = 1_800_000_000.0


class Clock:
    """A settable clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class QueueStats:
    name: str
    ready: int
    unacked: int
    consumers: int
    publish_rate: float
    deliver_rate: float


class Queue:
    """A work queue whose stats the test sets; ``fail`` makes ``stats`` raise it."""

    def __init__(self) -> None:
        self.stats_by_name: dict[str, QueueStats] = {}
        self.fail: Exception | None = None
        self.asked: list[str] = []

    def stats(self, name: str) -> QueueStats:
        self.asked.append(name)
        if self.fail is not None:
            raise self.fail
        return self.stats_by_name[name]


def values(*xs: float) -> Callable[[], float]:
    it = iter(xs)
    return lambda: next(it)


# -- WorkQueueMetric --------------------------------------------------------------------------


def test_work_queue_backlog_is_ready_plus_unacked_per_worker() -> None:
    queue = Queue()
    queue.stats_by_name["jobs"] = QueueStats("jobs", 12, 3, 3, 2.5, 1.25)
    metric = WorkQueueMetric(queue, "jobs", per_worker=5)
    assert metric.publish_rate is None and metric.deliver_rate is None
    reading = metric.read()
    assert queue.asked == ["jobs"]
    assert reading == Reading(
        3.0,
        "WorkQueueMetric(jobs, per_worker=5)",
        {
            "ready": 12.0,
            "unacked": 3.0,
            "consumers": 3.0,
            "publish_rate": 2.5,
            "deliver_rate": 1.25,
            "backlog": 15.0,
        },
    )
    assert (metric.publish_rate, metric.deliver_rate) == (2.5, 1.25)
    assert isinstance(metric, Metric)
    one = WorkQueueMetric(queue, "jobs")
    assert (one.read().value, str(one)) == (15.0, "WorkQueueMetric(jobs)")


def test_work_queue_with_a_rate_asks_for_the_workers_that_keep_up() -> None:
    queue = Queue()
    metric = WorkQueueMetric(queue, "work", per_worker=2, per_worker_rate=0.5)
    assert str(metric) == "WorkQueueMetric(work, per_worker=2, per_worker_rate=0.5)"
    # Steady load: 3 msg/s needs 6 workers though the backlog (4) asks for 2.
    queue.stats_by_name["work"] = QueueStats("work", 0, 4, 6, 3.0, 3.0)
    reading = metric.read()
    assert (reading.value, reading.inputs["for_backlog"], reading.inputs["for_rate"]) == (
        6.0,
        2.0,
        6.0,
    )
    # A burst: the backlog asks for more than the rate.
    queue.stats_by_name["work"] = QueueStats("work", 36, 4, 6, 3.0, 3.0)
    assert metric.read().value == 20.0
    with pytest.raises(SpecError) as err:
        WorkQueueMetric(queue, per_worker_rate=0)
    assert err.value.errors[0][0] == "per_worker_rate"


def test_a_queue_that_fails_is_a_metric_error_caused_by_it() -> None:
    queue = Queue()
    queue.fail = ConnectionRefusedError("connection refused")
    with pytest.raises(MetricError) as err:
        WorkQueueMetric(queue, "work").read()
    assert err.value.source == "WorkQueueMetric(work)"
    assert err.value.problem == "cannot read the queue: ConnectionRefusedError: connection refused"
    assert err.value.__cause__ is queue.fail
    assert isinstance(err.value, JuliaRunError) and err.value.hint


def test_a_queue_with_negative_or_missing_counts_is_bad_data() -> None:
    queue = Queue()
    queue.stats_by_name["work"] = QueueStats("work", -1, 0, 0, 0.0, 0.0)
    with pytest.raises(MetricError, match=r"negative counts \(ready=-1, unacked=0\)"):
        WorkQueueMetric(queue).read()
    queue.stats_by_name["work"] = QueueStats("work", 1, 0, 0, float("nan"), 0.0)
    with pytest.raises(MetricError, match="read nan, which is not a finite number"):
        WorkQueueMetric(queue).read()


def test_work_queue_inputs_are_validated() -> None:
    with pytest.raises(SpecError) as err:
        WorkQueueMetric(Queue(), "", per_worker=0)
    assert [f for f, _ in err.value.errors] == ["queue", "per_worker"]


# -- AverageMetric ----------------------------------------------------------------------------


def test_average_is_over_the_readings_of_the_last_window_seconds() -> None:
    clock = Clock()
    avg = AverageMetric(values(10, 20, 30, 40, 0), 30, clock=clock)
    got = []
    for dt in (0, 10, 20, 30, 60):  # at +30 the first reading (at +0) has left the window
        clock.now = T0 + dt
        reading = avg.read()
        got.append((reading.value, reading.inputs["latest"], reading.inputs["samples"]))
    assert got == [
        (10.0, 10.0, 1.0),
        (15.0, 20.0, 2.0),
        (20.0, 30.0, 3.0),
        (30.0, 40.0, 3.0),
        (0.0, 0.0, 1.0),
    ]
    assert str(avg) == "AverageMetric(<lambda>, 30s)"


def test_a_failed_reading_adds_nothing_to_the_window() -> None:
    clock = Clock()
    state = {"fail": False}

    def read() -> float:
        if state["fail"]:
            raise OSError("socket closed")
        return 8.0

    avg = AverageMetric(read, timedelta(seconds=60), clock=clock)
    assert avg.read().value == 8.0
    state["fail"] = True
    clock.now += 10
    with pytest.raises(MetricError, match="read: failed: OSError: socket closed"):
        avg.read()
    assert avg.samples == 1
    state["fail"] = False
    clock.now += 10
    assert (avg.read().value, avg.samples) == (8.0, 2)


def test_average_window_must_be_positive() -> None:
    for bad in (0, -5, timedelta(0), float("inf")):
        with pytest.raises(SpecError) as err:
            AverageMetric(lambda: 1.0, bad)
        assert err.value.errors[0][0] == "window"


# -- BoundedMetric ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bounds",
    [(1, 10), (range(1, 11),), ("1:10",), ((1, 10),)],
    ids=["args", "range", "str", "pair"],
)
def test_bounded_metric_clamps_and_takes_the_seeds_range(bounds: tuple[object, ...]) -> None:
    metric = BoundedMetric(values(0, 4.5, 42), *bounds)  # type: ignore[arg-type]
    assert (metric.low, metric.high) == (1.0, 10.0)
    readings = [metric.read() for _ in range(3)]
    assert [r.value for r in readings] == [1.0, 4.5, 10.0]
    assert [r.inputs["unbounded"] for r in readings] == [0.0, 4.5, 42.0]
    assert str(metric) == "BoundedMetric(<lambda>, 1:10)"


def test_bounded_metric_keeps_the_inner_inputs() -> None:
    queue = Queue()
    queue.stats_by_name["work"] = QueueStats("work", 30, 2, 2, 0.0, 0.0)
    reading = BoundedMetric(WorkQueueMetric(queue), 1, 10).read()
    assert reading.value == 10.0
    assert {k: reading.inputs[k] for k in ("backlog", "unbounded", "low", "high")} == {
        "backlog": 32.0,
        "unbounded": 32.0,
        "low": 1.0,
        "high": 10.0,
    }


@pytest.mark.parametrize(
    ("args", "field", "rule"),
    [
        ((10, 1), "high", "must be >= low (10)"),
        ((range(5, 5),), "low", "range(5, 5) is empty"),
        (("1-10",), "low", "'1-10' is not 'low:high'"),
        ((range(1, 3), 4), "high", "not allowed when low is a range"),
        ((1,), "high", "is required with a numeric low"),
        (((1, 2, 3),), "low", "a pair must be (low, high)"),
    ],
)
def test_bad_bounds_name_the_field(args: tuple[object, ...], field: str, rule: str) -> None:
    with pytest.raises(SpecError) as err:
        BoundedMetric(lambda: 1.0, *args)  # type: ignore[arg-type]
    assert err.value.errors == [(field, rule)]


def test_bounded_range_with_a_step_takes_its_extremes() -> None:
    metric = BoundedMetric(lambda: 100.0, range(2, 11, 4))  # 2, 6, 10
    assert (metric.low, metric.high, metric.read().value) == (2.0, 10.0, 10.0)


# -- StoreMetric ------------------------------------------------------------------------------


@pytest.fixture
def store() -> Iterator[SqliteMetricStore]:
    s = SqliteMetricStore(":memory:")
    yield s
    s.close()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def test_store_metric_aggregates_the_last_period(store: SqliteMetricStore) -> None:
    for dt, value, queue in [(-90, 100, "work"), (-50, 10, "work"), (-5, 30, "work"), (-5, 7, "x")]:
        store.record("backlog", value, {"queue": queue}, at(dt))
    clock = Clock()

    def read(**kw: object) -> float:
        return StoreMetric(store, "backlog", clock=clock, **kw).read().value  # type: ignore[arg-type]

    assert read(tags={"queue": "work"}) == 20.0  # mean of 10 and 30 (-90 is outside 60 s)
    assert read(tags={"queue": "work"}, last=120) == pytest.approx(140 / 3)
    assert read(tags={"queue": "work"}, agg="max", last=timedelta(minutes=2)) == 100.0
    assert read(agg="last", last=10, tags={"queue": "x"}) == 7.0
    assert read(agg="count") == 3.0
    metric = StoreMetric(store, "backlog", agg="sum", tags={"queue": "work"}, clock=clock)
    assert metric.read() == Reading(
        40.0, "StoreMetric(sum(backlog), queue=work over 60s)", {"sum": 40.0}
    )


def test_store_metric_without_points_is_an_error_not_zero(store: SqliteMetricStore) -> None:
    store.record("backlog", 5, {}, at(-61))
    with pytest.raises(MetricError) as err:
        StoreMetric(store, "backlog", clock=Clock()).read()
    assert err.value.problem == "no points in that period"


def test_a_failing_store_is_a_metric_error(store: SqliteMetricStore) -> None:
    metric = StoreMetric(store, "backlog", clock=Clock())
    store.close()
    with pytest.raises(MetricError, match="the metric store failed") as err:
        metric.read()
    assert err.value.__cause__ is not None


def test_store_metric_inputs_are_validated(store: SqliteMetricStore) -> None:
    with pytest.raises(SpecError) as err:
        StoreMetric(store, "", agg="median", last=0)  # type: ignore[arg-type]
    assert [f for f, _ in err.value.errors] == ["name", "agg"]
    with pytest.raises(SpecError) as err:
        StoreMetric(store, "x", last=-1)
    assert err.value.errors == [("last", "must be positive")]


# -- CallableMetric ---------------------------------------------------------------------------


def test_functions_are_metrics() -> None:
    def backlog() -> float:
        return 7

    assert CallableMetric(backlog).read() == Reading(7.0, "backlog")
    reading = Reading(2.0, "custom", {"a": 1.0})
    assert CallableMetric(lambda: reading).read() == reading
    assert isinstance(as_metric(backlog), CallableMetric)
    metric = CallableMetric(backlog)
    assert as_metric(metric) is metric


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (float("inf"), "read inf, which is not a finite number"),
        (True, "read True, which is not a number"),
        ("12", "read '12', which is not a number"),
        (None, "read None, which is not a number"),
        (Reading(float("nan"), "r"), "read nan, which is not a finite number"),
    ],
)
def test_a_function_returning_bad_data_is_a_metric_error(result: object, problem: str) -> None:
    with pytest.raises(MetricError) as err:
        CallableMetric(lambda: result, name="probe").read()  # type: ignore[arg-type,return-value]
    assert (err.value.source, err.value.problem) == ("probe", problem)


def test_a_function_that_raises_is_a_metric_error_caused_by_it() -> None:
    def broken() -> float:
        raise KeyError("queue")

    with pytest.raises(MetricError) as err:
        CallableMetric(broken).read()
    assert err.value.problem == "failed: KeyError: 'queue'"
    assert isinstance(err.value.__cause__, KeyError)


def test_not_a_metric() -> None:
    with pytest.raises(SpecError) as err:
        as_metric(42)  # type: ignore[arg-type]
    assert err.value.errors[0][0] == "metric"


# -- HPAPolicy: the recommendation ------------------------------------------------------------


def r(value: float, source: str = "m") -> Reading:
    return Reading(value, source)


def test_direct_reading_asks_for_the_ceiling_of_the_value() -> None:
    policy = HPAPolicy(scale_down=ScalingRules())
    assert [policy.decide(3, r(v), [], T0).desired for v in (0, 0.2, 3.0, 4.0000000001, 7.5)] == [
        0,
        1,
        3,
        4,
        8,
    ]
    d = policy.decide(3, Reading(7.5, "backlog", {"ready": 7.5}), [], T0)
    assert d == Decision(T0, 3, 8, 7.5, "backlog reads 7.5: wants 8", {"ready": 7.5}, 8, "backlog")
    assert d.changed and str(d) == "job: 3 -> 8: backlog reads 7.5: wants 8"


def test_goes_straight_to_the_target_not_one_worker_per_interval() -> None:
    d = HPAPolicy(target=5).decide(1, r(50), [], T0)  # default: scale-up unlimited
    assert (d.current, d.desired) == (1, 10)


def test_average_value_target_uses_the_total() -> None:
    policy = HPAPolicy(target=10, scale_down=ScalingRules())
    assert policy.decide(4, r(95), [], T0).desired == 10  # ceil(95 / 10)
    assert policy.decide(4, r(25), [], T0).desired == 3  # ceil(2.5)
    assert policy.decide(0, r(1), [], T0).desired == 1  # from zero workers
    assert policy.decide(0, r(0), [], T0).desired == 0


def test_value_target_uses_current_times_ratio() -> None:
    policy = HPAPolicy(target=0.5, target_type="Value", min_workers=1, scale_down=ScalingRules())
    d = policy.decide(4, r(0.9, "cpu"), [], T0)
    assert (d.desired, d.reason) == (
        8,
        "cpu reads 0.9 for target 0.5 per worker (ratio 1.8): wants 8",
    )  # ceil(4 * 1.8 = 7.2)
    assert policy.decide(4, r(0.2), [], T0).desired == 2  # ceil(4 * 0.4 = 1.6)


@pytest.mark.parametrize(("value", "desired"), [(84, 8), (76, 8), (89, 9), (71, 8), (70, 7)])
def test_tolerance_keeps_the_count_near_the_target(value: float, desired: int) -> None:
    # 8 workers, target 10 each: within 10 % of 80 keeps 8 (84, 76); beyond it scales (89 -> 9,
    # 71 -> ceil(7.1) = 8 all the same, 70 -> 7).
    policy = HPAPolicy(target=10, scale_down=ScalingRules())
    assert policy.decide(8, r(value), [], T0).desired == desired


def test_tolerance_zero_always_follows_the_formula() -> None:
    policy = HPAPolicy(target=10, tolerance=0, scale_down=ScalingRules())
    assert policy.decide(8, r(81), [], T0).desired == 9


# -- HPAPolicy: stabilization -----------------------------------------------------------------


def run_policy(
    policy: Policy, series: Sequence[tuple[float, float]], current: int
) -> list[Decision]:
    """Decide at each ``(time offset, value)`` applying every decision, like a scaler does."""
    history: list[Decision] = []
    for dt, value in series:
        d = policy.decide(current, r(value), history, T0 + dt)
        history.append(d)
        current = d.desired
    return history


def test_scale_down_waits_for_the_highest_recommendation_of_the_window() -> None:
    policy = HPAPolicy(target=10)  # down: 300 s window, 100 % per 15 s
    series = [(0, 100), (60, 50), (120, 10), (240, 10), (300, 10), (359, 10), (361, 10)]
    got = [(d.recommendation, d.desired) for d in run_policy(policy, series, 1)]
    # 100 at +0 holds 10 until +300 (gone at +300); 50 at +60 holds 5 until +360; then 1.
    assert got == [(10, 10), (5, 10), (1, 10), (1, 10), (1, 5), (1, 5), (1, 1)]


def test_scale_up_stabilization_takes_the_lowest_recommendation_of_its_window() -> None:
    policy = HPAPolicy(
        target=10, scale_up=ScalingRules(stabilization=60), scale_down=ScalingRules()
    )
    series = [(0, 20), (30, 100), (60, 100), (91, 100)]
    got = [(d.recommendation, d.desired) for d in run_policy(policy, series, 2)]
    assert got == [(2, 2), (10, 2), (10, 10), (10, 10)]  # the 2 at +0 leaves the window at +60
    d = run_policy(policy, series[:2], 2)[-1]
    assert d.reason == (
        "m reads 100 for target 10 per worker (ratio 5): wants 10; "
        "scale-up stabilization keeps 2 (lowest in 60s: 2)"
    )


def square_wave(
    period: float, high: float, low: float, until: float, step: float
) -> list[tuple[float, float]]:
    return [
        (t, high if (t // (period / 2)) % 2 == 0 else low)
        for t in (i * step for i in range(int(until / step)))
    ]


def test_a_square_wave_flaps_without_stabilization_and_not_with_it() -> None:
    wave = square_wave(period=120, high=10, low=1, until=600, step=10)
    plain = HPAPolicy(scale_down=ScalingRules())
    flapping = run_policy(plain, wave, 1)
    assert [(round(d.at - T0), d.desired) for d in flapping if d.changed] == [
        (t, 10 if t % 120 == 0 else 1) for t in range(0, 600, 60)
    ]
    assert reversals(flapping) == 9
    steady = run_policy(HPAPolicy(), wave, 1)  # the default: 300 s scale-down window
    assert [(round(d.at - T0), d.desired) for d in steady if d.changed] == [(0, 10)]
    assert reversals(steady) == 0


# -- HPAPolicy: rate limits and bounds --------------------------------------------------------


def test_kubernetes_defaults_double_or_add_four_per_15_seconds() -> None:
    policy = HPAPolicy.kubernetes(target=1)
    series = [(0, 40), (5, 40), (15, 40), (30, 40), (45, 40)]
    got = [d.desired for d in run_policy(policy, series, 1)]
    # 1 -> max(2, 1+4) = 5; at +5 the period still counts those 4 -> 5; +15: 5 -> max(10, 9)
    # = 10; +30: 20; +45: 40.
    assert got == [5, 5, 10, 20, 40]
    d = run_policy(policy, series[:1], 1)[0]
    assert d.reason == (
        "m reads 40 for target 1 per worker (ratio 40): wants 40; "
        "rate limit 4 workers per 15s allows up to 5"
    )


def test_pods_limit_on_scale_down_and_the_period_sliding() -> None:
    down = ScalingRules(policies=[ScalingPolicy(type="Pods", value=2, period=60)])
    policy = HPAPolicy(target=1, scale_down=down)
    got = [d.desired for d in run_policy(policy, [(0, 1), (30, 1), (60, 1), (61, 1)], 10)]
    assert got == [8, 8, 6, 6]  # the removal at +0 leaves the 60 s period after +60


def test_select_min_takes_the_least_permissive_limit() -> None:
    up = ScalingRules(
        select="Min",
        policies=[
            ScalingPolicy(type="Percent", value=50, period=15),
            ScalingPolicy(type="Pods", value=10, period=15),
        ],
    )
    policy = HPAPolicy(target=1, scale_up=up)
    assert policy.decide(4, r(100), [], T0).desired == 6  # min(ceil(4 * 1.5), 4 + 10)
    down = ScalingRules(
        select="Min",
        policies=[
            ScalingPolicy(type="Percent", value=50, period=15),
            ScalingPolicy(type="Pods", value=1, period=15),
        ],
    )
    policy = HPAPolicy(target=1, scale_down=down)
    assert policy.decide(10, r(1), [], T0).desired == 9  # max(10 * 0.5, 10 - 1)
    assert (
        HPAPolicy(target=1, scale_down=ScalingRules(policies=down.policies))
        .decide(10, r(1), [], T0)
        .desired
        == 5
    )  # Max: the most change


def test_a_disabled_direction_never_moves() -> None:
    policy = HPAPolicy(target=1, scale_down=ScalingRules(select="Disabled"))
    assert policy.decide(10, r(1), [], T0).desired == 10
    assert policy.decide(10, r(20), [], T0).desired == 20
    up_off = HPAPolicy(
        target=1, scale_up=ScalingRules(select="Disabled"), scale_down=ScalingRules()
    )
    assert up_off.decide(3, r(20), [], T0).desired == 3
    assert up_off.decide(3, r(1), [], T0).desired == 1


def test_percent_limits_grow_from_zero_workers() -> None:
    up = ScalingRules(policies=[ScalingPolicy(type="Percent", value=100, period=15)])
    assert HPAPolicy(target=1, scale_up=up).decide(0, r(5), [], T0).desired == 2


def test_bounds_clamp_and_bring_a_count_outside_them_back() -> None:
    policy = HPAPolicy(min_workers=2, max_workers=6)
    d = policy.decide(3, r(0), [], T0)  # no history: nothing in the down window holds it
    assert (d.desired, d.reason) == (2, "m reads 0: wants 0; held at min_workers 2")
    d = policy.decide(3, r(50), [], T0)
    assert (d.desired, d.reason) == (6, "m reads 50: wants 50; held at max_workers 6")
    # Someone scaled the job to 12 by hand: back to 6 at once, windows or not.
    d = policy.decide(12, r(12), [], T0)
    assert (d.current, d.desired, d.reason) == (
        12,
        6,
        "m reads 12: wants 12; held at max_workers 6",
    )


def test_policy_inputs_are_validated() -> None:
    with pytest.raises(SpecError) as err:
        HPAPolicy.kubernetes(target=-1, max_workers=-1)
    assert [f for f, _ in err.value.errors] == ["target", "max_workers"]
    with pytest.raises(SpecError) as err:
        HPAPolicy(min_workers=5, max_workers=2)
    assert err.value.errors == [("max_workers", "must be >= min_workers (5)")]
    with pytest.raises(SpecError) as err:
        HPAPolicy(target=0, tolerance=1, windows=3)  # type: ignore[call-arg]
    assert [f for f, _ in err.value.errors] == ["target", "tolerance", "windows"]
    with pytest.raises(SpecError) as err:
        ScalingRules(stabilization=-1, policies=[{"type": "Nodes", "value": 0}])  # type: ignore[list-item]
    assert [f for f, _ in err.value.errors] == [
        "stabilization",
        "policies.0.type",
        "policies.0.value",
    ]


# -- callable policies ------------------------------------------------------------------------


def test_a_function_is_a_policy_and_sees_current_value_and_history() -> None:
    seen: list[tuple[int, float, int]] = []

    def step_up(current: int, value: float, history: Sequence[Decision]) -> int:
        seen.append((current, value, len(history)))
        return current + 1 if value > current else current

    policy = as_policy(step_up)
    assert isinstance(policy, CallablePolicy)
    got = run_policy(policy, [(0, 5), (10, 5), (20, 1)], 3)
    assert [d.desired for d in got] == [4, 5, 5]
    assert seen == [(3, 5.0, 0), (4, 5.0, 1), (5, 1.0, 2)]
    assert got[0].reason == "m reads 5: policy step_up wants 4"


@pytest.mark.parametrize(
    ("result", "why"),
    [
        (2.5, "policy f returned 2.5, not a worker count"),
        (True, "policy f returned True, not a worker count"),
        (None, "policy f returned None, not a worker count"),
        (-1, "policy f returned -1, outside 0..1000"),
        (1001, "policy f returned 1001, outside 0..1000"),
    ],
)
def test_a_function_returning_no_count_holds(result: object, why: str) -> None:
    policy = CallablePolicy(lambda c, v, h: result, name="f")  # type: ignore[arg-type,return-value]
    d = policy.decide(3, r(9), [], T0)
    assert (d.desired, d.value, d.recommendation, d.reason) == (
        3,
        None,
        None,
        f"holding at 3: {why}",
    )


def test_a_function_that_raises_holds_and_says_why() -> None:
    def broken(current: int, value: float, history: Sequence[Decision]) -> int:
        return 1 // 0

    d = as_policy(broken).decide(4, r(9), [], T0)
    assert d.reason == (
        "holding at 4: policy broken failed: ZeroDivisionError: integer division or modulo by zero"
    )
    assert as_policy(lambda c, v, h: 6.0).decide(1, r(0), [], T0).desired == 6  # a whole float


def test_policy_names() -> None:
    assert as_policy(None) == HPAPolicy() == as_policy("direct")
    policy = HPAPolicy(target=3)
    assert as_policy(policy) is policy
    for bad, rule in [
        ("hpa", "unknown policy 'hpa' (known: direct)"),
        (42, "must be a Policy, a function or 'direct'"),
    ]:
        with pytest.raises(SpecError) as err:
            as_policy(bad)  # type: ignore[arg-type]
        assert err.value.errors == [("policy", rule)]


def test_hold_decisions() -> None:
    d = Decision.hold(3, "metric q: no points", at=T0, job="workers")
    assert (d.current, d.desired, d.value, d.changed) == (3, 3, None, False)
    assert str(d) == "workers: stays 3: holding at 3: metric q: no points"
