"""A job that must not be interrupted (``interruptible=False``): its pods carry the label
``juliarun.io/interruptible: "false"`` and the annotation
``cluster-autoscaler.kubernetes.io/safe-to-evict: "false"``, and the cluster planner never removes
a node one of them runs on, however empty — while the same job without the flag lets its node
go. From the spec, through the manifest the apiserver gets, to the placement model and plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from juliarun.backends.kubernetes.manifests import job_manifest
from juliarun.errors import SpecError
from juliarun.scaling.placement import Node, Pod
from juliarun.scaling.planner import PoolShape, plan
from juliarun.specs import JuliaParBatchWorkers

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
POOL = PoolShape.of("highcpu", cpu="4", memory="16Gi", node_type="highcpu", max=10)


def running_pod(job: JuliaParBatchWorkers, node: str) -> Pod:
    """The job's first pod as the apiserver lists it once running on ``node``."""
    template = job_manifest(job, {}, namespace="jr", image="julia:1.5.3")["spec"]["template"]
    meta: dict[str, Any] = {
        "name": f"{job.name}-0-abcde",
        "namespace": "jr",
        **template["metadata"],
    }
    obj = {
        "metadata": meta,
        "spec": {**template["spec"], "nodeName": node},
        "status": {"phase": "Running"},
    }
    return Pod.from_k8s(obj)


def workers(name: str, **extra: Any) -> JuliaParBatchWorkers:
    return JuliaParBatchWorkers(
        name, "/opt/w.jl", nworkers=1, cpu="1", memory="1Gi", node_type="highcpu", **extra
    )


def test_the_flag_becomes_a_label_and_an_annotation_of_the_pods() -> None:
    template = job_manifest(
        workers("mpi", interruptible=False), {}, namespace="jr", image="julia:1.5.3"
    )["spec"]["template"]
    assert template["metadata"]["labels"]["juliarun.io/interruptible"] == "false"
    annotations = template["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    plain = job_manifest(workers("w"), {}, namespace="jr", image="julia:1.5.3")
    assert "juliarun.io/interruptible" not in plain["spec"]["template"]["metadata"]["labels"]
    assert (
        "cluster-autoscaler.kubernetes.io/safe-to-evict"
        not in (plain["spec"]["template"]["metadata"]["annotations"])
    )


def test_a_node_running_a_non_interruptible_job_is_never_removed() -> None:
    mpi = running_pod(workers("mpi", interruptible=False), "highcpu-0")
    other = running_pod(workers("w"), "highcpu-1")
    assert (mpi.interruptible, mpi.safe_to_evict, mpi.blocks_removal) == (False, False, True)
    assert not other.blocks_removal
    nodes = [POOL.template("highcpu-0"), POOL.template("highcpu-1"), POOL.template("highcpu-2")]
    first = plan(nodes, [mpi, other], [POOL], now=NOW, unneeded_after=timedelta(0))
    since = first.unneeded_since
    # loop after loop, whatever the time and the budget: highcpu-0 stays
    for minutes in (0, 30, 600):
        answer = plan(
            nodes,
            [mpi, other],
            [POOL],
            now=NOW + timedelta(minutes=minutes),
            unneeded_since=since,
            unneeded_after=timedelta(0),
            disruption_budget=10,
        )
        since = answer.unneeded_since
        assert "highcpu-0" not in {d.node for d in answer.remove}
        assert answer.reason("highcpu-0") == "runs pod jr/mpi-0-abcde of non-interruptible job mpi"
    # the other job's node goes (its pod moves to highcpu-0), the empty one too
    assert {d.node for d in first.remove} == {"highcpu-1", "highcpu-2"}
    empty = [Node(n.name, n.allocatable, n.labels, n.taints) for n in nodes[:1]]
    assert plan(empty, [], [POOL], now=NOW, unneeded_after=timedelta(0)).remove[0].node == (
        "highcpu-0"
    )  # without the job, the node is removable


def test_the_flag_is_a_boolean() -> None:
    with pytest.raises(SpecError) as err:
        workers("w", interruptible="sometimes")
    assert [f for f, _ in err.value.errors] == ["interruptible"]
