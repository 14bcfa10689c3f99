"""The reservation-based cluster planner: from the nodes, the pods (running, pending, gated)
and the node pools to a :class:`Plan` — nodes to add per pool, nodes to remove, and a reason
for every node kept or changed.

Pure: no client calls, the clock is a parameter. Demand is what pending and gated pods
*request* (not load); each job's pending pods are placed whole (gang) on free room of the
existing nodes first and on new nodes of the cheapest pool that takes them, up to the pool's
``max``. Headroom keeps room free per pool, as cpu/memory/gpu or as a number of pods of a
shape. Scale-down removes a pool node only when every pod on it can move to another node,
after it has been unneeded for ``unneeded_after``, never under a critical pod
(``juliarun.io/critical``, ``cluster-autoscaler.kubernetes.io/safe-to-evict: "false"``) or a
pod of a non-interruptible job, and at most ``disruption_budget`` nodes with pods at a time.

New nodes are named ``<pool>-<n>`` with the smallest ``n`` no node has, so an autoscaler that
restarts mid-scale and plans again from the nodes created so far asks for no duplicates.

>>> from datetime import UTC, datetime
>>> highcpu = PoolShape.of("highcpu", node_type="highcpu", cpu="4", memory="16Gi", max=10)
>>> pods = [Pod(f"w-{i}", job="w", requests=Resources.of(cpu="2", memory="1Gi"),
...             node_selector={NODE_TYPE_LABEL: "highcpu"}) for i in range(8)]
>>> p = plan([], pods, [highcpu], now=datetime(2026, 1, 1, tzinfo=UTC))
>>> p.added()
{'highcpu': ['highcpu-0', 'highcpu-1', 'highcpu-2', 'highcpu-3']}
>>> print(p.decisions[0].reason)
new node for 2 pending pod(s) of job w
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from juliarun.errors import JuliaRunError
from juliarun.scaling.placement import (
    NODE_TYPE_LABEL,
    POOL_LABEL,
    Node,
    Pod,
    Resources,
    Taint,
    Toleration,
    admits,
    format_quantity,
)

SCALE_DOWN_TAINT = "juliarun.io/scale-down"
"""The taint the autoscaler puts on a node it drains before deleting it (effect NoSchedule):
a node carrying it is being removed (a restarted autoscaler finishes the job)."""
SPOT_LABEL = "juliarun.io/spot"
Vec = tuple[int, int, int, int]
_NAMES = ("cpu", "memory", "gpu", "pods")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolShape:
    """A node pool as the planner sees it: what one node offers (cpu in millicores, memory in
    bytes, GPUs, pod slots), the labels and taints its nodes carry (besides
    ``juliarun.io/pool: <name>`` and ``juliarun.io/node-type: <node_type>``), its size bounds,
    the price of a node per hour and whether it is spot capacity. ``overhead`` is what
    every new node spends before any pod of ours lands (DaemonSet pods: their requests and
    slots); the planner packs new nodes into ``capacity``, the allocatable less that."""

    name: str
    cpu: int
    memory: int
    node_type: str | None = None
    gpu: int = 0
    pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    min: int = 0
    max: int = 10
    price: float = 0.0
    spot: bool = False
    overhead: Resources = field(default_factory=Resources)

    @classmethod
    def of(
        cls,
        name: str,
        *,
        cpu: str = "4",
        memory: str = "16Gi",
        node_type: str | None = None,
        gpu: int = 0,
        pods: int = 110,
        labels: Mapping[str, str] | None = None,
        taints: Iterable[Taint] = (),
        min: int = 0,
        max: int = 10,
        price: float = 0.0,
        spot: bool = False,
        overhead_cpu: str = "0",
        overhead_memory: str = "0",
        overhead_pods: int = 0,
    ) -> PoolShape:
        """From Kubernetes quantities (``cpu="4"``, ``memory="16Gi"``)."""
        r = Resources.of(cpu=cpu, memory=memory)
        extra = Resources.of(cpu=overhead_cpu, memory=overhead_memory, pods=overhead_pods)
        return cls(
            name, r.cpu, r.memory, node_type, gpu, pods, dict(labels or {}), tuple(taints),
            min, max, price, spot, extra,
        )  # fmt: skip

    @property
    def allocatable(self) -> Resources:
        """What a node of the pool reports as allocatable."""
        return Resources(self.cpu, self.memory, self.gpu, self.pods)

    @property
    def capacity(self) -> Resources:
        """What a new node of the pool offers our pods: allocatable less the overhead."""
        return self.allocatable - self.overhead

    def node_labels(self) -> dict[str, str]:
        """The labels every node of the pool carries."""
        labels = dict(self.labels)
        labels[POOL_LABEL] = self.name
        if self.node_type:
            labels[NODE_TYPE_LABEL] = self.node_type
        if self.spot:
            labels[SPOT_LABEL] = "true"
        return labels

    def node_name(self, index: int) -> str:
        """The name of the pool's node number ``index``."""
        return f"{self.name}-{index}"

    def template(self, name: str | None = None) -> Node:
        """A node of the pool as it will be once up."""
        return Node(
            name or self.node_name(0),
            self.allocatable,
            self.node_labels(),
            self.taints,
        )


@dataclass(frozen=True)
class Headroom:
    """Room a pool keeps free for the next job: at least ``cpu`` millicores, ``memory`` bytes
    and ``gpu`` GPUs free in all of the pool's nodes together, and room for ``pods`` more pods
    of the requests ``shape`` (each on one node)."""

    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    pods: int = 0
    shape: Resources = field(default_factory=Resources)

    @classmethod
    def of(
        cls,
        *,
        cpu: str = "0",
        memory: str = "0",
        gpu: int = 0,
        pods: int = 0,
        pod_cpu: str = "0",
        pod_memory: str = "0",
        pod_gpu: int = 0,
    ) -> Headroom:
        """From Kubernetes quantities: ``Headroom.of(cpu="4")`` or ``Headroom.of(pods=2,
        pod_cpu="2", pod_memory="1Gi")``."""
        r = Resources.of(cpu=cpu, memory=memory)
        return cls(
            r.cpu, r.memory, gpu, pods, Resources.of(cpu=pod_cpu, memory=pod_memory, gpu=pod_gpu)
        )

    def __str__(self) -> str:
        parts = []
        if self.cpu or self.memory or self.gpu:
            parts.append(str(Resources(self.cpu, self.memory, self.gpu)))
        if self.pods:
            parts.append(f"{self.pods} pod(s) of {self.shape}")
        return " and ".join(parts) or "none"


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

Action = Literal["add", "remove", "keep", "uncordon"]


@dataclass(frozen=True)
class NodeDecision:
    """What the plan does with one node, and why."""

    node: str
    pool: str | None
    action: Action
    reason: str


@dataclass(frozen=True)
class Unmet:
    """Demand the plan cannot serve: ``pods`` pending pods of ``job``, and why."""

    job: str
    pods: int
    reason: str


@dataclass(frozen=True)
class Plan:
    """One planning loop's answer. ``decisions`` has one entry per node (existing and new),
    sorted by node name; ``placements`` where the plan expects each pending pod (pod key →
    node); ``unneeded_since`` is the input of the next loop; ``strategy`` the packing chosen
    (``gang-best-fit``, ``best-fit-decreasing`` or ``first-fit-decreasing``: the fewest new
    nodes wins); ``moves`` where the pods of the nodes removed can go (pod key → node), all
    at once."""

    decisions: tuple[NodeDecision, ...]
    unmet: tuple[Unmet, ...] = ()
    unneeded_since: Mapping[str, datetime] = field(default_factory=dict)
    placements: Mapping[str, str] = field(default_factory=dict)
    strategy: str = "gang-best-fit"
    moves: Mapping[str, str] = field(default_factory=dict)

    def _of(self, action: Action) -> list[NodeDecision]:
        return [d for d in self.decisions if d.action == action]

    @property
    def add(self) -> list[NodeDecision]:
        return self._of("add")

    @property
    def remove(self) -> list[NodeDecision]:
        return self._of("remove")

    @property
    def keep(self) -> list[NodeDecision]:
        return self._of("keep")

    @property
    def uncordon(self) -> list[NodeDecision]:
        return self._of("uncordon")

    def added(self) -> dict[str, list[str]]:
        """New node names per pool."""
        out: dict[str, list[str]] = {}
        for d in self.add:
            out.setdefault(d.pool or "", []).append(d.node)
        return out

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Per pool, its nodes before and after the plan (the artifact's table row).

        >>> Plan((NodeDecision("a-0", "a", "keep", ""), NodeDecision("a-1", "a", "remove", ""),
        ...       NodeDecision("b-0", "b", "add", ""))).sizes()
        {'a': (2, 1), 'b': (0, 1)}
        """
        out: dict[str, list[int]] = {}
        for d in self.decisions:
            if d.pool is None:
                continue
            row = out.setdefault(d.pool, [0, 0])
            row[0] += d.action != "add"
            row[1] += d.action != "remove"
        return {pool: (row[0], row[1]) for pool, row in sorted(out.items())}

    def reason(self, node: str) -> str:
        """Why the plan does what it does with ``node``."""
        for d in self.decisions:
            if d.node == node:
                return d.reason
        raise KeyError(node)


# ---------------------------------------------------------------------------------------------
# The ledger: free room per node, existing and new
# ---------------------------------------------------------------------------------------------


def _vec(r: Resources) -> Vec:
    return (r.cpu, r.memory, r.gpu, r.pods)


def _count(free: list[int], v: Vec) -> int:
    """How many items of ``v`` fit in ``free``."""
    k = free[3] // v[3] if v[3] > 0 else 1 << 62
    for r in range(3):
        if v[r] > 0:
            k = min(k, free[r] // v[r])
    return max(k, 0)


def _dominant(v: Vec, alloc: Vec) -> int:
    best, share = 0, -1.0
    for r in range(4):
        s = v[r] / alloc[r] if alloc[r] > 0 else (float("inf") if v[r] else 0.0)
        if s > share:
            best, share = r, s
    return best


class _Batch:
    """The pending pods of one job that share a scheduling key."""

    __slots__ = ("job", "key", "pods", "rep", "size", "vec")

    def __init__(self, job: str, key: Any, pods: list[Pod], largest: Vec) -> None:
        self.job = job
        self.key = key
        self.pods = pods
        self.rep = pods[0]
        self.vec = _vec(pods[0].requests)
        self.size = tuple(
            sorted(
                (self.vec[r] / largest[r] if largest[r] else 0.0 for r in range(4)), reverse=True
            )
        )


class _Cluster:
    """What does not change during a loop: the nodes, pools, and which pods can go where."""

    def __init__(
        self, nodes: Sequence[Node], pods: Sequence[Pod], pools: Sequence[PoolShape]
    ) -> None:
        self.nodes = list(nodes)
        self.pools = list(pools)
        self.pool_by = {p.name: p for p in pools}
        self.templates = {p.name: p.template() for p in pools}
        self.index = {n.name: i for i, n in enumerate(nodes)}
        self.alloc: list[Vec] = [_vec(n.allocatable) for n in nodes]
        self.kinds: list[Vec] = []  # the distinct allocatables
        kind_of: dict[Vec, int] = {}
        for a in self.alloc + [_vec(p.allocatable) for p in pools]:
            if a not in kind_of:
                kind_of[a] = len(self.kinds)
                self.kinds.append(a)
        self.kind = [kind_of[a] for a in self.alloc]
        self.pool_kind = {p.name: kind_of[_vec(p.allocatable)] for p in pools}
        self.free: list[list[int]] = [list(a) for a in self.alloc]
        self.running: list[list[Pod]] = [[] for _ in nodes]
        self.pool_of: list[str | None] = [n.pool if n.pool in self.pool_by else None for n in nodes]
        self.draining = [any(t.key == SCALE_DOWN_TAINT for t in n.taints) for n in nodes]
        self.usable = [
            not n.unschedulable and not d for n, d in zip(nodes, self.draining, strict=True)
        ]
        self.class_keys = [n.class_key() for n in nodes]
        self.pending: list[Pod] = []
        self.keys: list[Any] = []  # the scheduling key of each pending pod
        for p in pods:
            if p.terminal:
                continue
            if p.node is None:
                if not p.daemon:
                    self.pending.append(p)
                    self.keys.append(p.scheduling_key())
                continue
            i = self.index.get(p.node)
            if i is None:
                continue
            f, r = self.free[i], p.requests
            f[0] -= r.cpu
            f[1] -= r.memory
            f[2] -= r.gpu
            f[3] -= r.pods
            self.running[i].append(p)
        self.pool_count = {p.name: 0 for p in pools}
        for i, name in enumerate(self.pool_of):
            if name is not None and not self.draining[i]:
                self.pool_count[name] += 1
        vecs = self.alloc + [_vec(p.allocatable) for p in pools]
        self.largest: Vec = (
            tuple(max(v[r] for v in vecs) for r in range(4)) if vecs else (1, 1, 1, 1)  # type: ignore[assignment]
        )
        self._admits: dict[tuple[Any, Any], bool] = {}
        self._existing: dict[Any, list[int]] = {}
        self._pools: dict[Any, list[str]] = {}
        taken: dict[str, set[int]] = {p.name: set() for p in pools}
        pattern = re.compile(r"(.+)-(\d+)")
        for n in nodes:
            m = pattern.fullmatch(n.name)
            if m and m.group(1) in taken:
                taken[m.group(1)].add(int(m.group(2)))
        self.taken = taken

    def admits(self, pod: Pod, key: Any, i: int) -> bool:
        """Whether existing node ``i`` takes pods like ``pod`` (resources aside), as it will be
        once up; cordoned and draining nodes take none."""
        if not self.usable[i]:
            return False
        ck = (key, self.nodes[i].name if pod.affinity else self.class_keys[i])
        ok = self._admits.get(ck)
        if ok is None:
            ok = self._admits[ck] = bool(admits(pod, self.nodes[i], now=False))
        return ok

    def existing_for(self, pod: Pod, key: Any) -> list[int]:
        """The existing nodes that take pods like ``pod``, in node order."""
        out = self._existing.get(key)
        if out is None:
            out = self._existing[key] = [
                i for i in range(len(self.nodes)) if self.admits(pod, key, i)
            ]
        return out

    def pools_for(self, pod: Pod, key: Any) -> list[str]:
        """The pools whose new nodes take pods like ``pod`` (resources aside), cheapest first."""
        out = self._pools.get(key)
        if out is None:
            ok = [
                p
                for p in self.pools
                if not pod.node_names and admits(pod, self.templates[p.name], now=False)
            ]
            out = self._pools[key] = [p.name for p in sorted(ok, key=lambda p: p.price)]
        return out

    def why_no_pool(self, pod: Pod) -> str:
        if not self.pools:
            return "no node pools are configured"
        if pod.node_names:
            names = ", ".join(sorted(pod.node_names))
            return f"its pods must run on {names} (node affinity) and those lack room"
        parts = []
        for p in self.pools:
            verdict = admits(pod, self.templates[p.name], now=False)
            if not verdict:
                parts.append(f"pool {p.name}: {verdict.reason}")
            else:
                short = pod.requests.short_of(p.capacity)
                parts.append(
                    f"pool {p.name}: nodes too small ("
                    + ", ".join(
                        f"{r} asks {format_quantity(r, pod.requests.get(r))}, a node has "
                        f"{format_quantity(r, p.capacity.get(r))}"
                        for r in short
                    )
                    + ")"
                )
        return "no node pool takes its pods: " + "; ".join(parts)


class _Ledger:
    """Free room per node during one packing: existing nodes, then the new nodes opened."""

    def __init__(self, cluster: _Cluster) -> None:
        self.c = cluster
        self.n_existing = len(cluster.nodes)
        self.free = [list(f) for f in cluster.free]
        self.alloc = list(cluster.alloc)
        self.kind = list(cluster.kind)
        self.new: list[tuple[str, str]] = []  # (pool, name) of node n + k
        self.count = dict(cluster.pool_count)
        self.taken = {k: set(v) for k, v in cluster.taken.items()}
        self.next = dict.fromkeys(self.taken, 0)
        self.where: dict[str, int] = {}  # pending pod key -> node index
        self.why: dict[int, dict[str, int]] = {}  # new node -> job -> pods
        self._cands: dict[Any, tuple[list[int], set[str]]] = {}

    def name(self, i: int) -> str:
        n = self.n_existing
        return self.c.nodes[i].name if i < n else self.new[i - n][1]

    def open(self, pool: str) -> int:
        k = self.next[pool]
        taken = self.taken[pool]
        while k in taken:
            k += 1
        taken.add(k)
        self.next[pool] = k + 1
        shape = self.c.pool_by[pool]
        self.new.append((pool, shape.node_name(k)))
        self.alloc.append(_vec(shape.allocatable))
        self.kind.append(self.c.pool_kind[pool])
        self.free.append(list(_vec(shape.capacity)))
        self.count[pool] += 1
        i = len(self.free) - 1
        for cands, pools in self._cands.values():
            if pool in pools:
                cands.append(i)
        return i

    def close_last(self) -> None:
        pool, name = self.new.pop()
        self.alloc.pop()
        self.kind.pop()
        self.free.pop()
        self.count[pool] -= 1
        k = int(name.rsplit("-", 1)[1])
        self.taken[pool].discard(k)
        self.next[pool] = min(self.next[pool], k)
        i = len(self.free)
        for cands, _ in self._cands.values():
            if cands and cands[-1] == i:
                cands.pop()

    def candidates(self, batch: _Batch) -> list[int]:
        entry = self._cands.get(batch.key)
        if entry is None:
            pools = set(self.c.pools_for(batch.rep, batch.key))
            cands = list(self.c.existing_for(batch.rep, batch.key))
            n = self.n_existing
            cands += [n + k for k, (pool, _) in enumerate(self.new) if pool in pools]
            entry = self._cands[batch.key] = (cands, pools)
        return entry[0]

    def forget_candidates(self) -> None:
        self._cands.clear()

    def take(self, i: int, v: Vec, k: int) -> None:
        f = self.free[i]
        f[0] -= v[0] * k
        f[1] -= v[1] * k
        f[2] -= v[2] * k
        f[3] -= v[3] * k

    def give(self, i: int, v: Vec, k: int) -> None:
        self.take(i, v, -k)


# ---------------------------------------------------------------------------------------------
# Packing demand
# ---------------------------------------------------------------------------------------------


class _NoRoomError(JuliaRunError):
    """Demand finds no room (never leaves the planner: it becomes an :class:`Unmet`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _fill(ledger: _Ledger, batch: _Batch, order: Literal["best", "first"], log: list[Any]) -> None:
    """Place all of ``batch`` on existing and new nodes, or raise :class:`_NoRoomError`."""
    v = batch.vec
    pods = batch.pods
    placed = 0
    total = len(pods)
    cands = ledger.candidates(batch)
    free = ledger.free
    kind = ledger.kind
    best = order == "best"
    v0, v1, v2, v3 = v
    kinds = ledger.c.kinds
    doms = [_dominant(v, a) for a in kinds]
    alive: list[tuple[float, int, int]] = []
    keep: list[int] = []
    for i in cands:  # the hot loop of the planner: inlined _count and tightness
        f = free[i]
        k = f[3] // v3
        if v0:
            q = f[0] // v0
            k = q if q < k else k
        if v1:
            q = f[1] // v1
            k = q if q < k else k
        if v2:
            q = f[2] // v2
            k = q if q < k else k
        if k <= 0:
            continue
        keep.append(i)
        if best:
            c = kind[i]
            d = doms[c]
            alive.append(((f[d] - v[d]) / kinds[c][d], i, k))
        else:
            alive.append((0.0, i, k))
    cands[:] = keep  # nodes that cannot take one now never will during this packing
    if best:
        heapq.heapify(alive)
    while alive and placed < total:
        _, i, k = heapq.heappop(alive) if best else alive.pop(0)
        take = min(k, total - placed)
        _assign(ledger, batch, i, start=placed, k=take, log=log)
        placed += take
    while placed < total:
        pool = _choose_pool(ledger, batch, total - placed)
        i = ledger.open(pool)
        log.append(("open", i))
        k = _count(free[i], v)
        take = min(k, total - placed)
        _assign(ledger, batch, i, start=placed, k=take, log=log)
        placed += take


def _assign(ledger: _Ledger, batch: _Batch, i: int, *, start: int, k: int, log: list[Any]) -> None:
    ledger.take(i, batch.vec, k)
    log.append(("take", i, batch.vec, k, batch.job))
    for p in batch.pods[start : start + k]:
        ledger.where[p.key] = i
    if i >= ledger.n_existing:
        jobs = ledger.why.setdefault(i, {})
        jobs[batch.job] = jobs.get(batch.job, 0) + k


def _choose_pool(ledger: _Ledger, batch: _Batch, remaining: int) -> str:
    c = ledger.c
    best: tuple[Any, str] | None = None
    full = []
    for name in c.pools_for(batch.rep, batch.key):
        shape = c.pool_by[name]
        k = _count(list(_vec(shape.capacity)), batch.vec)
        if k == 0:
            continue
        if ledger.count[name] >= shape.max:
            full.append(f"pool {name} is at its max of {shape.max} nodes")
            continue
        nodes = -(-remaining // k)
        score = (shape.price * nodes, nodes)
        if best is None or score < best[0]:
            best = (score, name)
    if best is not None:
        return best[1]
    if full:
        raise _NoRoomError("; ".join(full))
    raise _NoRoomError(c.why_no_pool(batch.rep))


def _undo(ledger: _Ledger, log: list[Any]) -> None:
    touched = False
    for entry in reversed(log):
        if entry[0] == "take":
            _, i, v, k, job = entry
            ledger.give(i, v, k)
            touched = True
            jobs = ledger.why.get(i)
            if jobs is not None and job in jobs:
                jobs[job] -= k
                if not jobs[job]:
                    del jobs[job]
                if not jobs:
                    del ledger.why[i]
        else:
            ledger.close_last()
    if touched:
        ledger.forget_candidates()  # room came back: pruned candidates may fit again


def _jobs(cluster: _Cluster) -> list[tuple[str, int, list[_Batch]]]:
    largest = cluster.largest
    by_job: dict[str, dict[Any, list[Pod]]] = {}
    priority: dict[str, int] = {}
    for p, key in zip(cluster.pending, cluster.keys, strict=True):
        job = p.job or p.key
        by_job.setdefault(job, {}).setdefault(key, []).append(p)
        priority[job] = max(priority.get(job, p.priority), p.priority)
    out = []
    for job, groups in by_job.items():
        batches = [
            _Batch(job, key, sorted(pods, key=lambda p: p.key), largest)
            for key, pods in groups.items()
        ]
        batches.sort(key=lambda b: (tuple(-s for s in b.size), b.rep.key))
        out.append((job, priority[job], batches))
    out.sort(key=lambda j: (-j[1], j[0]))
    return out


def _pack_gang(
    cluster: _Cluster, jobs: list[tuple[str, int, list[_Batch]]]
) -> tuple[_Ledger, list[Unmet]]:
    """Jobs by priority, each whole (best fit) or rolled back with the reason."""
    ledger = _Ledger(cluster)
    unmet: list[Unmet] = []
    for job, _, batches in jobs:
        log: list[Any] = []
        try:
            for batch in batches:
                _fill(ledger, batch, "best", log)
        except _NoRoomError as failed:
            _undo(ledger, log)
            for batch in batches:
                for p in batch.pods:
                    ledger.where.pop(p.key, None)
            pods = sum(len(b.pods) for b in batches)
            unmet.append(
                Unmet(job, pods, f"{pods} pending pod(s) cannot be placed whole: {failed.reason}")
            )
    return ledger, unmet


def _pack_global(cluster: _Cluster, jobs: list[tuple[str, int, list[_Batch]]]) -> _Ledger | None:
    """All batches largest first (best fit); ``None`` when some pod finds no room."""
    ledger = _Ledger(cluster)
    batches = [b for _, _, bs in jobs for b in bs]
    batches.sort(key=lambda b: (tuple(-s for s in b.size), b.rep.key))
    try:
        for batch in batches:
            _fill(ledger, batch, "best", [])
    except _NoRoomError:
        return None
    return ledger


# ---------------------------------------------------------------------------------------------
# First-fit decreasing: the reference
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstFit:
    """What first-fit decreasing makes of the demand: new node names per pool (in opening
    order), where each pending pod goes (pod key → node name) and the pods it cannot place."""

    added: Mapping[str, list[str]]
    assignment: Mapping[str, str]
    unplaced: tuple[str, ...]

    @property
    def nodes_added(self) -> int:
        return sum(len(v) for v in self.added.values())


def first_fit_decreasing(
    nodes: Sequence[Node], pods: Sequence[Pod], pools: Sequence[PoolShape]
) -> FirstFit:
    """The textbook baseline, pod by pod: pending pods largest first (by their largest share
    of the biggest node), each on the first node (existing in the order given, then new ones in
    the order opened) it fits, else on a new node of the first pool (in the order given) that
    takes it and is below its max. What cluster-autoscaler's estimator does; the planner never
    asks for more new nodes than this on the same input."""
    return _first_fit(_Cluster(nodes, pods, pools))[0]


def _first_fit(cluster: _Cluster) -> tuple[FirstFit, _Ledger]:
    """First-fit decreasing. Pods with the same scheduling key that follow each other in the
    order are placed as one run: pod by pod, first fit puts them on the first node with room
    until it is full, then on the next, which is what filling node by node does."""
    ledger = _Ledger(cluster)
    largest = cluster.largest
    order: list[tuple[tuple[float, ...], str, int, Pod, Any]] = []
    sizes: dict[Resources, tuple[float, ...]] = {}
    for index, (p, key) in enumerate(zip(cluster.pending, cluster.keys, strict=True)):
        size = sizes.get(p.requests)
        if size is None:
            v = _vec(p.requests)
            shares = [v[r] / largest[r] if largest[r] else 0.0 for r in range(4)]
            size = sizes[p.requests] = tuple(sorted(-s for s in shares))
        order.append((size, p.key, index, p, key))
    order.sort()
    runs: list[tuple[Any, list[Pod]]] = []
    for _, _, _, pod, key in order:
        if runs and runs[-1][0] == key:
            runs[-1][1].append(pod)
        else:
            runs.append((key, [pod]))
    start: dict[Any, int] = {}
    nodes_for: dict[Any, list[int]] = {}
    pools_for: dict[Any, set[str]] = {}
    unplaced: list[str] = []
    n = len(cluster.nodes)
    free = ledger.free
    for key, run in runs:
        rep = run[0]
        v = _vec(rep.requests)
        seq = nodes_for.get(key)
        if seq is None:
            pools_ok = pools_for[key] = set(cluster.pools_for(rep, key))
            seq = nodes_for[key] = list(cluster.existing_for(rep, key))
            seq += [n + k for k, (pool, _) in enumerate(ledger.new) if pool in pools_ok]
        j = start.get(key, 0)
        done = 0
        while done < len(run):
            while j < len(seq) and _count(free[seq[j]], v) == 0:
                j += 1
            if j == len(seq):
                chosen = next(
                    (
                        p.name
                        for p in cluster.pools
                        if p.name in pools_for[key]
                        and ledger.count[p.name] < p.max
                        and _count(list(_vec(p.capacity)), v) > 0
                    ),
                    None,
                )
                if chosen is None:
                    unplaced.extend(p.key for p in run[done:])
                    break
                i = ledger.open(chosen)
                for other_key, other in nodes_for.items():
                    if other_key != key and chosen in pools_for[other_key]:
                        other.append(i)
                seq.append(i)
            i = seq[j]
            take = min(_count(free[i], v), len(run) - done)
            ledger.take(i, v, take)
            for pod in run[done : done + take]:
                ledger.where[pod.key] = i
                if i >= n:
                    job = pod.job or pod.key
                    jobs = ledger.why.setdefault(i, {})
                    jobs[job] = jobs.get(job, 0) + 1
            done += take
        start[key] = j
    added: dict[str, list[str]] = {}
    for pool, name in ledger.new:
        added.setdefault(pool, []).append(name)
    where = {k: ledger.name(i) for k, i in ledger.where.items()}
    return FirstFit(added, where, tuple(unplaced)), ledger


def _new_node_bound(cluster: _Cluster, jobs: list[tuple[str, int, list[_Batch]]]) -> int | None:
    """A lower bound on the new nodes any packing needs, when every pending pod fits exactly
    one pool: per pool, the demand beyond all free room of the existing nodes its pods may use,
    over a node's size, resource by resource."""
    demand: dict[str, list[int]] = {}
    reach: dict[str, set[int]] = {}
    for _, _, batches in jobs:
        for b in batches:
            pools = cluster.pools_for(b.rep, b.key)
            if len(pools) != 1:
                return None
            d = demand.setdefault(pools[0], [0, 0, 0, 0])
            for r in range(4):
                d[r] += b.vec[r] * len(b.pods)
            reach.setdefault(pools[0], set()).update(cluster.existing_for(b.rep, b.key))
    bound = 0
    for pool, d in demand.items():
        room = [0, 0, 0, 0]
        for i in reach[pool]:
            f = cluster.free[i]
            for r in range(4):
                room[r] += max(f[r], 0)
        size = _vec(cluster.pool_by[pool].capacity)
        bound += max(
            (-(-(d[r] - room[r]) // size[r]) for r in range(4) if d[r] > room[r] and size[r]),
            default=0,
        )
    return bound


def lower_bound(pods: Iterable[Pod], shape: PoolShape) -> int:
    """The fewest nodes of ``shape`` that hold ``pods``' requests, resource by resource
    (their sum over what a new node offers, its capacity, rounded up)."""
    total = [0, 0, 0, 0]
    for p in pods:
        if not p.terminal:
            v = _vec(p.requests)
            for r in range(4):
                total[r] += v[r]
    alloc = _vec(shape.capacity)
    need = 0
    for r in range(4):
        if total[r]:
            if alloc[r] <= 0:
                raise ValueError(f"pool {shape.name} has no {_NAMES[r]}")
            need = max(need, -(-total[r] // alloc[r]))
    return need


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


def _headroom_pod(pool: str, shape: Resources, index: int) -> Pod:
    return Pod(
        f"{pool}-{index}",
        requests=shape,
        job=f"headroom:{pool}",
        namespace=_HEADROOM,
        node_selector={POOL_LABEL: pool},
        tolerations=(Toleration(None, "Exists"),),
    )


_HEADROOM = "juliarun.io/headroom"  # the namespace of the pods that stand for headroom
_HEADROOM_KEY = _HEADROOM + "/"


def _pool_free(ledger: _Ledger, pool: str, gone: set[int]) -> list[int]:
    c = ledger.c
    total = [0, 0, 0]
    n = ledger.n_existing
    for i in range(len(ledger.free)):
        if i in gone:
            continue
        if i < n:
            if c.pool_of[i] != pool or not c.usable[i]:
                continue
        elif ledger.new[i - n][0] != pool:
            continue
        f = ledger.free[i]
        for r in range(3):
            total[r] += max(f[r], 0)
    return total


def _headroom(
    ledger: _Ledger, headroom: Mapping[str, Headroom], reasons: dict[int, str], unmet: list[Unmet]
) -> None:
    """Open the nodes each pool's headroom needs beyond what demand left free."""
    c = ledger.c
    for pool, room in sorted(headroom.items()):
        shape = c.pool_by.get(pool)
        job = f"headroom:{pool}"
        if shape is None:
            unmet.append(Unmet(job, 0, f"headroom for unknown pool {pool!r}"))
            continue
        before = len(ledger.new)
        if room.pods:
            pods = [_headroom_pod(pool, room.shape, k) for k in range(room.pods)]
            batch = _Batch(job, pods[0].scheduling_key(), pods, c.largest)
            log: list[Any] = []
            try:
                _fill(ledger, batch, "best", log)
            except _NoRoomError as failed:
                _undo(ledger, log)
                for p in pods:
                    ledger.where.pop(p.key, None)
                unmet.append(Unmet(job, room.pods, f"headroom {room}: {failed.reason}"))
        want = (room.cpu, room.memory, room.gpu)
        size = _vec(shape.capacity)
        have = _pool_free(ledger, pool, set())
        deficit = [max(want[r] - have[r], 0) for r in range(3)]
        if any(deficit):
            if any(d and not size[r] for r, d in enumerate(deficit)):
                unmet.append(Unmet(job, 0, f"headroom {room}: pool {pool} nodes have no gpu"))
            else:
                need = max(-(-d // size[r]) for r, d in enumerate(deficit) if d)
                left = max(shape.max - ledger.count[pool], 0)
                for _ in range(min(need, left)):
                    ledger.open(pool)
                if need > left:
                    unmet.append(
                        Unmet(job, 0, f"headroom {room}: pool {pool} is at its max of {shape.max}")
                    )
        for i in range(ledger.n_existing + before, ledger.n_existing + len(ledger.new)):
            reasons.setdefault(i, f"headroom of pool {pool}: keeps room for {room}")


def _minimum(ledger: _Ledger, reasons: dict[int, str]) -> None:
    for shape in ledger.c.pools:
        while ledger.count[shape.name] < shape.min:
            i = ledger.open(shape.name)
            reasons[i] = f"pool {shape.name} keeps at least {shape.min} node(s)"


def _blocker(pod: Pod) -> str | None:
    if pod.critical:
        return f"runs critical pod {pod.key}"
    if not pod.interruptible:
        return f"runs pod {pod.key} of non-interruptible job {pod.job or pod.key}"
    if not pod.safe_to_evict:
        return f"runs pod {pod.key}, not safe to evict"
    return None


def _used_share(ledger: _Ledger, i: int) -> float:
    a, f = ledger.alloc[i], ledger.free[i]
    return max(((a[r] - f[r]) / a[r] for r in range(3) if a[r] > 0), default=0.0)


class _Moves:
    """The pods moved during scale-down: moved into each node so far, and each pod's hops."""

    def __init__(self) -> None:
        self.into: dict[int, list[Pod]] = {}
        self.hops: dict[str, list[int]] = {}


def _move(ledger: _Ledger, i: int, pods: list[Pod], gone: set[int], moves: _Moves) -> str | None:
    """Move ``pods`` off existing node ``i`` onto other existing nodes, fullest first (so
    pods gather on busy nodes); ``None`` when all can move, else why not (nothing moved)."""
    c = ledger.c
    log: list[tuple[int, Vec, list[Pod]]] = []
    groups: dict[Any, list[Pod]] = {}
    for p in pods:
        groups.setdefault(p.scheduling_key(), []).append(p)
    free = ledger.free
    for key, group in groups.items():
        rep = group[0]
        v = _vec(rep.requests)
        fits = [
            (j, k)
            for j in c.existing_for(rep, key)
            if j != i and j not in gone and (k := _count(free[j], v)) > 0
        ]
        fits.sort(key=lambda e: (-_used_share(ledger, e[0]), e[0]))
        left = len(group)
        for j, k in fits:
            take = min(k, left)
            ledger.take(j, v, take)
            log.append((j, v, group[len(group) - left : len(group) - left + take]))
            left -= take
            if left == 0:
                break
        if left:
            for j, vv, moved in reversed(log):
                ledger.give(j, vv, len(moved))
            return f"pod {rep.key} ({rep.requests}) has no other node to go to"
    for j, _, moved in log:
        moves.into.setdefault(j, []).extend(moved)
        for p in moved:
            moves.hops.setdefault(p.key, []).append(j)
    return None


def plan(
    nodes: Sequence[Node],
    pods: Sequence[Pod],
    pools: Sequence[PoolShape],
    headroom: Mapping[str, Headroom] | None = None,
    *,
    now: datetime,
    unneeded_since: Mapping[str, datetime] | None = None,
    unneeded_after: timedelta = timedelta(minutes=10),
    disruption_budget: int = 1,
    utilization_threshold: float = 0.5,
) -> Plan:
    """One planning loop.

    ``nodes`` as they are (where pods run is read from ``pods``: ``pod.node``; ``Node.pods``
    is not consulted), ``pods`` running, pending and gated, ``pools`` the node pools (nodes
    whose ``juliarun.io/pool`` label names none are never added or removed), ``headroom`` per
    pool name. ``unneeded_since`` is the previous plan's; a node is removed once unneeded for
    ``unneeded_after``. At most ``disruption_budget`` nodes that run pods are removed per loop
    (empty ones disrupt nothing and do not count); a node with pods is a candidate only when
    its most used resource is at most ``utilization_threshold`` of the node. Nodes tainted
    :data:`SCALE_DOWN_TAINT` are being drained: they are removed once their pods can move
    (``uncordon`` when they cannot any more).
    """
    cluster = _Cluster(nodes, pods, pools)
    jobs = _jobs(cluster)
    ledger, unmet = _pack_gang(cluster, jobs)
    strategy = "gang-best-fit"
    if not unmet and jobs and ledger.new and len(ledger.new) != _new_node_bound(cluster, jobs):
        best = (len(ledger.new), _price(ledger))
        other = _pack_global(cluster, jobs)
        if other is not None and (len(other.new), _price(other)) < best:
            ledger, strategy = other, "best-fit-decreasing"
            best = (len(other.new), _price(other))
        ffd, ffd_ledger = _first_fit(cluster)
        if not ffd.unplaced and ffd.nodes_added < best[0]:
            ledger, strategy = ffd_ledger, "first-fit-decreasing"
    reasons: dict[int, str] = {}
    n = ledger.n_existing
    for i, by_job in ledger.why.items():
        text = ", ".join(f"{k} pending pod(s) of job {j}" for j, k in sorted(by_job.items()))
        reasons[i] = f"new node for {text}"
    _headroom(ledger, headroom or {}, reasons, unmet)
    _minimum(ledger, reasons)
    decisions = [
        NodeDecision(name, pool, "add", reasons.get(n + k, "new node"))
        for k, (pool, name) in enumerate(ledger.new)
    ]
    moves = _Moves()
    decisions += _scale_down(
        ledger,
        moves,
        headroom or {},
        now=now,
        since_in=unneeded_since or {},
        unneeded_after=unneeded_after,
        budget=disruption_budget,
        threshold=utilization_threshold,
    )
    decisions.sort(key=lambda d: d.node)
    since_out = {
        d.node: (unneeded_since or {}).get(d.node, now)
        for d in decisions
        if d.action == "keep" and d.reason.startswith("unneeded")
    }
    placements = {
        k: ledger.name(i) for k, i in ledger.where.items() if not k.startswith(_HEADROOM_KEY)
    }
    removed = {cluster.index[d.node] for d in decisions if d.action == "remove"}
    moved: dict[str, str] = {}
    for i in sorted(removed):
        for p in cluster.running[i]:
            hops = moves.hops.get(p.key)
            if hops:
                moved[p.key] = nodes[next(j for j in hops if j not in removed)].name
    return Plan(tuple(decisions), tuple(unmet), since_out, placements, strategy, moved)


def _scale_down(
    ledger: _Ledger,
    moves: _Moves,
    headroom: Mapping[str, Headroom],
    *,
    now: datetime,
    since_in: Mapping[str, datetime],
    unneeded_after: timedelta,
    budget: int,
    threshold: float,
) -> list[NodeDecision]:
    c = ledger.c
    n = ledger.n_existing
    pending_on: dict[int, int] = {}
    holds_headroom: dict[int, str] = {}
    for key, i in ledger.where.items():
        if key.startswith(_HEADROOM_KEY):
            holds_headroom[i] = key[len(_HEADROOM) + 1 :].rsplit("-", 1)[0]
        else:
            pending_on[i] = pending_on.get(i, 0) + 1
    gone: set[int] = set()
    count = dict(ledger.count)
    out: list[NodeDecision] = []
    share = [_used_share(ledger, i) for i in range(n)]
    order = sorted(
        range(n),
        key=lambda i: (not c.draining[i], bool(c.running[i]), share[i], c.nodes[i].name),
    )
    for i in order:
        node = c.nodes[i]
        pool = c.pool_of[i]
        draining = c.draining[i]

        def decide(action: Action, reason: str, node: Node = node, pool: str | None = pool) -> None:
            out.append(NodeDecision(node.name, pool, action, reason))

        if pool is None:
            decide("keep", "not in a node pool juliarun manages")
            continue
        if i in pending_on:
            decide("keep", f"{pending_on[i]} pending pod(s) will run here")
            continue
        if i in holds_headroom:
            decide("keep", f"holds headroom of pool {holds_headroom[i]}")
            continue
        live = [p for p in c.running[i] if not p.daemon] + moves.into.pop(i, [])
        blocker = next((b for p in live if (b := _blocker(p)) is not None), None)
        if blocker is not None:
            decide("uncordon" if draining else "keep", blocker)
            continue
        shape = c.pool_by[pool]
        if not draining and count[pool] - 1 < shape.min:
            decide("keep", f"pool {pool} keeps at least {shape.min} node(s)")
            continue
        used = _used_share(ledger, i)
        if live and not draining and used > threshold:
            decide("keep", f"{used:.0%} used, above the {threshold:.0%} scale-down threshold")
            continue
        why = _move(ledger, i, live, gone, moves)
        if why is not None:
            decide("uncordon" if draining else "keep", why)
            continue
        room = headroom.get(pool)
        if not draining and room is not None and (room.cpu or room.memory or room.gpu):
            after = _pool_free(ledger, pool, gone | {i})
            if any(after[r] < w for r, w in enumerate((room.cpu, room.memory, room.gpu))):
                _unmove(ledger, i, live, moves)
                decide("keep", f"holds headroom of pool {pool} ({room})")
                continue
        gone.add(i)
        if not draining:
            count[pool] -= 1
        waited = now - since_in.get(node.name, now)
        moving = f"its {len(live)} pod(s) can move to other nodes" if live else "it runs no pods"
        if draining:
            budget -= 1 if live else 0
            decide("remove", f"finishing its drain: {moving}")
        elif waited < unneeded_after:
            decide("keep", f"unneeded for {_span(waited)} of {_span(unneeded_after)}: {moving}")
        elif live and budget <= 0:
            decide("keep", f"unneeded for {_span(waited)}, disruption budget used: {moving}")
        else:
            budget -= 1 if live else 0
            decide("remove", f"unneeded for {_span(waited)}: {moving}")
    return out


def _unmove(ledger: _Ledger, i: int, pods: list[Pod], moves: _Moves) -> None:
    """Take back a :func:`_move` of ``pods`` off node ``i``."""
    keys = {p.key for p in pods}
    into = moves.into
    for j in list(into):
        stay = [p for p in into[j] if p.key not in keys]
        for p in into[j]:
            if p.key in keys:
                ledger.give(j, _vec(p.requests), 1)
        if stay:
            into[j] = stay
        else:
            del into[j]
    for p in pods:
        moves.hops[p.key].pop()
    came = [p for p in pods if p.node != ledger.c.nodes[i].name]
    if came:
        into[i] = came


def _price(ledger: _Ledger) -> float:
    return sum(ledger.c.pool_by[pool].price for pool, _ in ledger.new)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
