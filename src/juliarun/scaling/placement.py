"""The one placement model: nodes, pods, whether a pod fits a node (and why not), and gang
placement of a job's pods by a named, pluggable policy.

Pure: it reads plain values (or Kubernetes JSON dicts through :meth:`Node.from_k8s` and
:meth:`Pod.from_k8s`) and returns decisions; it calls no client. It is the only fit judgement
(node selector, required node affinity, taints and tolerations, cordoned and not-ready nodes,
transient ``node.kubernetes.io/`` taints, requests against allocatable): the Kubernetes
diagnosis (``backends/kubernetes/diagnosis.py``), the co-locating scheduler and the cluster
planner all ask it, so they agree on whether a pod fits.

Resources are integers: cpu in millicores, memory in bytes, GPUs and pod slots as counts.
Quantities round up, as the Kubernetes scheduler does (``MilliValue`` / ``Value``).

>>> node = Node("n1", Resources.of(cpu="4", memory="16Gi", pods=110),
...             labels={NODE_TYPE_LABEL: "highcpu"},
...             taints=(Taint(NODE_TYPE_LABEL, "highcpu"),))
>>> pod = Pod("w-0", job="w", requests=Resources.of(cpu="2", memory="1Gi"),
...           node_selector={NODE_TYPE_LABEL: "highcpu"})
>>> print(fits(pod, node).reason)
untolerated taint juliarun.io/node-type=highcpu:NoSchedule
>>> pods = [Pod(f"w-{i}", job="w", requests=Resources.of(cpu="2"),
...             tolerations=(Toleration(NODE_TYPE_LABEL, "Equal", "highcpu", "NoSchedule"),))
...         for i in range(3)]
>>> nodes = [Node(f"n{i}", Resources.of(cpu="4", memory="16Gi", pods=110)) for i in range(3)]
>>> sorted(place_gang(pods, nodes).assignment.items())
[('default/w-0', 'n0'), ('default/w-1', 'n0'), ('default/w-2', 'n1')]
>>> sorted(place_gang(pods, nodes, policy="spread").assignment.values())
['n0', 'n1', 'n2']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from juliarun.errors import ConfigError
from juliarun.specs import parse_quantity

Obj = Mapping[str, Any]

NODE_TYPE_LABEL = "juliarun.io/node-type"
POOL_LABEL = "juliarun.io/pool"
JOB_LABEL = "juliarun.io/job"
CRITICAL_KEY = "juliarun.io/critical"
INTERRUPTIBLE_KEY = "juliarun.io/interruptible"
SAFE_TO_EVICT_KEY = "cluster-autoscaler.kubernetes.io/safe-to-evict"
GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME_LABEL = "kubernetes.io/hostname"
UNLIMITED = 2**62
"""Allocatable pods of a node that does not say (the apiserver always does)."""

RESOURCE_NAMES: tuple[str, ...] = ("cpu", "memory", "gpu", "pods")
_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def _quantity(value: object) -> Decimal:
    return parse_quantity(str(value))


def format_quantity(resource: str, amount: int) -> str:
    """An integer amount as a Kubernetes quantity: millicores, binary bytes, counts.

    >>> format_quantity("cpu", 2500), format_quantity("cpu", 4000)
    ('2500m', '4')
    >>> format_quantity("memory", 16 * 2**30), format_quantity("memory", 1000)
    ('16Gi', '1000')
    """
    if resource == "cpu":
        return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"
    if resource == "memory":
        for suffix, scale in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if amount and amount % scale == 0:
                return f"{amount // scale}{suffix}"
    return str(amount)


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of cpu (millicores), memory (bytes), GPUs, pod slots and any other extended
    resource (``extra``: sorted ``(name, amount)`` pairs), in integers.

    >>> r = Resources.of(cpu="1500m", memory="2Gi", gpu=1) + Resources.of(cpu="500m")
    >>> r.cpu, r.memory, r.gpu, str(r)
    (2000, 2147483648, 1, 'cpu=2, memory=2Gi, gpu=1')
    >>> Resources.of(cpu="3").short_of(Resources.of(cpu="2", memory="1Gi"))
    ['cpu']
    """

    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    pods: int = 0
    extra: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(
        cls,
        cpu: str | int = "0",
        memory: str | int = "0",
        gpu: int = 0,
        pods: int = 0,
    ) -> Resources:
        """From Kubernetes quantities (``cpu="500m"``, ``memory="4Gi"``); for extended
        resources use :meth:`parse`."""
        return cls(
            cpu=_ceil(_quantity(cpu) * 1000),
            memory=_ceil(_quantity(memory)),
            gpu=int(gpu),
            pods=int(pods),
        )

    @classmethod
    def parse(
        cls, quantities: Mapping[str, object], *, gpu_resource: str = GPU_RESOURCE
    ) -> Resources:
        """From a Kubernetes resource map (``{"cpu": "2", "memory": "4Gi", "nvidia.com/gpu":
        "1", "pods": "110"}``); other names (``ephemeral-storage``, hugepages, other GPUs)
        are kept in ``extra``."""
        cpu = memory = gpu = pods = 0
        extra: dict[str, int] = {}
        for name, value in quantities.items():
            amount = _quantity(value)
            if name == "cpu":
                cpu = _ceil(amount * 1000)
            elif name == "memory":
                memory = _ceil(amount)
            elif name == gpu_resource:
                gpu = _ceil(amount)
            elif name == "pods":
                pods = _ceil(amount)
            else:
                extra[name] = _ceil(amount)
        return cls(cpu, memory, gpu, pods, tuple(sorted(extra.items())))

    def vector(self) -> tuple[int, int, int, int]:
        """``(cpu, memory, gpu, pods)``."""
        return (self.cpu, self.memory, self.gpu, self.pods)

    def get(self, name: str) -> int:
        """One resource by its name (``cpu``, ``memory``, ``gpu``, ``pods`` or an extra)."""
        if name in RESOURCE_NAMES:
            return int(getattr(self, name))
        return dict(self.extra).get(name, 0)

    def _extra(self, other: Resources, sign: int) -> tuple[tuple[str, int], ...]:
        if not self.extra and not other.extra:
            return ()
        out = dict(self.extra)
        for k, v in other.extra:
            out[k] = out.get(k, 0) + sign * v
        return tuple(sorted(out.items()))

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu + other.cpu,
            self.memory + other.memory,
            self.gpu + other.gpu,
            self.pods + other.pods,
            self._extra(other, 1),
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu - other.cpu,
            self.memory - other.memory,
            self.gpu - other.gpu,
            self.pods - other.pods,
            self._extra(other, -1),
        )

    def __mul__(self, n: int) -> Resources:
        return Resources(
            self.cpu * n,
            self.memory * n,
            self.gpu * n,
            self.pods * n,
            tuple((k, v * n) for k, v in self.extra),
        )

    def short_of(self, available: Resources) -> list[str]:
        """The resources this amount needs more of than ``available`` has (an extended
        resource ``available`` does not list counts as zero). Only resources asked for count,
        as in the Kubernetes scheduler: a node overcommitted on memory still takes a pod
        that asks for none."""
        short = [
            name
            for name, need, have in zip(
                RESOURCE_NAMES, self.vector(), available.vector(), strict=True
            )
            if need > 0 and need > have
        ]
        if self.extra:
            have_extra = dict(available.extra)
            short += [k for k, v in self.extra if v > 0 and v > have_extra.get(k, 0)]
        return short

    def fits_in(self, available: Resources) -> bool:
        """Whether every resource of this amount is at most the one ``available``."""
        return not self.short_of(available)

    def __str__(self) -> str:
        parts = [
            f"{name}={format_quantity(name, amount)}"
            for name, amount in zip(RESOURCE_NAMES, self.vector(), strict=True)
            if amount and name != "pods"
        ]
        parts += [f"{k}={v}" for k, v in self.extra if v]
        return ", ".join(parts) or "nothing"


# ---------------------------------------------------------------------------------------------
# Taints, tolerations, affinity
# ---------------------------------------------------------------------------------------------


class Taint(NamedTuple):
    """A node taint."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"

    @property
    def transient(self) -> bool:
        """Put on and taken off by the node lifecycle (``node.kubernetes.io/...``: not-ready,
        unreachable, pressure, network-unavailable, unschedulable)."""
        return self.key.startswith("node.kubernetes.io/")


class Toleration(NamedTuple):
    """A pod toleration; ``key=None`` with ``Exists`` tolerates every taint, ``effect=None``
    every effect."""

    key: str | None
    operator: str = "Equal"
    value: str = ""
    effect: str | None = None


def tolerates(tolerations: Iterable[Toleration], taint: Taint) -> bool:
    """Whether the tolerations let a pod onto a node with ``taint`` (``PreferNoSchedule`` never
    keeps a pod off).

    >>> t = Taint("juliarun.io/node-type", "gpu", "NoSchedule")
    >>> tolerates([Toleration(None, "Exists")], t), tolerates([], t)
    (True, False)
    >>> tolerates([Toleration("juliarun.io/node-type", "Equal", "gpu", "NoExecute")], t)
    False
    >>> tolerates([], Taint("x", "y", "PreferNoSchedule"))
    True
    """
    if taint.effect not in _BLOCKING_EFFECTS:
        return True
    for tol in tolerations:
        if tol.effect and tol.effect != taint.effect:
            continue
        if tol.operator == "Exists" and (not tol.key or tol.key == taint.key):
            return True
        if tol.key == taint.key and tol.value == taint.value:
            return True
    return False


class Requirement(NamedTuple):
    """One requirement of a required node-affinity term: on a label (``field=False``) or on
    ``metadata.name`` (``field=True``); operators In, NotIn, Exists, DoesNotExist, Gt, Lt."""

    key: str
    operator: str
    values: tuple[str, ...] = ()
    field: bool = False

    def matches(self, node: Node) -> bool:
        value = node.name if self.field else node.labels.get(self.key)
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        if op in {"Gt", "Lt"} and value is not None and self.values:
            try:
                have, want = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > want if op == "Gt" else have < want
        return False


Term = tuple[Requirement, ...]


def affinity_to(node_names: Iterable[str]) -> tuple[Term, ...]:
    """Required node affinity to exactly these nodes (what the scheduler writes on a gated
    pod)."""
    return ((Requirement("metadata.name", "In", tuple(sorted(node_names)), field=True),),)


# ---------------------------------------------------------------------------------------------
# Pods and nodes
# ---------------------------------------------------------------------------------------------


def k8s_requests(pod: Obj) -> dict[str, Decimal]:
    """The resources one pod requests, as the apiserver sends it: containers summed, an init
    container's larger need wins."""
    total: dict[str, Decimal] = {}
    spec = pod.get("spec", {})
    for c in spec.get("containers") or []:
        for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[k] = total.get(k, Decimal(0)) + _quantity(v)
    for c in spec.get("initContainers") or []:
        for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[k] = max(total.get(k, Decimal(0)), _quantity(v))
    return total


@lru_cache(maxsize=4096)
def _parsed(items: tuple[tuple[str, str], ...], gpu_resource: str) -> Resources:
    """:meth:`Resources.parse` of a resource map seen before (pods of a job, nodes of a
    pool: the same few maps thousands of times)."""
    return Resources.parse(dict(items), gpu_resource=gpu_resource)


def _pod_resources(spec: Obj, gpu_resource: str) -> Resources:
    asking = [
        req
        for c in spec.get("containers") or []
        if (req := (c.get("resources") or {}).get("requests"))
    ]
    init = any((c.get("resources") or {}).get("requests") for c in spec.get("initContainers") or [])
    if len(asking) == 1 and not init:  # the common case, and the same sum
        return _parsed(tuple(sorted((k, str(v)) for k, v in asking[0].items())), gpu_resource)
    asks = {k: str(v) for k, v in k8s_requests({"spec": spec}).items()}
    return Resources.parse(asks, gpu_resource=gpu_resource)


def _flag(mapping: Mapping[str, str], key: str) -> bool | None:
    if key not in mapping:
        return None
    return str(mapping[key]).strip().lower() not in _FALSE


@dataclass(frozen=True, slots=True)
class Pod:
    """One pod as placement sees it. ``requests`` always holds one pod slot. ``node`` is where
    it runs (``None``: pending); ``gated`` when it carries a scheduling gate; ``affinity`` its
    required node-affinity terms (any term matches, all requirements of a term);
    ``critical`` / ``safe_to_evict`` / ``interruptible`` say whether its node may be removed
    under it; ``daemon`` pods belong to their node and never move."""

    name: str
    requests: Resources = Resources(pods=1)
    job: str | None = None
    namespace: str = "default"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity: tuple[Term, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    critical: bool = False
    safe_to_evict: bool = True
    interruptible: bool = True
    priority: int = 0
    node: str | None = None
    phase: str = "Pending"
    gated: bool = False
    daemon: bool = False
    key: str = field(init=False, repr=False, compare=False)
    """``namespace/name``: unique in a cluster."""

    def __post_init__(self) -> None:
        if self.requests.pods < 1:
            object.__setattr__(
                self, "requests", Resources(*self.requests.vector()[:3], 1, self.requests.extra)
            )
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")

    @property
    def terminal(self) -> bool:
        """Succeeded or failed: holds no resources any more."""
        return self.phase in {"Succeeded", "Failed"}

    @property
    def pending(self) -> bool:
        """Waiting for a node (gated or not scheduled yet): demand."""
        return self.node is None and not self.terminal

    @property
    def blocks_removal(self) -> bool:
        """A pod whose node must not be removed under it."""
        return self.critical or not self.safe_to_evict or not self.interruptible

    @property
    def node_names(self) -> frozenset[str] | None:
        """The nodes its required affinity allows by name, when it names them (one term,
        ``metadata.name In``)."""
        if len(self.affinity) == 1 and len(self.affinity[0]) == 1:
            req = self.affinity[0][0]
            if req.field and req.operator == "In":
                return frozenset(req.values)
        return None

    def scheduling_key(self) -> tuple[Any, ...]:
        """Pods with equal keys are interchangeable for placement (same requests, selector,
        affinity and tolerations)."""
        selector = self.node_selector
        return (
            self.requests,
            tuple(sorted(selector.items()) if len(selector) > 1 else selector.items()),
            self.affinity,
            self.tolerations,
        )

    @classmethod
    def from_k8s(cls, obj: Obj, *, gpu_resource: str = GPU_RESOURCE) -> Pod:
        """A pod from its Kubernetes JSON (``kubectl get pod -o json``).

        >>> p = Pod.from_k8s({"metadata": {"name": "j-0", "namespace": "jr",
        ...     "labels": {"juliarun.io/job": "j"},
        ...     "annotations": {SAFE_TO_EVICT_KEY: "false"}},
        ...     "spec": {"containers": [{"resources": {"requests": {"cpu": "2"}}}],
        ...              "schedulingGates": [{"name": "juliarun.io/placement"}],
        ...              "tolerations": [{"operator": "Exists"}]},
        ...     "status": {"phase": "Pending"}})
        >>> p.key, p.job, p.requests.cpu, p.gated, p.blocks_removal
        ('jr/j-0', 'j', 2000, True, True)
        >>> p.tolerations
        (Toleration(key=None, operator='Exists', value='', effect=None),)
        """
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        requests = _pod_resources(spec, gpu_resource)
        critical = _flag(labels, CRITICAL_KEY) or _flag(annotations, CRITICAL_KEY) or False
        interruptible = _flag(labels, INTERRUPTIBLE_KEY)
        if interruptible is None:
            interruptible = _flag(annotations, INTERRUPTIBLE_KEY)
        owners = meta.get("ownerReferences") or []
        daemon = any(o.get("kind") == "DaemonSet" for o in owners) or (
            "kubernetes.io/config.mirror" in annotations
        )
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace") or "default"),
            job=labels.get(JOB_LABEL)
            or labels.get("batch.kubernetes.io/job-name")
            or labels.get("job-name"),
            requests=requests,
            node_selector=dict(spec.get("nodeSelector") or {}),
            affinity=_affinity(spec),
            tolerations=tuple(
                Toleration(
                    t.get("key") or None,
                    t.get("operator") or "Equal",
                    t.get("value") or "",
                    t.get("effect") or None,
                )
                for t in spec.get("tolerations") or []
            ),
            critical=critical,
            safe_to_evict=str(annotations.get(SAFE_TO_EVICT_KEY, "")).lower() != "false",
            interruptible=interruptible is not False,
            priority=int(spec.get("priority") or 0),
            node=spec.get("nodeName") or None,
            phase=str((obj.get("status") or {}).get("phase") or "Pending"),
            gated=bool(spec.get("schedulingGates")),
            daemon=daemon,
        )


def _affinity(spec: Obj) -> tuple[Term, ...]:
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms: list[Term] = []
    for term in required.get("nodeSelectorTerms") or []:
        reqs = [
            Requirement(e["key"], e["operator"], tuple(e.get("values") or ()))
            for e in term.get("matchExpressions") or []
        ] + [
            Requirement(e["key"], e["operator"], tuple(e.get("values") or ()), field=True)
            for e in term.get("matchFields") or []
        ]
        terms.append(tuple(reqs))
    return tuple(terms)


def _ready(obj: Obj) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def _sum(pods: Iterable[Pod]) -> Resources:
    total = Resources()
    for p in pods:
        if not p.terminal:
            total = total + p.requests
    return total


@dataclass(frozen=True, slots=True)
class Node:
    """One node: what it offers (``allocatable``), its labels and taints, whether it takes new
    pods (``unschedulable``: cordoned; ``ready``), and the pods that run there (``used`` is
    the sum of their requests, terminated pods excluded)."""

    name: str
    allocatable: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    ready: bool = True
    pods: tuple[Pod, ...] = ()
    created: datetime | None = None
    used: Resources = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "used", _sum(self.pods))

    @property
    def pool(self) -> str | None:
        """The node pool it belongs to (label ``juliarun.io/pool``)."""
        return self.labels.get(POOL_LABEL)

    @property
    def free(self) -> Resources:
        """What is left for new pods."""
        return self.allocatable - self.used

    def with_pods(self, pods: Iterable[Pod]) -> Node:
        """The same node running ``pods``."""
        return Node(
            self.name,
            self.allocatable,
            self.labels,
            self.taints,
            self.unschedulable,
            self.ready,
            tuple(pods),
            self.created,
        )

    def class_key(self) -> tuple[Any, ...]:
        """Nodes with equal keys accept the same pods (name aside)."""
        return (
            tuple(sorted(self.labels.items())),
            self.taints,
            self.unschedulable,
            self.ready,
        )

    @classmethod
    def from_k8s(
        cls, obj: Obj, pods: Iterable[Pod] = (), *, gpu_resource: str = GPU_RESOURCE
    ) -> Node:
        """A node from its Kubernetes JSON; ``pods`` those running on it.

        >>> n = Node.from_k8s({"metadata": {"name": "highcpu-0", "labels": {POOL_LABEL:
        ...     "highcpu"}}, "spec": {"taints": [{"key": "k", "value": "v", "effect":
        ...     "NoSchedule"}]}, "status": {"allocatable": {"cpu": "4", "memory": "16Gi",
        ...     "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}})
        >>> n.pool, n.allocatable.cpu, n.taints, n.ready
        ('highcpu', 4000, (Taint(key='k', value='v', effect='NoSchedule'),), True)
        """
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        allocatable = dict(status.get("allocatable") or status.get("capacity") or {})
        alloc = _parsed(tuple(sorted((k, str(v)) for k, v in allocatable.items())), gpu_resource)
        if "pods" not in allocatable:
            alloc = Resources(alloc.cpu, alloc.memory, alloc.gpu, UNLIMITED, alloc.extra)
        created = meta.get("creationTimestamp")
        return cls(
            name=str(meta.get("name", "")),
            allocatable=alloc,
            labels=dict(meta.get("labels") or {}),
            taints=tuple(
                Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect", "")))
                for t in spec.get("taints") or []
            ),
            unschedulable=bool(spec.get("unschedulable")),
            ready=_ready(obj),
            pods=tuple(pods),
            created=(
                datetime.fromisoformat(str(created).replace("Z", "+00:00")).astimezone(UTC)
                if created
                else None
            ),
        )


def bind(nodes: Iterable[Node], pods: Iterable[Pod]) -> list[Node]:
    """The nodes with the pods that run on them (``pod.node``) attached; pods on unknown
    nodes are left out."""
    by_node: dict[str, list[Pod]] = {}
    for p in pods:
        if p.node is not None:
            by_node.setdefault(p.node, []).append(p)
    return [n.with_pods(by_node.get(n.name, ())) for n in nodes]


# ---------------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------------

FitKind = Literal["fits", "selector", "affinity", "cordoned", "not-ready", "taint", "resources"]


@dataclass(frozen=True, slots=True)
class Fit:
    """Whether a pod fits a node; when not, ``kind`` and a ``reason`` (``short``: the
    resources it lacks). True in a boolean context when it fits."""

    ok: bool
    kind: FitKind = "fits"
    reason: str = "fits"
    short: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


_FITS = Fit(True)


def admits(pod: Pod, node: Node, *, now: bool = True) -> Fit:
    """Whether ``node`` takes ``pod`` at all, resources aside: node selector, required
    affinity, cordon and readiness, taints. With ``now=False``, as the node will be once its
    transient state (not ready, cordoned, ``node.kubernetes.io/`` taints) passes: the
    diagnosis' ``node_matches``, which has no readiness check of its own (the node lifecycle
    taints a NotReady node ``node.kubernetes.io/not-ready``) but is otherwise the same."""
    labels = node.labels
    for k, v in pod.node_selector.items():
        if labels.get(k) != v:
            return Fit(False, "selector", f"node selector {k}={v} does not match")
    if pod.affinity and not any(all(r.matches(node) for r in term) for term in pod.affinity):
        return Fit(False, "affinity", "required node affinity does not match")
    if now and node.unschedulable:
        return Fit(False, "cordoned", "node is cordoned")
    if now and not node.ready:
        return Fit(False, "not-ready", "node is not ready")
    for t in node.taints:
        if (now or not t.transient) and not tolerates(pod.tolerations, t):
            return Fit(False, "taint", f"untolerated taint {t}")
    return _FITS


def fits_resources(pod: Pod, free: Resources, allocatable: Resources | None = None) -> Fit:
    """Whether ``pod``'s requests fit in ``free`` (of ``allocatable``, for the message)."""
    short = pod.requests.short_of(free)
    if not short:
        return _FITS
    of = allocatable or free
    detail = ", ".join(
        f"{r} (asks {format_quantity(r, pod.requests.get(r))}, "
        f"{format_quantity(r, max(free.get(r), 0))} free of {format_quantity(r, of.get(r))})"
        for r in short
    )
    return Fit(False, "resources", f"insufficient {detail}", tuple(short))


def fits(pod: Pod, node: Node, *, now: bool = True, empty: bool = False) -> Fit:
    """Whether ``pod`` fits ``node`` now, and if not, why: node selector, affinity, cordoned,
    not ready, an untolerated taint, then resource by resource against what is free (against
    all of the node's allocatable with ``empty=True``). ``now=False`` judges the node as it
    will be once its transient state passes (the diagnosis' ``node_matches(now=False)``).

    >>> node = Node("n", Resources.of(cpu="4", memory="8Gi", pods=110),
    ...             pods=(Pod("a", requests=Resources.of(cpu="3")),))
    >>> print(fits(Pod("b", requests=Resources.of(cpu="2", memory="1Gi")), node).reason)
    insufficient cpu (asks 2, 1 free of 4)
    >>> bool(fits(Pod("b", requests=Resources.of(cpu="2")), node, empty=True))
    True
    """
    verdict = admits(pod, node, now=now)
    if not verdict:
        return verdict
    return fits_resources(pod, node.allocatable if empty else node.free, node.allocatable)


# ---------------------------------------------------------------------------------------------
# Gang placement and policies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a job's pods go (``assignment``: pod key → node name), all of them or none; when
    none, ``reason`` says why."""

    job: str | None
    assignment: Mapping[str, str]
    reason: str

    @property
    def placed(self) -> bool:
        return bool(self.assignment)

    @property
    def nodes(self) -> list[str]:
        """The nodes used, sorted."""
        return sorted(set(self.assignment.values()))


@dataclass
class Gang:
    """A gang placement under way, as a ranking policy sees it: the ``job``, its ``size`` in
    pods, the pods still to place (``remaining``, the one being ranked included) and how many
    of its pods each node holds so far (``placed``)."""

    job: str | None
    size: int
    remaining: int
    placed: dict[str, int] = field(default_factory=dict)

    def on(self, node: str) -> int:
        """How many of the gang's pods ``node`` holds so far."""
        return self.placed.get(node, 0)


RankFn = Callable[[Pod, Node, Resources, Gang], Any]
"""``rank(pod, node, free, gang)``: a sortable key (lower is better) or ``None`` to keep the
pod off the node; ``free`` is what the node has left before this pod (it fits), ``gang`` the
placement so far."""


@runtime_checkable
class RankingPolicy(Protocol):
    """A policy that ranks the nodes a pod fits; :func:`place_gang` does the rest."""

    def rank(self, pod: Pod, node: Node, free: Resources, gang: Gang) -> Any: ...


@runtime_checkable
class GangPolicy(Protocol):
    """A policy that places a whole job itself: returns pod key → node name for every pod (or
    an empty mapping: the job waits). :func:`place_gang` checks the answer fits."""

    def place(
        self, pods: Sequence[Pod], nodes: Sequence[Node], free: Mapping[str, Resources]
    ) -> Mapping[str, str]: ...


Policy = RankFn | RankingPolicy | GangPolicy


def _share(amount: int, of: int) -> float:
    return amount / of if of > 0 else 0.0


def dominant(pod: Pod, node: Node) -> int:
    """The index (in ``cpu, memory, gpu, pods``) of the resource the pod asks the largest
    share of the node for."""
    asks = pod.requests.vector()
    alloc = node.allocatable.vector()
    shares = [_share(a, b) for a, b in zip(asks, alloc, strict=True)]
    return max(range(4), key=lambda i: (shares[i], -i))


def _room(asks: tuple[int, ...], free: tuple[int, ...]) -> int:
    """How many pods asking ``asks`` fit in ``free``."""
    return min((f // a for a, f in zip(asks, free, strict=True) if a > 0), default=UNLIMITED)


def pack(pod: Pod, node: Node, free: Resources, gang: Gang) -> Any:
    """The fewest nodes: the node that would hold the most of the job (its pods there so far
    and as many of the remaining as fit), nodes already holding the job first, then best fit
    (the least left free of the pod's dominant resource, then of the others)."""
    r, a = pod.requests, node.allocatable
    room = free.pods // r.pods
    left: list[float] = []
    shares: list[float] = []
    for ask, have, of in (
        (r.cpu, free.cpu, a.cpu),
        (r.memory, free.memory, a.memory),
        (r.gpu, free.gpu, a.gpu),
        (r.pods, free.pods, a.pods),
    ):
        if ask > 0:
            room = min(room, have // ask)
        left.append((have - ask) / of if of > 0 else 0.0)
        shares.append(ask / of if of > 0 else 0.0)
    on = gang.placed.get(node.name, 0)
    d = max(range(4), key=shares.__getitem__)
    return (-(on + min(room, gang.remaining)), -on, left[d], sum(left) - left[d])


def spread(pod: Pod, node: Node, free: Resources, gang: Gang) -> Any:
    """Worst fit: the fewest of the job's pods, then the most left free of the pod's dominant
    resource."""
    d = dominant(pod, node)
    after = free.vector()[d] - pod.requests.vector()[d]
    return (gang.on(node.name), -_share(after, node.allocatable.vector()[d]))


_POLICIES: dict[str, Policy] = {"pack": pack, "spread": spread}


def register_policy(name: str, policy: Policy | type[Any]) -> None:
    """Register a placement policy by name: a ranking function ``rank(pod, node, free,
    gang)`` (see :data:`RankFn`), an object with ``rank`` (:class:`RankingPolicy`) or ``place``
    (:class:`GangPolicy`), or a class of either (instantiated without arguments).

    >>> register_policy("last-name", lambda pod, node, free, placed: [-ord(c) for c in node.name])
    >>> pods = [Pod("a", requests=Resources.of(cpu="1"))]
    >>> nodes = [Node(n, Resources.of(cpu="4", pods=10)) for n in ("n1", "n2")]
    >>> place_gang(pods, nodes, policy="last-name").nodes
    ['n2']
    """
    if not name or not isinstance(name, str):
        raise ConfigError(
            f"a placement policy needs a non-empty name (got {name!r})",
            hint="register_policy('my-policy', my_callable)",
        )
    obj: Any = policy() if inspect.isclass(policy) else policy
    if not (isinstance(obj, GangPolicy | RankingPolicy) or callable(obj)):
        raise ConfigError(
            f"placement policy {name!r} is neither callable nor has rank() or place()",
            hint="pass rank(pod, node, free, gang) -> key, or an object with rank or place",
        )
    _POLICIES[name] = obj


def get_policy(name: str) -> Policy:
    """The placement policy registered as ``name``."""
    try:
        return _POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown placement policy {name!r} (known: {', '.join(sorted(_POLICIES))})",
            hint="register it first with juliarun.scaling.placement.register_policy(name, fn)",
        ) from None


def policies() -> list[str]:
    """The names of the registered placement policies."""
    return sorted(_POLICIES)


def _size(pod: Pod, largest: tuple[int, ...]) -> tuple[float, ...]:
    shares = sorted(
        (_share(a, b) for a, b in zip(pod.requests.vector(), largest, strict=True)), reverse=True
    )
    return tuple(shares)


def _summary(reasons: Mapping[str, int]) -> str:
    return "; ".join(f"{count} node(s): {why}" for why, count in sorted(reasons.items()))


def place_gang(
    job_pods: Sequence[Pod],
    nodes: Sequence[Node],
    policy: str | Policy = "pack",
    *,
    free: Mapping[str, Resources] | None = None,
) -> Placement:
    """Place all of a job's pods at once, or none: each pod (largest first) on the node the
    policy ranks best among those it fits, with what earlier pods of the gang took counted.
    ``free`` overrides what each node has free (default: ``node.free``).

    ``pack`` (the fewest nodes: the nodes that hold the most of the job first, best fit on
    the dominant resource among equals), ``spread`` (the fewest of the job's pods per node,
    most free first), or any registered name or policy object. A greedy choice: a gang it
    cannot place may still have a placement (the reason says how far it got).
    """
    impl = get_policy(policy) if isinstance(policy, str) else policy
    job = job_pods[0].job if job_pods else None
    left = {
        n.name: (free[n.name] if free is not None and n.name in free else n.free) for n in nodes
    }
    if not job_pods:
        return Placement(job, {}, "no pods to place")
    if isinstance(impl, GangPolicy):
        return _check_gang(job, job_pods, nodes, impl.place(job_pods, nodes, left), left)
    rank: Callable[[Pod, Node, Resources, Gang], Any] = (
        impl.rank if isinstance(impl, RankingPolicy) else impl
    )
    largest = (
        tuple(max(col) for col in zip(*(n.allocatable.vector() for n in nodes), strict=True))
        if nodes
        else (1, 1, 1, 1)
    )
    order = sorted(job_pods, key=lambda p: (tuple(-s for s in _size(p, largest)), p.key))
    admitted: dict[tuple[Any, Any], Fit] = {}
    gang = Gang(job, len(order), len(order))
    on_node = gang.placed
    assignment: dict[str, str] = {}
    for i, pod in enumerate(order):
        key = pod.scheduling_key()
        best: tuple[Any, int, Node] | None = None
        reasons: dict[str, int] = {}
        r = pod.requests
        gang.remaining = len(order) - i
        for index, node in enumerate(nodes):
            ck = (key, node.name if pod.affinity else id(node))
            verdict = admitted.get(ck)
            if verdict is None:
                verdict = admitted[ck] = admits(pod, node)
            if verdict:
                f = left[node.name]
                if (
                    (r.cpu > 0 and r.cpu > f.cpu)
                    or (r.memory > 0 and r.memory > f.memory)
                    or (r.gpu > 0 and r.gpu > f.gpu)
                    or r.pods > f.pods
                    or r.extra
                ):
                    verdict = fits_resources(pod, f, node.allocatable)
            if not verdict:
                why = (
                    verdict.reason
                    if verdict.kind != "resources"
                    else f"insufficient {', '.join(verdict.short)}"
                )
                reasons[why] = reasons.get(why, 0) + 1
                continue
            score = rank(pod, node, left[node.name], gang)
            if score is None:
                reasons["excluded by the policy"] = reasons.get("excluded by the policy", 0) + 1
                continue
            if best is None or (score, index) < (best[0], best[1]):
                best = (score, index, node)
        if best is None:
            what = f"job {job}" if job else "the pods"
            return Placement(
                job,
                {},
                f"{what} cannot be placed whole: {i} of {len(order)} pods placed, none of "
                f"{len(nodes)} nodes takes pod {pod.name} ({pod.requests})"
                + (f": {_summary(reasons)}" if reasons else ""),
            )
        node = best[2]
        left[node.name] = left[node.name] - pod.requests
        on_node[node.name] = on_node.get(node.name, 0) + 1
        assignment[pod.key] = node.name
    return Placement(job, assignment, f"placed on {len(on_node)} node(s)")


def _check_gang(
    job: str | None,
    pods: Sequence[Pod],
    nodes: Sequence[Node],
    answer: Mapping[str, str],
    left: dict[str, Resources],
) -> Placement:
    if not answer:
        return Placement(job, {}, "the placement policy keeps the job waiting")
    by_name = {n.name: n for n in nodes}
    missing = [p.key for p in pods if p.key not in answer]
    if missing:
        return Placement(
            job, {}, f"the placement policy left {len(missing)} pod(s) out: {missing[0]}"
        )
    for pod in pods:
        node = by_name.get(answer[pod.key])
        if node is None:
            return Placement(
                job, {}, f"the placement policy chose unknown node {answer[pod.key]!r}"
            )
        verdict = admits(pod, node)
        if verdict:
            verdict = fits_resources(pod, left[node.name], node.allocatable)
        if not verdict:
            return Placement(
                job, {}, f"the placement policy put {pod.name} on {node.name}: {verdict.reason}"
            )
        left[node.name] = left[node.name] - pod.requests
    return Placement(
        job, dict(answer), f"placed on {len(set(answer.values()))} node(s) by the policy"
    )


def place_jobs(
    jobs: Sequence[Sequence[Pod]],
    nodes: Sequence[Node],
    policy: str | Policy = "pack",
) -> list[Placement]:
    """Place jobs one after the other (highest pod priority first, then in the order given),
    each whole or not at all, with what earlier jobs took counted: a job that does not fit
    what is left waits, with the reason, while later smaller ones may still start. Returns one
    :class:`Placement` per job, in the order given."""
    left = {n.name: n.free for n in nodes}
    order = sorted(
        range(len(jobs)), key=lambda i: (-max((p.priority for p in jobs[i]), default=0), i)
    )
    out: dict[int, Placement] = {}
    for i in order:
        result = place_gang(jobs[i], nodes, policy, free=left)
        if result.placed:
            by_key = {p.key: p for p in jobs[i]}
            for key, node in result.assignment.items():
                left[node] = left[node] - by_key[key].requests
        out[i] = result
    return [out[i] for i in range(len(jobs))]
