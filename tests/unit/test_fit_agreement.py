"""The diagnosis (``backends/kubernetes/diagnosis.py``), the co-locating scheduler
(:func:`juliarun.scaling.placement.place_gang`, what the placement controller runs) and the
cluster autoscaler's planner (:func:`juliarun.scaling.planner.plan`) judge a fit the same way:
all three read the one placement model. The case is built to catch a model that looks at part
of the picture: a GPU worker with a node selector and a toleration, against a node with GPUs to
spare but a second taint, a node with room but the wrong type, a node of the right type with too
few GPUs, and a node that fits but is not ready yet."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from juliarun.backends.base import DiagnosisCategory
from juliarun.backends.kubernetes import diagnosis as dx
from juliarun.scaling.placement import NODE_TYPE_LABEL, Node, Pod, Taint, fits, place_gang
from juliarun.scaling.planner import PoolShape, plan

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TYPE_GPU = {"key": NODE_TYPE_LABEL, "value": "gpu", "effect": "NoSchedule"}
DEDICATED = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
NOT_READY = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}


def pod_obj() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "train-0-x",
            "namespace": "jr",
            "labels": {"juliarun.io/job": "train", dx.INDEX_LABEL: "0"},
        },
        "spec": {
            "nodeSelector": {NODE_TYPE_LABEL: "gpu"},
            "tolerations": [{**TYPE_GPU, "operator": "Equal"}],
            "containers": [
                {
                    "name": "main",
                    "resources": {
                        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
                    },
                }
            ],
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, 1 "
                    "node(s) didn't match Pod's node affinity/selector, 2 node(s) had "
                    "untolerated taint {dedicated: ml}. preemption: 0/4 nodes are available: "
                    "4 Preemption is not helpful for scheduling.",
                }
            ],
        },
    }


def node_obj(
    name: str, node_type: str, cpu: str, gpu: int, taints: list[dict[str, str]]
) -> dict[str, Any]:
    ready = not any(t["key"] == NOT_READY["key"] for t in taints)
    return {
        "metadata": {"name": name, "labels": {NODE_TYPE_LABEL: node_type}},
        "spec": {"taints": taints},
        "status": {
            "allocatable": {
                "cpu": cpu,
                "memory": "64Gi",
                "nvidia.com/gpu": str(gpu),
                "pods": "110",
            },
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


TAINTED = node_obj("gpu-tainted", "gpu", "32", 4, [TYPE_GPU, DEDICATED])  # GPUs, 2nd taint
WRONG_TYPE = node_obj("cpu-big", "highcpu", "64", 8, [])  # room, wrong type
SMALL = node_obj("gpu-small", "gpu", "32", 1, [TYPE_GPU])  # right type, 1 GPU
COMING = node_obj("gpu-coming", "gpu", "32", 4, [TYPE_GPU, NOT_READY])  # fits once ready
UP = node_obj("gpu-coming", "gpu", "32", 4, [TYPE_GPU])

POOLS = [
    # cheaper, with GPUs to spare, but its nodes carry the taint the job does not tolerate
    PoolShape.of(
        "dedicated",
        cpu="32",
        memory="64Gi",
        node_type="gpu",
        gpu=8,
        taints=[Taint(NODE_TYPE_LABEL, "gpu"), Taint("dedicated", "ml")],
        price=1.0,
    ),
    PoolShape.of(
        "gpu",
        cpu="32",
        memory="64Gi",
        node_type="gpu",
        gpu=4,
        taints=[Taint(NODE_TYPE_LABEL, "gpu")],
        price=3.0,
    ),
]


def judged(nodes: list[dict[str, Any]]) -> tuple[Pod, list[Node]]:
    return Pod.from_k8s(pod_obj()), [Node.from_k8s(n) for n in nodes]


def job_obj() -> dict[str, Any]:
    return {
        "metadata": {"name": "train", "namespace": "jr", "labels": {"juliarun.io/kind": "Job"}},
        "spec": {"completions": 1},
        "status": {},
    }


def test_no_node_fits_all_three_say_why_and_the_autoscaler_picks_the_pool_that_does() -> None:
    nodes = [TAINTED, WRONG_TYPE, SMALL]
    pod, model_nodes = judged(nodes)
    kinds = {n.name: fits(pod, n).kind for n in model_nodes}
    assert kinds == {"gpu-tainted": "taint", "cpu-big": "selector", "gpu-small": "resources"}

    # the diagnosis: the only node it could ever use has too few GPUs -> misfit, fatal
    report = dx.diagnose(job_obj(), [pod_obj()], nodes=nodes)
    assert report.status.category is DiagnosisCategory.RESOURCE_MISFIT
    assert report.status.reason == (
        "unschedulable: resource misfit: each worker asks nvidia.com/gpu=2 (largest node: 1), "
        "more than any gpu node has"
    )
    assert dx.waiting_kind(pod_obj(), nodes) == "misfit"

    # the scheduler: the job waits, with the same three reasons
    placement = place_gang([pod], model_nodes)
    assert not placement.placed
    assert placement.reason == (
        "job train cannot be placed whole: 0 of 1 pods placed, none of 3 nodes takes pod "
        "train-0-x (cpu=4, memory=16Gi, gpu=2): 1 node(s): insufficient gpu; 1 node(s): node "
        "selector juliarun.io/node-type=gpu does not match; 1 node(s): untolerated taint "
        "dedicated=ml:NoSchedule"
    )

    # the autoscaler: one new node, of the pool whose nodes take the pod, not the cheaper one
    answer = plan(model_nodes, [pod], POOLS, now=NOW)
    assert answer.added() == {"gpu": ["gpu-0"]}
    assert answer.unmet == ()
    only_dedicated = plan(model_nodes, [pod], POOLS[:1], now=NOW)
    assert only_dedicated.added() == {}
    assert [u.job for u in only_dedicated.unmet] == ["train"]
    assert "dedicated=ml:NoSchedule" in only_dedicated.unmet[0].reason


def test_a_node_that_fits_once_ready_all_three_wait_for_it() -> None:
    nodes = [TAINTED, WRONG_TYPE, SMALL, COMING]
    pod, model_nodes = judged(nodes)
    coming = model_nodes[-1]
    assert fits(pod, coming).kind in {"not-ready", "taint"}  # not now
    assert fits(pod, coming, now=False)  # but once ready

    report = dx.diagnose(job_obj(), [pod_obj()], nodes=nodes)
    assert report.status.category is DiagnosisCategory.NODE_NOT_SCHEDULABLE
    assert report.status.reason == (
        "unschedulable: waiting for a matching node to become schedulable (not-ready)"
    )
    assert report.status.phase == "created"  # waiting, not the job's fault
    assert not place_gang([pod], model_nodes).placed  # the scheduler does not place it now
    waiting = plan(model_nodes, [pod], POOLS, now=NOW)
    assert waiting.added() == {}  # nor does the autoscaler add a node for it
    assert waiting.unmet == ()


def test_once_the_node_is_ready_all_three_put_the_pod_there() -> None:
    nodes = [TAINTED, WRONG_TYPE, SMALL, UP]
    pod, model_nodes = judged(nodes)
    assert dx.waiting_kind(pod_obj(), nodes) == "nodes"  # it fits a free node: not a misfit
    report = dx.diagnose(job_obj(), [pod_obj()], nodes=nodes)
    # the scheduler's message predates the node: it says wait for room, not a misfit
    assert report.status.category is DiagnosisCategory.WAITING_FOR_NODES
    assert report.status.phase == "created"
    placement = place_gang([pod], model_nodes)
    assert placement.nodes == ["gpu-coming"]
    answer = plan(model_nodes, [pod], POOLS, now=NOW)
    assert answer.added() == {}
    assert answer.placements == {"jr/train-0-x": "gpu-coming"}
