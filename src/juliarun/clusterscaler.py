"""The cluster autoscaler: node pools follow what jobs *reserve* (the requests of pending and
gated pods), with headroom kept free so the next job does not wait, and nodes removed only when
what runs there can move.

:class:`ClusterScaler` is the loop: read the cluster, plan (the pure planner in
:mod:`juliarun.scaling.planner`), act (create nodes through each pool's provider; mark, drain and
delete the nodes the plan removes), and — on a cluster where juliarun places jobs whole — place
the gated jobs the new nodes make room for. Every loop returns the :class:`ScaleStep` it applied:
nodes added per pool, nodes removed, and a reason for every node kept or changed.

>>> from juliarun.specs import NodePool
>>> shape = pool_shape(NodePool(name="highcpu", node_type="highcpu", cpu="4", memory="16Gi",
...                             max=10))
>>> (shape.name, shape.cpu, shape.max, shape.node_type)
('highcpu', 4000, 10, 'highcpu')
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from juliarun.backends.base import NodeOperator, Placer
from juliarun.errors import ConfigError
from juliarun.scaling.placement import Node, Pod, Taint
from juliarun.scaling.planner import Headroom, Plan, PoolShape, plan
from juliarun.specs import NodePool

log = logging.getLogger("juliarun")


def pool_shape(pool: NodePool) -> PoolShape:
    """The planner's view of a node pool."""
    return PoolShape.of(
        pool.name,
        cpu=pool.cpu,
        memory=pool.memory,
        node_type=pool.node_type,
        gpu=pool.gpu,
        pods=pool.pods,
        labels=dict(pool.labels),
        taints=[Taint(t.key, t.value, t.effect) for t in pool.taints],
        min=pool.min,
        max=pool.max,
        price=pool.price,
        spot=pool.spot,
    )


@dataclass(frozen=True)
class ScaleStep:
    """What one loop did: ``added`` node names per pool, ``removed`` nodes, ``draining`` nodes
    marked and being emptied, ``plan`` the planner's whole answer (a reason per node)."""

    at: datetime
    plan: Plan
    added: Mapping[str, list[str]] = field(default_factory=dict)
    removed: tuple[str, ...] = ()
    draining: tuple[str, ...] = ()
    placed: tuple[str, ...] = ()

    def reasons(self) -> dict[str, str]:
        """Node → why the plan adds, removes or keeps it."""
        return {d.node: d.reason for d in self.plan.decisions}


@dataclass
class ClusterScaler:
    """Keep ``pools`` sized to what jobs reserve on the cluster of ``ctx``.

    ``headroom``: per pool name (or one :class:`Headroom` for every pool), the room kept free.
    ``interval``: seconds between loops of :meth:`run`. ``unneeded_after``: how long a node
    stays unneeded before it is removed. ``disruption_budget``: nodes with pods removed at once.
    """

    ctx: Any
    pools: Sequence[NodePool]
    headroom: Headroom | Mapping[str, Headroom] | None = None
    interval: float = 10.0
    unneeded_after: timedelta = timedelta(minutes=2)
    disruption_budget: int = 1
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sleep: Callable[[float], None] = time.sleep
    on_step: Callable[[ScaleStep], None] | None = None
    steps: list[ScaleStep] = field(default_factory=list)
    _unneeded: Mapping[str, datetime] = field(default_factory=dict, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        backend = self.ctx.backend
        if not isinstance(backend, NodeOperator):
            raise ConfigError(
                f"cluster {self.ctx.cluster!r} ({backend.kind}) has no nodes to scale",
                hint="the cluster autoscaler runs against a Kubernetes cluster",
            )
        self.backend: NodeOperator = backend
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ConfigError(f"node pools need distinct names (got {names})")
        self._providers = {
            p.name: backend.node_provider(p.provider, p.provider_options) for p in self.pools
        }
        self._placer = backend.placement_controller() if isinstance(backend, Placer) else None

    def provider(self, pool: str) -> Any:
        """The :class:`~juliarun.providers.base.NodeProvider` of pool ``pool``."""
        return self._providers[pool]

    def _headroom(self) -> dict[str, Headroom]:
        if self.headroom is None:
            return {}
        if isinstance(self.headroom, Headroom):
            return {p.name: self.headroom for p in self.pools}
        return dict(self.headroom)

    # -- one loop ----------------------------------------------------------------------------

    def step(self) -> ScaleStep:
        """Read, plan, act once; returns what was applied."""
        raw_nodes, raw_pods = self.backend.cluster_objects()
        pods = [Pod.from_k8s(p) for p in raw_pods]
        nodes = [Node.from_k8s(n) for n in raw_nodes]
        now = self.clock()
        answer = plan(
            nodes,
            pods,
            [pool_shape(p) for p in self.pools],
            self._headroom(),
            now=now,
            unneeded_since=self._unneeded,
            unneeded_after=self.unneeded_after,
            disruption_budget=self.disruption_budget,
        )
        self._unneeded = answer.unneeded_since
        by_name = {p.name: p for p in self.pools}
        added: dict[str, list[str]] = {}
        for pool_name, names in answer.added().items():
            pool = by_name[pool_name]
            made = self._providers[pool_name].create_nodes(pool, names)
            added[pool_name] = names
            for name in made:
                log.info("adding node %s to pool %s", name, pool_name)
        on_node = _pods_by_node(pods)
        removed, draining = [], []
        for decision in answer.remove:
            owner = by_name.get(decision.pool or "")
            if owner is None:
                continue
            pool = owner
            if on_node.get(decision.node):
                self.backend.mark_for_removal(decision.node)
                self.backend.evict_pods(decision.node)
                draining.append(decision.node)
                log.info(
                    "draining node %s of pool %s: %s", decision.node, pool.name, decision.reason
                )
                continue
            self._providers[pool.name].delete_nodes(pool, [decision.node])
            removed.append(decision.node)
            log.info("removing node %s of pool %s: %s", decision.node, pool.name, decision.reason)
        for decision in answer.uncordon:
            self.backend.unmark(decision.node)
        placed: tuple[str, ...] = ()
        if self._placer is not None:
            placed = tuple(f"{d.namespace}/{d.job}" for d in self._placer.step() if d.placed)
        result = ScaleStep(now, answer, added, tuple(removed), tuple(draining), placed)
        self.steps.append(result)
        if self.on_step is not None:
            self.on_step(result)
        return result

    # -- running -----------------------------------------------------------------------------

    def run(self, *, duration: float | None = None) -> None:
        """Loop every ``interval`` seconds until :meth:`stop` (or for ``duration`` seconds);
        a loop that fails is logged and the next one tried."""
        ends = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set() and (ends is None or time.monotonic() < ends):
            try:
                self.step()
            except Exception:
                log.exception("cluster autoscaler loop failed; trying again")
            self._stop.wait(self.interval)

    def start(self) -> ClusterScaler:
        """Run in a background thread; returns self (call :meth:`stop`)."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, name="juliarun-cluster-scaler", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None


def _pods_by_node(pods: Sequence[Pod]) -> dict[str, list[Pod]]:
    """The pods on each node that would have to move (not DaemonSet or mirror pods)."""
    out: dict[str, list[Pod]] = {}
    for pod in pods:
        if pod.node is not None and not pod.daemon and not pod.terminal:
            out.setdefault(pod.node, []).append(pod)
    return out
