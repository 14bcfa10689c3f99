"""The placement model (juliarun.scaling.placement): resources, fit with reasons, the builders
from Kubernetes JSON, gang placement and named policies.

The fit judgement is checked against the checks ``backends/kubernetes/diagnosis.py`` made on
the apiserver's dicts before it moved onto this model (kept below as an independent reference:
toleration, node selector, empty-node resources), on generated and on recorded objects, and
against what the diagnosis says now."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from juliarun.backends.kubernetes import diagnosis
from juliarun.errors import ConfigError
from juliarun.scaling import placement
from juliarun.scaling.placement import (
    NODE_TYPE_LABEL,
    Gang,
    Node,
    Placement,
    Pod,
    Requirement,
    Resources,
    Taint,
    Toleration,
    affinity_to,
    bind,
    fits,
    get_policy,
    place_gang,
    place_jobs,
    register_policy,
    tolerates,
)
from juliarun.specs import parse_quantity

DATA = Path(__file__).parent / "data" / "kubernetes"
GI = 2**30
TYPE_TAINT = Taint(NODE_TYPE_LABEL, "highcpu", "NoSchedule")
TYPE_TOL = Toleration(NODE_TYPE_LABEL, "Equal", "highcpu", "NoSchedule")


def node(name: str, cpu: str = "4", memory: str = "16Gi", slots: int = 110, **kw: Any) -> Node:
    return Node(name, Resources.of(cpu=cpu, memory=memory, pods=slots), **kw)


def worker(job: str, i: int, cpu: str = "2", memory: str = "1Gi", **kw: Any) -> Pod:
    return Pod(f"{job}-{i}", job=job, requests=Resources.of(cpu=cpu, memory=memory), **kw)


@pytest.fixture
def restore_policies() -> Iterator[None]:
    saved = dict(placement._POLICIES)
    yield
    placement._POLICIES.clear()
    placement._POLICIES.update(saved)


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


def test_resources_parse_integers_rounding_up() -> None:
    r = Resources.parse(
        {"cpu": "1500m", "memory": "1.5Gi", "nvidia.com/gpu": "2", "pods": "110", "x/y": "1"}
    )
    assert r == Resources(1500, 1536 * 2**20, 2, 110, (("x/y", 1),))
    # a fraction of a millicore or of a byte rounds up, as the scheduler's MilliValue/Value
    assert Resources.parse({"cpu": "0.0001", "memory": "0.5"}).vector() == (1, 1, 0, 0)
    # another vendor's GPUs are an extended resource, not the configured gpu
    assert Resources.parse({"amd.com/gpu": "1"}).extra == (("amd.com/gpu", 1),)
    assert Resources.parse({"amd.com/gpu": "1"}, gpu_resource="amd.com/gpu").gpu == 1


def test_resources_arithmetic_and_shortfall() -> None:
    a = Resources.of(cpu="3", memory="2Gi") + Resources.parse({"cpu": "1", "x/y": "2"})
    assert a == Resources(4000, 2 * GI, 0, 0, (("x/y", 2),))
    assert a - Resources.of(cpu="1") == Resources(3000, 2 * GI, 0, 0, (("x/y", 2),))
    assert Resources.of(cpu="1", memory="1Gi") * 3 == Resources(3000, 3 * GI, 0, 0)
    have = Resources.of(cpu="2", memory="4Gi")
    assert Resources.of(cpu="3", memory="8Gi", gpu=1).short_of(have) == ["cpu", "memory", "gpu"]
    assert Resources.parse({"x/y": "1"}).short_of(have) == ["x/y"]
    # only what is asked for counts: an overcommitted resource does not keep out a pod without it
    assert Resources.of(cpu="1").fits_in(Resources(2000, -5, 0, 0))
    assert str(Resources.of(cpu="2500m", memory="16Gi", gpu=1)) == "cpu=2500m, memory=16Gi, gpu=1"


# ---------------------------------------------------------------------------------------------
# Fit and its reasons
# ---------------------------------------------------------------------------------------------


def test_fit_reasons_in_order() -> None:
    pod = worker("j", 0, node_selector={NODE_TYPE_LABEL: "highcpu"}, tolerations=(TYPE_TOL,))
    typed = {NODE_TYPE_LABEL: "highcpu"}
    assert (
        fits(pod, node("a")).reason == "node selector juliarun.io/node-type=highcpu does not match"
    )
    assert fits(pod, node("a", labels=typed, unschedulable=True)).reason == "node is cordoned"
    assert fits(pod, node("a", labels=typed, ready=False)).reason == "node is not ready"
    other = Taint("dedicated", "ml", "NoExecute")
    assert fits(pod, node("a", labels=typed, taints=(TYPE_TAINT, other))).reason == (
        "untolerated taint dedicated=ml:NoExecute"
    )
    busy = node(
        "a", labels=typed, taints=(TYPE_TAINT,), pods=(worker("o", 0, cpu="3", memory="15.5Gi"),)
    )
    verdict = fits(pod, busy)
    assert (verdict.ok, verdict.kind, verdict.short) == (False, "resources", ("cpu", "memory"))
    assert verdict.reason == (
        "insufficient cpu (asks 2, 1 free of 4), memory (asks 1Gi, 512Mi free of 16Gi)"
    )
    assert fits(
        worker("j", 1, cpu="1", memory="512Mi", node_selector=typed, tolerations=(TYPE_TOL,)), busy
    ).ok
    assert fits(pod, busy, empty=True).ok  # against all of allocatable: it would fit empty
    full = node(
        "a", labels=typed, pods=tuple(worker("o", i, cpu="0", memory="0") for i in range(110))
    )
    assert fits(pod, full).reason == "insufficient pods (asks 1, 0 free of 110)"
    gpu = Pod("g", requests=Resources.of(cpu="1", gpu=1))
    assert fits(gpu, node("a")).reason == "insufficient gpu (asks 1, 0 free of 0)"


def test_fit_now_false_judges_the_node_once_its_transient_state_passes() -> None:
    pod = worker("j", 0)
    booting = node(
        "a",
        ready=False,
        unschedulable=True,
        taints=(Taint("node.kubernetes.io/not-ready", "", "NoSchedule"),),
    )
    assert fits(pod, booting).kind == "cordoned"
    assert fits(pod, booting, now=False).ok
    tainted = node("a", taints=(TYPE_TAINT,))
    assert fits(pod, tainted, now=False).kind == "taint"  # a real taint stays


def test_required_affinity() -> None:
    n1, n2 = node("n1", labels={"zone": "a", "rank": "5"}), node("n2", labels={"zone": "b"})
    pinned = Pod("p", requests=Resources.of(cpu="1"), affinity=affinity_to(["n2"]))
    assert pinned.node_names == frozenset({"n2"})
    assert (fits(pinned, n1).reason, fits(pinned, n2).ok) == (
        "required node affinity does not match",
        True,
    )
    terms = (
        (Requirement("zone", "In", ("a",)), Requirement("rank", "Gt", ("3",))),
        (Requirement("zone", "NotIn", ("a", "b")),),
    )
    p = Pod("q", affinity=terms)
    assert (fits(p, n1).ok, fits(p, n2).ok, fits(p, node("n3")).ok) == (True, False, True)
    exists = Pod("r", affinity=((Requirement("rank", "Exists"),),))
    gone = Pod("s", affinity=((Requirement("rank", "DoesNotExist"),),))
    assert (fits(exists, n1).ok, fits(exists, n2).ok, fits(gone, n2).ok) == (True, False, True)


def test_tolerations_like_the_kubernetes_scheduler() -> None:
    t = Taint("k", "v", "NoSchedule")
    assert tolerates([Toleration("k", "Equal", "v", "NoSchedule")], t)
    assert tolerates([Toleration("k", "Equal", "v", None)], t)  # every effect
    assert tolerates([Toleration("k", "Exists")], t)
    assert tolerates([Toleration(None, "Exists")], t)  # empty key with Exists: every taint
    assert not tolerates([Toleration("k", "Equal", "w", "NoSchedule")], t)
    assert not tolerates([Toleration("k", "Equal", "v", "NoExecute")], t)
    assert not tolerates([Toleration("other", "Exists")], t)
    assert tolerates([], Taint("k", "v", "PreferNoSchedule"))  # never keeps a pod off


# --- the same verdicts as diagnosis.py, on generated objects -------------------------------
#
# The reference: the dict-level checks the diagnosis made before it moved onto the placement
# model, written independently of it.


def ref_requests(pod: Mapping[str, Any]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    spec = pod.get("spec", {})
    for c in spec.get("containers") or []:
        for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[k] = total.get(k, 0) + parse_quantity(str(v))
    for c in spec.get("initContainers") or []:
        for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[k] = max(total.get(k, 0), parse_quantity(str(v)))
    return total


def ref_tolerates(pod: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    if taint.get("effect") not in {"NoSchedule", "NoExecute"}:
        return True
    for tol in pod.get("spec", {}).get("tolerations") or []:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists" and (not tol.get("key") or tol["key"] == taint["key"]):
            return True
        if tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def ref_node_matches(pod: Mapping[str, Any], node: Mapping[str, Any], *, now: bool) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    wanted = pod.get("spec", {}).get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    if now and node.get("spec", {}).get("unschedulable"):
        return False
    return all(
        ref_tolerates(pod, t)
        for t in node.get("spec", {}).get("taints") or []
        if now or not str(t.get("key", "")).startswith("node.kubernetes.io/")
    )


def ref_fits_empty(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    allocatable = node.get("status", {}).get("allocatable") or {}
    return all(
        amount <= parse_quantity(str(allocatable.get(resource, "0")))
        for resource, amount in ref_requests(pod).items()
    )


KEYS = st.sampled_from(["a", "b", "node.kubernetes.io/not-ready"])
VALUES = st.sampled_from(["", "x", "y"])
EFFECTS = st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"])
taint_dicts = st.fixed_dictionaries({"key": KEYS, "value": VALUES, "effect": EFFECTS})
toleration_dicts = st.fixed_dictionaries(
    {},
    optional={
        "key": KEYS,
        "operator": st.sampled_from(["Exists", "Equal"]),
        "value": VALUES,
        "effect": EFFECTS,
    },
)
quantities = st.sampled_from(["0", "250m", "1", "1500m", "2", "4"])
memories = st.sampled_from(["0", "512Mi", "1Gi", "1536Mi", "4Gi"])


@st.composite
def k8s_pod_and_node(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    labels = draw(st.dictionaries(st.sampled_from(["t", "u"]), st.sampled_from(["1", "2"])))
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "nodeSelector": draw(
                st.dictionaries(
                    st.sampled_from(["t", "u"]), st.sampled_from(["1", "2"]), max_size=1
                )
            ),
            "tolerations": draw(st.lists(toleration_dicts, max_size=3)),
            "containers": [
                {"resources": {"requests": {"cpu": draw(quantities), "memory": draw(memories)}}}
                for _ in range(draw(st.integers(1, 2)))
            ],
            "initContainers": [
                {"resources": {"requests": {"cpu": draw(quantities)}}}
                for _ in range(draw(st.integers(0, 1)))
            ],
        },
    }
    n = {
        "metadata": {"name": "n", "labels": labels},
        "spec": {
            "taints": draw(st.lists(taint_dicts, max_size=3)),
            "unschedulable": draw(st.booleans()),
        },
        "status": {
            "allocatable": {"cpu": draw(quantities), "memory": draw(memories), "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    return pod, n


@settings(max_examples=300, deadline=None)
@given(k8s_pod_and_node())
def test_same_verdict_as_the_diagnosis(objs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    pod_obj, node_obj = objs
    pod, n = Pod.from_k8s(pod_obj), Node.from_k8s(node_obj)
    for taint in node_obj["spec"]["taints"]:
        assert tolerates(pod.tolerations, Taint(**taint)) == ref_tolerates(pod_obj, taint)
    for now in (True, False):
        expected = ref_node_matches(pod_obj, node_obj, now=now)
        assert placement.admits(pod, n, now=now).ok == expected
        assert diagnosis.node_matches(pod_obj, node_obj, now=now) == expected
    asked = {k: str(v) for k, v in ref_requests(pod_obj).items()}
    assert pod.requests == Resources.parse(asked) + Resources(pods=1)
    assert placement.fits_resources(pod, n.allocatable).ok == ref_fits_empty(pod_obj, node_obj)
    assert diagnosis._fits_empty(pod_obj, node_obj) == (
        ref_node_matches(pod_obj, node_obj, now=False) and ref_fits_empty(pod_obj, node_obj)
    )


@pytest.mark.parametrize("case", ["cpu_misfit", "succeeded", "no_gpu_node", "oomkilled"])
def test_recorded_objects_judged_like_the_diagnosis(case: str) -> None:
    data = json.loads((DATA / f"{case}.json").read_text())
    pods = [Pod.from_k8s(p) for p in data["pods"]]
    nodes = [
        Node.from_k8s(n, [p for p in pods if p.node == n["metadata"]["name"]])
        for n in data["nodes"]
    ]
    for pod_obj, pod in zip(data["pods"], pods, strict=True):
        for node_obj, n in zip(data["nodes"], nodes, strict=True):
            expected = ref_node_matches(pod_obj, node_obj, now=False) and ref_fits_empty(
                pod_obj, node_obj
            )
            assert fits(pod, n, now=False, empty=True).ok == expected
            assert diagnosis._fits_empty(pod_obj, node_obj) == expected
    if case == "cpu_misfit":
        [pod], [n] = pods, nodes
        assert (n.allocatable.cpu, n.ready, pod.requests.cpu) == (2000, True, 64000)
        assert fits(pod, n, empty=True).reason == "insufficient cpu (asks 64, 2 free of 2)"
    if case == "no_gpu_node":
        [pod], [n] = pods, nodes
        assert fits(pod, n).kind == "selector"


def test_builders_from_kubernetes_json() -> None:
    node_obj = {
        "metadata": {
            "name": "highcpu-3",
            "labels": {"juliarun.io/pool": "highcpu", NODE_TYPE_LABEL: "highcpu"},
            "creationTimestamp": "2026-12-04T10:00:00Z",
        },
        "spec": {
            "unschedulable": True,
            "taints": [{"key": NODE_TYPE_LABEL, "value": "highcpu", "effect": "NoSchedule"}],
        },
        "status": {
            "allocatable": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
            "conditions": [{"type": "Ready", "status": "False"}],
        },
    }
    pod_obj = {
        "metadata": {
            "name": "j-0-abc",
            "namespace": "jr",
            "labels": {"batch.kubernetes.io/job-name": "j", "juliarun.io/critical": "true"},
            "annotations": {"juliarun.io/interruptible": "false"},
        },
        "spec": {
            "nodeName": "highcpu-3",
            "priority": 100,
            "containers": [
                {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                {"resources": {"requests": {"cpu": "500m", "nvidia.com/gpu": "1"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "512Mi"}}}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchFields": [
                                    {
                                        "key": "metadata.name",
                                        "operator": "In",
                                        "values": ["highcpu-3"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
            "tolerations": [
                {
                    "key": NODE_TYPE_LABEL,
                    "operator": "Equal",
                    "value": "highcpu",
                    "effect": "NoSchedule",
                }
            ],
        },
        "status": {"phase": "Running"},
    }
    pod = Pod.from_k8s(pod_obj)
    assert pod == Pod(
        "j-0-abc",
        namespace="jr",
        job="j",
        requests=Resources(2000, GI, 1, 1),
        affinity=affinity_to(["highcpu-3"]),
        tolerations=(TYPE_TOL,),
        critical=True,
        interruptible=False,
        priority=100,
        node="highcpu-3",
        phase="Running",
    )
    n = Node.from_k8s(node_obj, [pod])
    assert (n.name, n.pool, n.unschedulable, n.ready, n.taints) == (
        "highcpu-3",
        "highcpu",
        True,
        False,
        (TYPE_TAINT,),
    )
    # no "pods" in allocatable: unlimited slots; the pod's requests are what is used
    assert n.allocatable == Resources(4000, 16 * GI, 1, placement.UNLIMITED)
    assert n.used == Resources(2000, GI, 1, 1)
    assert str(n.created) == "2026-12-04 10:00:00+00:00"
    daemon = Pod.from_k8s({"metadata": {"name": "d", "ownerReferences": [{"kind": "DaemonSet"}]}})
    assert daemon.daemon and not daemon.blocks_removal
    evict = Pod.from_k8s(
        {"metadata": {"name": "e", "annotations": {placement.SAFE_TO_EVICT_KEY: "false"}}}
    )
    assert (evict.safe_to_evict, evict.blocks_removal, evict.critical) == (False, True, False)
    done = Pod.from_k8s(
        {
            "metadata": {"name": "f"},
            "spec": {"nodeName": "highcpu-3"},
            "status": {"phase": "Succeeded"},
        }
    )
    assert n.with_pods([pod, done]).used == n.used  # a finished pod holds nothing


def test_bind_attaches_pods_to_their_nodes() -> None:
    a, b = node("a"), node("b")
    pods = [
        worker("j", 0, node="a"),
        worker("j", 1, node="a"),
        worker("j", 2, node="gone"),
        worker("j", 3),
    ]
    bound = bind([a, b], pods)
    assert [len(n.pods) for n in bound] == [2, 0]
    assert bound[0].free == Resources(0, 14 * GI, 0, 108)


# ---------------------------------------------------------------------------------------------
# Gang placement
# ---------------------------------------------------------------------------------------------


def test_pack_uses_the_fewest_nodes_then_the_best_fit() -> None:
    nodes = [node("n0"), node("n1", pods=(worker("o", 0, cpu="2"),)), node("n2"), node("n3")]
    pods = [worker("j", i) for i in range(5)]
    result = place_gang(pods, nodes)
    assert result.assignment == {
        "default/j-0": "n0",  # nodes that hold two of the job first
        "default/j-1": "n0",
        "default/j-2": "n2",
        "default/j-3": "n2",
        "default/j-4": "n1",  # the last one: the half-full node fits it best
    }
    assert (result.placed, result.nodes, result.reason) == (
        True,
        ["n0", "n1", "n2"],
        "placed on 3 node(s)",
    )


def test_spread_puts_each_pod_on_the_most_free_node() -> None:
    nodes = [node("n0"), node("n1", pods=(worker("o", 0, cpu="2"),)), node("n2"), node("n3")]
    pods = [worker("j", i, cpu="1") for i in range(5)]
    result = place_gang(pods, nodes, policy="spread")
    assert result.assignment == {
        "default/j-0": "n0",
        "default/j-1": "n2",
        "default/j-2": "n3",
        "default/j-3": "n1",
        "default/j-4": "n0",
    }


def test_largest_pods_first_so_mixed_sizes_pack() -> None:
    nodes = [node("n0"), node("n1")]
    pods = [
        worker("j", 0, cpu="1"),
        worker("j", 1, cpu="3"),
        worker("j", 2, cpu="1"),
        worker("j", 3, cpu="3"),
    ]
    result = place_gang(pods, nodes)
    assert result.assignment == {
        "default/j-1": "n0",
        "default/j-3": "n1",
        "default/j-0": "n0",
        "default/j-2": "n1",
    }


def test_a_gang_that_does_not_fit_whole_places_nothing() -> None:
    nodes = [node("n0"), node("n1", taints=(TYPE_TAINT,)), node("n2", unschedulable=True)]
    pods = [worker("j", i) for i in range(3)]
    result = place_gang(pods, nodes)
    assert result == Placement(
        "j",
        {},
        "job j cannot be placed whole: 2 of 3 pods placed, none of 3 nodes takes pod j-2 "
        "(cpu=2, memory=1Gi): 1 node(s): insufficient cpu; 1 node(s): node is cordoned; "
        "1 node(s): untolerated taint juliarun.io/node-type=highcpu:NoSchedule",
    )


def test_two_jobs_that_fit_alone_but_not_together() -> None:
    nodes = [node("n0"), node("n1")]
    first = [worker("a", i) for i in range(3)]
    second = [worker("b", i) for i in range(2)]
    assert place_gang(first, nodes).placed and place_gang(second, nodes).placed
    a, b = place_jobs([first, second], nodes)
    assert a.assignment == {"default/a-0": "n0", "default/a-1": "n0", "default/a-2": "n1"}
    assert (b.placed, b.reason) == (
        False,
        "job b cannot be placed whole: 1 of 2 pods placed, none of 2 nodes takes pod b-1 "
        "(cpu=2, memory=1Gi): 2 node(s): insufficient cpu",
    )
    # the higher priority job goes first, whatever the order given
    urgent = [worker("b", i, priority=10) for i in range(2)]
    a, b = place_jobs([first, urgent], nodes)
    assert (a.placed, b.placed) == (False, True)
    # a smaller later job still starts while a big one waits
    small = [worker("c", 0, cpu="1")]
    a, b, c = place_jobs([first, second, small], nodes)
    assert (a.placed, b.placed, c.assignment) == (True, False, {"default/c-0": "n1"})


def test_a_registered_ranking_function_changes_where_a_job_lands(restore_policies: None) -> None:
    nodes = [
        node("n0", labels={"zone": "a"}),
        node("n1", labels={"zone": "b"}),
        node("n2", labels={"zone": "b"}),
    ]
    pods = [worker("j", i, cpu="1") for i in range(3)]
    assert place_gang(pods, nodes).nodes == ["n0"]

    def zone_b(pod: Pod, n: Node, free: Resources, gang: Gang) -> Any:
        if n.labels.get("zone") != "b":
            return None  # never zone a
        return (-gang.on(n.name), -free.cpu, n.name)

    register_policy("zone-b", zone_b)
    assert get_policy("zone-b") is zone_b
    assert place_gang(pods, nodes, policy="zone-b").nodes == ["n1"]
    assert "zone-b" in placement.policies()
    tight = [worker("j", i, cpu="3") for i in range(3)]
    assert place_gang(tight, nodes, policy="zone-b").reason.endswith(
        "1 node(s): excluded by the policy; 2 node(s): insufficient cpu"
    )


def test_a_registered_class_can_place_the_whole_job(restore_policies: None) -> None:
    class RoundRobin:
        def place(
            self, pods: Sequence[Pod], nodes: Sequence[Node], free: Mapping[str, Resources]
        ) -> Mapping[str, str]:
            return {p.key: nodes[i % len(nodes)].name for i, p in enumerate(pods)}

    class Overcommit:
        def place(
            self, pods: Sequence[Pod], nodes: Sequence[Node], free: Mapping[str, Resources]
        ) -> Mapping[str, str]:
            return {p.key: nodes[0].name for p in pods}

    class Ranked:
        def rank(self, pod: Pod, n: Node, free: Resources, gang: Gang) -> Any:
            return -int(n.name[1:])

    register_policy("round-robin", RoundRobin)
    register_policy("overcommit", Overcommit)
    register_policy("ranked", Ranked)
    nodes = [node("n0"), node("n1"), node("n2")]
    pods = [worker("j", i) for i in range(3)]
    assert place_gang(pods, nodes, policy="round-robin").assignment == {
        "default/j-0": "n0",
        "default/j-1": "n1",
        "default/j-2": "n2",
    }
    # a policy's answer is checked: it cannot overcommit a node
    assert place_gang(pods, nodes, policy="overcommit") == Placement(
        "j", {}, "the placement policy put j-2 on n0: insufficient cpu (asks 2, 0 free of 4)"
    )
    assert place_gang(pods, nodes, policy="ranked").nodes == ["n1", "n2"]


def test_policy_errors_name_the_policy(restore_policies: None) -> None:
    with pytest.raises(
        ConfigError, match=r"^unknown placement policy 'nope' \(known: .*pack, spread"
    ) as err:
        get_policy("nope")
    assert err.value.hint == (
        "register it first with juliarun.scaling.placement.register_policy(name, fn)"
    )
    with pytest.raises(ConfigError, match="neither callable nor has rank"):
        register_policy("bad", 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="non-empty name"):
        register_policy("", placement.pack)


# --- properties ------------------------------------------------------------------------------

cpus = st.sampled_from(["250m", "500m", "1", "2", "3"])
mems = st.sampled_from(["256Mi", "1Gi", "2Gi", "6Gi"])


def _fitting(alloc: Resources, pods: list[Pod]) -> tuple[Pod, ...]:
    """The running pods that fit the node, in order (a node is never overcommitted)."""
    out: list[Pod] = []
    for p in pods:
        if (sum((q.requests for q in out), Resources()) + p.requests).fits_in(alloc):
            out.append(p)
    return tuple(out)


@st.composite
def cluster(draw: st.DrawFn) -> tuple[list[Node], list[list[Pod]]]:
    nodes = []
    for i in range(draw(st.integers(1, 6))):
        typed = draw(st.booleans())
        alloc = Resources.of(
            cpu=draw(st.sampled_from(["2", "4", "8"])),
            memory=draw(st.sampled_from(["4Gi", "16Gi"])),
            pods=draw(st.sampled_from([3, 110])),
        )
        nodes.append(
            Node(
                f"n{i}",
                alloc,
                labels={NODE_TYPE_LABEL: "highcpu"} if typed else {},
                taints=(TYPE_TAINT,) if typed and draw(st.booleans()) else (),
                unschedulable=draw(st.integers(0, 9)) == 0,
                pods=_fitting(
                    alloc,
                    [
                        Pod(f"r{i}-{k}", requests=Resources.of(cpu=draw(cpus), memory=draw(mems)))
                        for k in range(draw(st.integers(0, 2)))
                    ],
                ),
            )
        )
    jobs = []
    for j in range(draw(st.integers(1, 4))):
        typed = draw(st.booleans())
        tolerant = draw(st.booleans())
        cpu, mem = draw(cpus), draw(mems)
        jobs.append(
            [
                Pod(
                    f"j{j}-{i}",
                    job=f"j{j}",
                    requests=Resources.of(cpu=cpu, memory=mem),
                    node_selector={NODE_TYPE_LABEL: "highcpu"} if typed else {},
                    tolerations=(TYPE_TOL,) if tolerant else (),
                )
                for i in range(draw(st.integers(1, 6)))
            ]
        )
    return nodes, jobs


@settings(max_examples=150, deadline=None)
@given(cluster(), st.sampled_from(["pack", "spread"]))
def test_placements_never_overcommit_and_respect_selectors_and_taints(
    state: tuple[list[Node], list[list[Pod]]], policy: str
) -> None:
    nodes, jobs = state
    results = place_jobs(jobs, nodes, policy)
    by_name = {n.name: n for n in nodes}
    used = {n.name: n.used for n in nodes}
    for job, result in zip(jobs, results, strict=True):
        assert set(result.assignment) in (set(), {p.key for p in job})  # whole or nothing
        for p in job:
            if p.key in result.assignment:
                n = by_name[result.assignment[p.key]]
                assert placement.admits(p, n).ok
                assert all(n.labels.get(k) == v for k, v in p.node_selector.items())
                assert all(tolerates(p.tolerations, t) for t in n.taints)
                assert not n.unschedulable
                used[n.name] = used[n.name] + p.requests
        if not result.placed:
            assert result.reason
    for name, u in used.items():
        assert u.fits_in(by_name[name].allocatable), name


def test_pack_keeps_a_job_on_few_nodes_in_a_fragmented_cluster() -> None:
    # 100 nodes with a little room each, 4 empty ones: a job of 8 x 2 cpu lands on 2 nodes
    busy = [node(f"b{i:02}", cpu="8", pods=(worker("o", i, cpu="6"),)) for i in range(100)]
    empty = [node(f"e{i}", cpu="8") for i in range(4)]
    pods = [worker("j", i) for i in range(8)]
    assert place_gang(pods, busy + empty).nodes == ["e0", "e1"]
    assert len(place_gang(pods, busy + empty, policy="spread").nodes) == 8
    # the ranking function sees the gang: how many are left, where they went
    seen: list[tuple[int, int]] = []

    def watch(pod: Pod, n: Node, free: Resources, gang: Gang) -> Any:
        if n.name == "e3":
            seen.append((gang.remaining, gang.on("e3")))
        return placement.pack(pod, n, free, gang)

    # e3 holds 4 and b00 one: the fifth goes to b00, the sixth finds no room
    result = place_gang(pods, [*empty[3:], *busy[:1]], policy=watch)
    assert seen == [(8, 0), (7, 1), (6, 2), (5, 3)]
    assert result.reason.startswith("job j cannot be placed whole: 5 of 8 pods placed")
