"""The cluster planner (juliarun.scaling.planner): exact scale-up, gang demand, pool bounds,
headroom, scale-down that never interrupts what must not be, idempotent node names, and the
packing against the lower bound and first-fit decreasing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from juliarun.scaling.placement import (
    NODE_TYPE_LABEL,
    POOL_LABEL,
    Node,
    Pod,
    Resources,
    Taint,
    Toleration,
    admits,
    affinity_to,
)
from juliarun.scaling.planner import (
    SCALE_DOWN_TAINT,
    Headroom,
    NodeDecision,
    PoolShape,
    Unmet,
    first_fit_decreasing,
    lower_bound,
    plan,
)

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
GI = 2**30
TAINT = Taint(NODE_TYPE_LABEL, "highcpu", "NoSchedule")
TOL = Toleration(NODE_TYPE_LABEL, "Equal", "highcpu", "NoSchedule")
HIGHCPU = PoolShape.of(
    "highcpu", node_type="highcpu", cpu="4", memory="16Gi", taints=(TAINT,), max=10
)


def workers(job: str, n: int, cpu: str = "2", memory: str = "1Gi", **kw: Any) -> list[Pod]:
    return [
        Pod(
            f"{job}-{i}",
            job=job,
            namespace="jr",
            requests=Resources.of(cpu=cpu, memory=memory),
            node_selector={NODE_TYPE_LABEL: "highcpu"},
            tolerations=(TOL,),
            gated=True,
            **kw,
        )
        for i in range(n)
    ]


def on(pods: Sequence[Pod], *nodes: str) -> list[Pod]:
    """The pods running, round robin on ``nodes``."""
    out = []
    for i, p in enumerate(pods):
        out.append(
            Pod(
                p.name,
                job=p.job,
                namespace=p.namespace,
                requests=p.requests,
                node_selector=p.node_selector,
                tolerations=p.tolerations,
                critical=p.critical,
                safe_to_evict=p.safe_to_evict,
                interruptible=p.interruptible,
                node=nodes[i % len(nodes)],
                phase="Running",
            )
        )
    return out


def created(pool: PoolShape, *names: str, ready: bool = True, **kw: Any) -> list[Node]:
    taints = kw.pop("taints", pool.taints)
    return [Node(n, pool.allocatable, pool.node_labels(), taints, ready=ready, **kw) for n in names]


def decisions(p: Any) -> list[tuple[str, str, str]]:
    return [(d.node, d.action, d.reason) for d in p.decisions]


# ---------------------------------------------------------------------------------------------
# Scale-up
# ---------------------------------------------------------------------------------------------


def test_eight_workers_of_two_cpu_on_four_cpu_nodes_make_exactly_four_nodes() -> None:
    p = plan([], workers("par", 8), [HIGHCPU], now=T0)
    assert decisions(p) == [
        (f"highcpu-{i}", "add", "new node for 2 pending pod(s) of job par") for i in range(4)
    ]
    assert p.added() == {"highcpu": ["highcpu-0", "highcpu-1", "highcpu-2", "highcpu-3"]}
    assert p.placements == {f"jr/par-{i}": f"highcpu-{i // 2}" for i in range(8)}
    assert (p.unmet, p.remove, p.strategy) == ((), [], "gang-best-fit")
    labels = HIGHCPU.template("highcpu-0").labels
    assert labels == {POOL_LABEL: "highcpu", NODE_TYPE_LABEL: "highcpu"}


def test_a_restarted_planner_asks_for_no_duplicates() -> None:
    pods = workers("par", 8)
    first = plan([], pods, [HIGHCPU], now=T0)
    # killed after creating two of the four: those exist (not ready yet), the pods still wait
    partly = created(HIGHCPU, "highcpu-0", "highcpu-1", ready=False)
    again = plan(partly, pods, [HIGHCPU], now=T0 + timedelta(seconds=5))
    assert again.added() == {"highcpu": ["highcpu-2", "highcpu-3"]}
    assert {d.node: d.reason for d in again.keep} == {
        "highcpu-0": "2 pending pod(s) will run here",
        "highcpu-1": "2 pending pod(s) will run here",
    }
    assert sorted(first.added()["highcpu"]) == sorted(
        [n.name for n in partly] + again.added()["highcpu"]
    )
    # all four created: nothing more, whatever their state
    all4 = created(HIGHCPU, *first.added()["highcpu"], ready=False)
    assert plan(all4, pods, [HIGHCPU], now=T0).add == []
    # an old node of another pool with a clashing-looking name does not shift the numbering
    other = Node("highcpu-x", Resources.of(cpu="1", pods=10))
    assert plan([other], pods, [HIGHCPU], now=T0).added()["highcpu"][0] == "highcpu-0"
    # a gap in the numbers is filled first
    gap = created(HIGHCPU, "highcpu-1")
    assert plan(gap, pods, [HIGHCPU], now=T0).added() == {
        "highcpu": ["highcpu-0", "highcpu-2", "highcpu-3"]
    }


def test_running_pods_and_free_room_count_before_new_nodes() -> None:
    nodes = created(HIGHCPU, "highcpu-0", "highcpu-1")
    running = on(workers("old", 3), "highcpu-0", "highcpu-1")  # 2 + 1 on the two nodes
    p = plan(nodes, running + workers("new", 3), [HIGHCPU], now=T0)
    # 2 cpu free on highcpu-1 takes one new pod; two more need one node
    assert p.added() == {"highcpu": ["highcpu-2"]}
    assert p.placements == {
        "jr/new-0": "highcpu-1",
        "jr/new-1": "highcpu-2",
        "jr/new-2": "highcpu-2",
    }
    # pods that finished hold nothing; cordoned nodes take nothing
    done = [
        Pod(p.name, job="old", namespace="jr", requests=p.requests, node=p.node, phase="Succeeded")
        for p in running
    ]
    cordoned = created(HIGHCPU, "highcpu-0", unschedulable=True) + created(HIGHCPU, "highcpu-1")
    p = plan(cordoned, done + workers("new", 3), [HIGHCPU], now=T0)
    assert p.added() == {"highcpu": ["highcpu-2"]}


def test_pool_max_and_gangs_a_job_that_cannot_fit_whole_adds_nothing() -> None:
    big = workers("big", 30)  # 15 nodes' worth on a pool of at most 10
    small = workers("small", 4)
    p = plan([], big + small, [HIGHCPU], now=T0)
    assert p.unmet == (
        Unmet(
            "big",
            30,
            "30 pending pod(s) cannot be placed whole: pool highcpu is at its max of 10 nodes",
        ),
    )
    assert p.added() == {"highcpu": [f"highcpu-{i}" for i in range(2)]}
    assert set(p.placements) == {f"jr/small-{i}" for i in range(4)}
    # priority decides which job gets the room
    urgent = workers("big", 18, priority=5)
    p = plan([], urgent + small, [HIGHCPU], now=T0)
    assert [u.job for u in p.unmet] == ["small"]
    assert len(p.add) == 9


def test_demand_no_pool_can_serve_says_why() -> None:
    gpu = [Pod("g-0", job="g", requests=Resources.of(cpu="1", gpu=1))]
    huge = workers("huge", 1, cpu="8")
    picky = [Pod("p-0", job="p", requests=Resources.of(cpu="1"), node_selector={"zone": "z"})]
    pinned = [Pod("q-0", job="q", requests=Resources.of(cpu="1"), affinity=affinity_to(["n9"]))]
    plain = PoolShape.of("plain", cpu="2", memory="4Gi")
    p = plan([], gpu + huge + picky + pinned, [HIGHCPU, plain], now=T0)
    assert {u.job: u.reason for u in p.unmet} == {
        "g": "1 pending pod(s) cannot be placed whole: no node pool takes its pods: pool "
        "highcpu: untolerated taint juliarun.io/node-type=highcpu:NoSchedule; pool plain: "
        "nodes too small (gpu asks 1, a node has 0)",
        "huge": "1 pending pod(s) cannot be placed whole: no node pool takes its pods: pool "
        "highcpu: nodes too small (cpu asks 8, a node has 4); pool plain: node selector "
        "juliarun.io/node-type=highcpu does not match",
        "p": "1 pending pod(s) cannot be placed whole: no node pool takes its pods: pool "
        "highcpu: node selector zone=z does not match; pool plain: node selector zone=z does "
        "not match",
        "q": "1 pending pod(s) cannot be placed whole: its pods must run on n9 (node affinity) "
        "and those lack room",
    }
    assert p.add == []


def test_cheapest_pool_that_takes_the_pods() -> None:
    cheap = PoolShape.of(
        "cheap", node_type="highcpu", cpu="4", memory="16Gi", taints=(TAINT,), price=0.1
    )
    dear = PoolShape.of(
        "dear", node_type="highcpu", cpu="4", memory="16Gi", taints=(TAINT,), price=1.0
    )
    p = plan([], workers("j", 4), [dear, cheap], now=T0)
    assert p.added() == {"cheap": ["cheap-0", "cheap-1"]}


def test_pool_minimum() -> None:
    pool = PoolShape.of("base", cpu="2", memory="4Gi", min=2, max=3)
    p = plan([], [], [pool], now=T0)
    assert decisions(p) == [
        ("base-0", "add", "pool base keeps at least 2 node(s)"),
        ("base-1", "add", "pool base keeps at least 2 node(s)"),
    ]


# ---------------------------------------------------------------------------------------------
# Headroom
# ---------------------------------------------------------------------------------------------


def test_headroom_as_cpu_adds_nodes_so_the_next_job_does_not_wait() -> None:
    room = {"highcpu": Headroom.of(cpu="6")}
    p = plan([], workers("j", 3), [HIGHCPU], room, now=T0)
    # 3 x 2 cpu take 2 nodes (2 cpu left); 6 free wanted: one more node
    assert decisions(p) == [
        ("highcpu-0", "add", "new node for 2 pending pod(s) of job j"),
        ("highcpu-1", "add", "new node for 1 pending pod(s) of job j"),
        ("highcpu-2", "add", "headroom of pool highcpu: keeps room for cpu=6"),
    ]
    # once up and running the job, the planner keeps them all, and says why
    nodes = created(HIGHCPU, "highcpu-0", "highcpu-1", "highcpu-2")
    running = on(workers("j", 3), "highcpu-0", "highcpu-0", "highcpu-1")
    later = plan(
        nodes, running, [HIGHCPU], room, now=T0 + timedelta(hours=1), unneeded_after=timedelta(0)
    )
    assert decisions(later) == [
        ("highcpu-0", "keep", "100% used, above the 50% scale-down threshold"),
        ("highcpu-1", "keep", "holds headroom of pool highcpu (cpu=6)"),
        ("highcpu-2", "keep", "holds headroom of pool highcpu (cpu=6)"),
    ]


def test_headroom_as_pods_of_a_shape() -> None:
    room = {"highcpu": Headroom.of(pods=3, pod_cpu="3", pod_memory="1Gi")}
    nodes = created(HIGHCPU, "highcpu-0")
    p = plan(nodes, [], [HIGHCPU], room, now=T0)
    # one 3-cpu pod per 4-cpu node: the existing node holds one, two more nodes
    assert decisions(p) == [
        ("highcpu-0", "keep", "holds headroom of pool highcpu"),
        (
            "highcpu-1",
            "add",
            "headroom of pool highcpu: keeps room for 3 pod(s) of cpu=3, memory=1Gi",
        ),
        (
            "highcpu-2",
            "add",
            "headroom of pool highcpu: keeps room for 3 pod(s) of cpu=3, memory=1Gi",
        ),
    ]
    # the next job's pods fit the headroom: once there, only headroom is added again
    p = plan(
        created(HIGHCPU, "highcpu-0", "highcpu-1", "highcpu-2"),
        workers("next", 3, cpu="3"),
        [HIGHCPU],
        now=T0,
    )
    assert p.add == [] and len(p.placements) == 3


def test_headroom_beyond_the_pool_max_is_unmet() -> None:
    small = PoolShape.of("s", cpu="2", memory="4Gi", max=1)
    p = plan([], [], [small], {"s": Headroom.of(cpu="4"), "nope": Headroom.of(cpu="1")}, now=T0)
    assert p.added() == {"s": ["s-0"]}
    assert p.unmet == (
        Unmet("headroom:nope", 0, "headroom for unknown pool 'nope'"),
        Unmet("headroom:s", 0, "headroom cpu=4: pool s is at its max of 1"),
    )


# ---------------------------------------------------------------------------------------------
# Scale-down
# ---------------------------------------------------------------------------------------------

POOL1 = PoolShape.of(
    "highcpu", node_type="highcpu", cpu="4", memory="16Gi", taints=(TAINT,), min=1, max=10
)


def test_nodes_go_after_the_unneeded_time_down_to_the_minimum() -> None:
    nodes = created(POOL1, "highcpu-0", "highcpu-1", "highcpu-2", "highcpu-3")
    first = plan(nodes, [], [POOL1], now=T0)
    assert decisions(first) == [
        ("highcpu-0", "keep", "unneeded for 0s of 10m: it runs no pods"),
        ("highcpu-1", "keep", "unneeded for 0s of 10m: it runs no pods"),
        ("highcpu-2", "keep", "unneeded for 0s of 10m: it runs no pods"),
        ("highcpu-3", "keep", "pool highcpu keeps at least 1 node(s)"),
    ]
    assert first.unneeded_since == dict.fromkeys(["highcpu-0", "highcpu-1", "highcpu-2"], T0)
    mid = plan(
        nodes, [], [POOL1], now=T0 + timedelta(minutes=5), unneeded_since=first.unneeded_since
    )
    assert mid.remove == [] and mid.reason("highcpu-0") == "unneeded for 5m of 10m: it runs no pods"
    assert mid.unneeded_since == first.unneeded_since  # the clock keeps running
    later = plan(
        nodes, [], [POOL1], now=T0 + timedelta(minutes=11), unneeded_since=mid.unneeded_since
    )
    # empty nodes disrupt nothing: the budget does not hold them back
    assert [(d.node, d.reason) for d in later.remove] == [
        (f"highcpu-{i}", "unneeded for 11m: it runs no pods") for i in range(3)
    ]
    assert later.unneeded_since == {}
    # a node that became needed again starts over
    back = plan(
        nodes,
        workers("j", 2),
        [POOL1],
        now=T0 + timedelta(minutes=11),
        unneeded_since=mid.unneeded_since,
    )
    assert back.reason("highcpu-0") == "2 pending pod(s) will run here"
    assert "highcpu-0" not in back.unneeded_since


def test_a_node_whose_pods_can_move_is_removed_within_the_budget() -> None:
    nodes = created(POOL1, "highcpu-0", "highcpu-1", "highcpu-2", "highcpu-3")
    pods = (
        on(workers("a", 1), "highcpu-0")
        + on(workers("b", 1, cpu="1"), "highcpu-1")
        + on(workers("c", 1, cpu="1"), "highcpu-2")
    )
    since = dict.fromkeys(["highcpu-1", "highcpu-2", "highcpu-3"], T0)
    p = plan(
        nodes,
        pods,
        [POOL1],
        now=T0 + timedelta(minutes=20),
        unneeded_since=since,
        disruption_budget=1,
    )
    assert decisions(p) == [
        ("highcpu-0", "keep", "pool highcpu keeps at least 1 node(s)"),
        ("highcpu-1", "remove", "unneeded for 20m: its 1 pod(s) can move to other nodes"),
        (
            "highcpu-2",
            "keep",
            "unneeded for 20m, disruption budget used: its 1 pod(s) can move to other nodes",
        ),
        ("highcpu-3", "remove", "unneeded for 20m: it runs no pods"),
    ]
    assert p.moves == {"jr/b-0": "highcpu-0"}  # the fullest node that takes it
    p0 = plan(
        nodes,
        pods,
        [POOL1],
        now=T0 + timedelta(minutes=20),
        unneeded_since=since,
        disruption_budget=0,
    )
    assert [d.node for d in p0.remove] == ["highcpu-3"]


def test_a_node_running_a_critical_pod_is_never_removed() -> None:
    nodes = created(POOL1, "highcpu-0", "highcpu-1", "highcpu-2", "highcpu-3")
    small = dict(cpu="500m", memory="256Mi")
    pods = (
        on(workers("crit", 1, critical=True, **small), "highcpu-0")
        + on(workers("keep", 1, safe_to_evict=False, **small), "highcpu-1")
        + on(workers("mpi", 1, interruptible=False, **small), "highcpu-2")
    )
    since = dict.fromkeys([n.name for n in nodes], T0 - timedelta(days=1))
    p = plan(nodes, pods, [POOL1], now=T0, unneeded_since=since, disruption_budget=10)
    assert decisions(p) == [
        ("highcpu-0", "keep", "runs critical pod jr/crit-0"),
        ("highcpu-1", "keep", "runs pod jr/keep-0, not safe to evict"),
        ("highcpu-2", "keep", "runs pod jr/mpi-0 of non-interruptible job mpi"),
        ("highcpu-3", "remove", "unneeded for 24h: it runs no pods"),
    ]


def test_pods_that_cannot_move_keep_their_node_and_busy_nodes_stay() -> None:
    nodes = created(POOL1, "highcpu-0", "highcpu-1")
    pods = on(workers("a", 1, cpu="1500m"), "highcpu-0") + on(workers("b", 1, cpu="3"), "highcpu-1")
    p = plan(nodes, pods, [POOL1], now=T0, unneeded_after=timedelta(0), disruption_budget=5)
    assert decisions(p) == [
        ("highcpu-0", "keep", "pod jr/a-0 (cpu=1500m, memory=1Gi) has no other node to go to"),
        ("highcpu-1", "keep", "75% used, above the 50% scale-down threshold"),
    ]
    # pinned by affinity: cannot move either
    pinned = [
        Pod(
            "p-0",
            job="p",
            namespace="jr",
            requests=Resources.of(cpu="1"),
            affinity=affinity_to(["highcpu-0"]),
            tolerations=(TOL,),
            node="highcpu-0",
            phase="Running",
        )
    ]
    three = created(HIGHCPU, "highcpu-0", "highcpu-1", "highcpu-2")
    p = plan(three, pinned, [HIGHCPU], now=T0, unneeded_after=timedelta(0))
    assert p.reason("highcpu-0") == "pod jr/p-0 (cpu=1) has no other node to go to"


def test_pods_gather_on_busy_nodes_and_are_not_counted_twice() -> None:
    nodes = created(POOL1, "highcpu-0", "highcpu-1", "highcpu-2")
    pods = (
        on(workers("a", 1, cpu="1"), "highcpu-0")
        + on(workers("b", 1, cpu="1"), "highcpu-1")
        + on(workers("c", 1, cpu="1"), "highcpu-2")
    )
    p = plan(nodes, pods, [POOL1], now=T0, unneeded_after=timedelta(0), disruption_budget=5)
    # two of the three can go (their pods end on the third); the last one holds all three
    assert [d.action for d in p.decisions] == ["remove", "remove", "keep"]
    assert p.reason("highcpu-2") == "pool highcpu keeps at least 1 node(s)"


def test_a_draining_node_finishes_or_is_uncordoned() -> None:
    drain = Taint(SCALE_DOWN_TAINT, "", "NoSchedule")
    nodes = created(POOL1, "highcpu-0", taints=(TAINT, drain), unschedulable=True) + created(
        POOL1, "highcpu-1"
    )
    pods = on(workers("a", 1, cpu="1"), "highcpu-0")
    p = plan(nodes, pods, [POOL1], now=T0)
    assert decisions(p) == [
        ("highcpu-0", "remove", "finishing its drain: its 1 pod(s) can move to other nodes"),
        ("highcpu-1", "keep", "pool highcpu keeps at least 1 node(s)"),
    ]
    crit = on(workers("c", 1, cpu="1", critical=True), "highcpu-0")
    p = plan(nodes, crit, [POOL1], now=T0)
    assert p.uncordon == [
        NodeDecision("highcpu-0", "highcpu", "uncordon", "runs critical pod jr/c-0")
    ]
    # the draining node is not capacity: new demand goes elsewhere
    p = plan(nodes, workers("n", 3), [POOL1], now=T0)
    assert p.added() == {"highcpu": ["highcpu-2"]}


def test_nodes_outside_the_pools_are_left_alone() -> None:
    static = Node("control-plane", Resources.of(cpu="8", memory="32Gi", pods=110))
    p = plan([static], [], [POOL1], now=T0, unneeded_after=timedelta(0))
    assert decisions(p) == [
        ("control-plane", "keep", "not in a node pool juliarun manages"),
        ("highcpu-0", "add", "pool highcpu keeps at least 1 node(s)"),
    ]


# ---------------------------------------------------------------------------------------------
# Packing against the bound and first-fit decreasing (properties)
# ---------------------------------------------------------------------------------------------

SHAPES = [
    ("250m", "256Mi"),
    ("500m", "1Gi"),
    ("1", "2Gi"),
    ("1500m", "3Gi"),
    ("2", "1Gi"),
    ("3", "6Gi"),
]


@st.composite
def demand(draw: st.DrawFn) -> tuple[list[Node], list[Pod], PoolShape]:
    cpu, memory = draw(st.sampled_from([("4", "16Gi"), ("8", "16Gi"), ("4", "8Gi")]))
    slots = draw(st.sampled_from([8, 110]))
    pool = PoolShape.of(
        "p", node_type="highcpu", cpu=cpu, memory=memory, pods=slots, taints=(TAINT,), max=10_000
    )
    pods: list[Pod] = []
    for j in range(draw(st.integers(1, 8))):
        c, m = draw(st.sampled_from(SHAPES))
        pods += workers(f"j{j}", draw(st.integers(1, 24)), cpu=c, memory=m)
    nodes: list[Node] = []
    if draw(st.booleans()):  # some nodes already there, partly used
        nodes = created(pool, *(f"p-{i}" for i in range(draw(st.integers(1, 4)))))
        running = on(
            workers("r", draw(st.integers(1, 4)), cpu="1", memory="1Gi"), *(n.name for n in nodes)
        )
        pods = running + pods
    return nodes, pods, pool


def naive_ffd(nodes: list[Node], pods: list[Pod], pool: PoolShape) -> int:
    """First-fit decreasing pod by pod, written plainly: the reference for the planner's."""
    free = {n.name: n.allocatable for n in nodes}
    for p in pods:
        if p.node is not None:
            free[p.node] = free[p.node] - p.requests
    order_nodes = [n.name for n in nodes]
    largest = [
        max(v)
        for v in zip(
            *([n.allocatable.vector() for n in nodes] + [pool.allocatable.vector()]), strict=True
        )
    ]
    pending = [p for p in pods if p.node is None]
    pending.sort(
        key=lambda p: (
            tuple(
                sorted(
                    (
                        -(a / b) if b else 0.0
                        for a, b in zip(p.requests.vector(), largest, strict=True)
                    )
                )
            ),
            p.key,
        )
    )
    new = 0
    for p in pending:
        for name in order_nodes:
            if p.requests.fits_in(free[name]):
                free[name] = free[name] - p.requests
                break
        else:
            name = f"new-{new}"
            new += 1
            order_nodes.append(name)
            free[name] = pool.allocatable - p.requests
    return new


@settings(max_examples=120, deadline=None)
@given(demand())
def test_new_nodes_between_the_lower_bound_and_first_fit_decreasing(
    state: tuple[list[Node], list[Pod], PoolShape],
) -> None:
    nodes, pods, pool = state
    p = plan(nodes, pods, [pool], now=T0)
    added = len(p.add)
    ffd = first_fit_decreasing(nodes, pods, [pool])
    assert ffd.nodes_added == naive_ffd(nodes, pods, pool)
    assert added <= ffd.nodes_added
    # the bound on all nodes: everything that runs or waits, over a node's size
    assert len(nodes) + added >= lower_bound(pods, pool)
    if not nodes:
        assert added >= lower_bound(pods, pool)
    # the plan's placements overcommit nothing, and go only where the pods may run
    free = {n.name: n.allocatable for n in nodes} | {d.node: pool.allocatable for d in p.add}
    shape = {n.name: n for n in nodes} | {d.node: pool.template(d.node) for d in p.add}
    for q in pods:
        if q.node is not None:
            free[q.node] = free[q.node] - q.requests
    by_key = {q.key: q for q in pods}
    assert set(p.placements) == {q.key for q in pods if q.node is None}
    for key, where in p.placements.items():
        free[where] = free[where] - by_key[key].requests
        assert admits(by_key[key], shape[where], now=False).ok
    assert all(f.cpu >= 0 and f.memory >= 0 and f.pods >= 0 for f in free.values())


def test_lower_bound_is_per_resource() -> None:
    pool = PoolShape.of("p", cpu="4", memory="8Gi", pods=3)
    pods = [Pod(f"x{i}", requests=Resources.of(cpu="1", memory="1Gi")) for i in range(7)]
    assert lower_bound(pods, pool) == 3  # pods: 7 / 3 slots
    pods = [Pod(f"x{i}", requests=Resources.of(cpu="100m", memory="5Gi")) for i in range(2)]
    assert lower_bound(pods, pool) == 2  # memory: 10Gi / 8Gi


@st.composite
def shrinking(draw: st.DrawFn) -> tuple[list[Node], list[Pod], PoolShape, int, float]:
    pool = PoolShape.of(
        "p",
        node_type="highcpu",
        cpu="4",
        memory="8Gi",
        pods=6,
        taints=(TAINT,),
        min=draw(st.integers(0, 2)),
        max=50,
    )
    drain = Taint(SCALE_DOWN_TAINT, "", "NoSchedule")
    nodes, pods = [], []
    for i in range(draw(st.integers(1, 8))):
        draining = draw(st.integers(0, 5)) == 0
        nodes += created(
            pool, f"p-{i}", taints=(TAINT, drain) if draining else (TAINT,), unschedulable=draining
        )
        used = 0
        for k in range(draw(st.integers(0, 4))):
            c, m = draw(st.sampled_from(SHAPES[:4]))
            kind = draw(st.sampled_from(["plain", "plain", "plain", "critical", "evict", "mpi"]))
            [w] = workers(
                f"r{i}x{k}",
                1,
                cpu=c,
                memory=m,
                critical=kind == "critical",
                safe_to_evict=kind != "evict",
                interruptible=kind != "mpi",
            )
            if used + w.requests.cpu <= 4000:
                used += w.requests.cpu
                pods += on([w], f"p-{i}")
    for j in range(draw(st.integers(0, 2))):
        c, m = draw(st.sampled_from(SHAPES[:4]))
        pods += workers(f"new{j}", draw(st.integers(1, 3)), cpu=c, memory=m)
    return nodes, pods, pool, draw(st.integers(0, 3)), draw(st.sampled_from([0.5, 1.0]))


@settings(max_examples=150, deadline=None)
@given(shrinking())
def test_scale_down_removes_only_what_can_go_all_at_once(
    state: tuple[list[Node], list[Pod], PoolShape, int, float],
) -> None:
    nodes, pods, pool, budget, threshold = state
    since = {n.name: T0 - timedelta(days=1) for n in nodes}
    p = plan(
        nodes,
        pods,
        [pool],
        now=T0,
        unneeded_since=since,
        disruption_budget=budget,
        utilization_threshold=threshold,
    )
    by_name = {n.name: n for n in nodes}
    removed = {d.node for d in p.remove}
    draining = {n.name for n in nodes if any(t.key == SCALE_DOWN_TAINT for t in n.taints)}
    on_node: dict[str, list[Pod]] = {}
    for q in pods:
        if q.node is not None:
            on_node.setdefault(q.node, []).append(q)
    # never a node under a critical, not-safe-to-evict or non-interruptible pod
    assert not any(q.blocks_removal for name in removed for q in on_node.get(name, []))
    # within the budget (a drain under way finishes), never below the pool's minimum
    disrupting = [n for n in removed - draining if on_node.get(n)]
    assert len(disrupting) <= budget
    after = len([n for n in nodes if n.name not in draining]) - len(removed - draining) + len(p.add)
    assert after >= pool.min
    # never a node pending pods are planned on
    assert not removed & set(p.placements.values())
    # every pod of a removed node has somewhere to go, all at once, where it may run
    moving = [q for name in removed for q in on_node.get(name, [])]
    assert set(p.moves) == {q.key for q in moving}
    load = {n.name: Resources() for n in nodes} | {d.node: Resources() for d in p.add}
    for q in pods:
        if q.node is not None and q.node not in removed:
            load[q.node] = load[q.node] + q.requests
    by_key = {q.key: q for q in pods}
    for key, where in list(p.moves.items()) + list(p.placements.items()):
        assert where not in removed and where not in draining
        load[where] = load[where] + by_key[key].requests
        target = by_name.get(where) or pool.template(where)
        assert admits(by_key[key], target, now=False).ok and not target.unschedulable
    for name, used in load.items():
        alloc = by_name[name].allocatable if name in by_name else pool.allocatable
        assert used.fits_in(alloc), (name, used, alloc)


def test_per_node_overhead_is_kept_out_of_new_nodes() -> None:
    # DaemonSet pods take 500m and a slot on every node: one 2-cpu worker per 4-cpu node
    pool = PoolShape.of(
        "highcpu", node_type="highcpu", cpu="4", memory="16Gi", taints=(TAINT,), max=10,
        overhead_cpu="500m", overhead_memory="256Mi", overhead_pods=1,
    )  # fmt: skip
    assert pool.capacity == Resources(3500, 16 * GI - 256 * 2**20, 0, 109)
    p = plan([], workers("par", 8), [pool], now=T0)
    assert len(p.add) == 8 and len(set(p.placements.values())) == 8
    assert first_fit_decreasing([], workers("par", 8), [pool]).nodes_added == 8
    assert lower_bound(workers("par", 8), pool) == 5  # 16 cpu over 3.5 per node
    # once up, the node's own daemon pods are running pods like any other
    nodes = created(pool, "highcpu-0")
    daemon = Pod(
        "ds-0", requests=Resources.of(cpu="500m"), node="highcpu-0", daemon=True, phase="Running"
    )
    p = plan(nodes, [daemon, *workers("one", 1)], [pool], now=T0)
    assert (p.add, p.placements) == ([], {"jr/one-0": "highcpu-0"})
    big = workers("big", 1, cpu="3800m")
    assert (
        plan([], big, [pool], now=T0)
        .unmet[0]
        .reason.endswith("pool highcpu: nodes too small (cpu asks 3800m, a node has 3500m)")
    )
