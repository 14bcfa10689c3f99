"""The cluster autoscaler on the test cluster (real apiserver, real kube-scheduler, kwok nodes):
a job larger than the cluster makes exactly the nodes it needs appear, all its pods run, and
after it is deleted the nodes go down to the pool's minimum; headroom lets the next job start
at once; a node running a critical pod is never removed; a restarted autoscaler makes no
duplicate nodes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client

import juliarun
from juliarun.clusterscaler import ClusterScaler
from juliarun.providers.kwok import KwokProvider
from juliarun.scaling.planner import Headroom
from juliarun.specs import JuliaParBatchWorkers, NodePool
from tests.integration.fixtures._service import require
from tests.integration.fixtures.kubernetes import _probe_kwok, node_ready, wait_for
from tests.integration.pool_jobs import pool_workers

pytestmark = pytest.mark.kwok


@pytest.fixture
def pool(kube_ctx: Any) -> Iterator[NodePool]:
    require("kwok", _probe_kwok)
    made = NodePool(
        name=f"ca{uuid.uuid4().hex[:6]}",
        node_type="highcpu",
        cpu="4",
        memory="16Gi",
        min=0,
        max=10,
    )
    yield made
    provider = KwokProvider(kube_ctx.backend.client)
    provider.delete_nodes(made, provider.nodes(made))


workers = pool_workers


def pool_nodes(kube_core: client.CoreV1Api, pool: NodePool) -> list[str]:
    nodes = kube_core.list_node(label_selector=f"juliarun.io/pool={pool.name}").items
    return sorted(n.metadata.name for n in nodes)


def running(kube_core: client.CoreV1Api, namespace: str, job: str) -> int:
    pods = kube_core.list_namespaced_pod(namespace, label_selector=f"juliarun.io/job={job}")
    return sum(1 for p in pods.items if p.status.phase == "Running")


def ready_nodes(kube_core: client.CoreV1Api, pool: NodePool) -> int:
    nodes = kube_core.list_node(label_selector=f"juliarun.io/pool={pool.name}").items
    return sum(1 for n in nodes if node_ready(n))


def test_nodes_follow_a_job_up_and_down_without_duplicates(
    kube_ctx: Any, pool: NodePool, kube_core: client.CoreV1Api, kube_namespace: str
) -> None:
    job = workers("big", pool, 8)  # 8 x 2 cpu on 4-cpu nodes: 4 nodes
    juliarun.submit(kube_ctx, job)
    wait_for(
        lambda: (
            len(
                kube_core.list_namespaced_pod(
                    kube_namespace, label_selector="juliarun.io/job=big"
                ).items
            )
            == 8
        ),
        60,
        what="8 pods",
    )
    scaler = ClusterScaler(kube_ctx, [pool], unneeded_after=timedelta(0))
    first = scaler.step()
    names = [pool.node_name(i) for i in range(4)]
    assert first.added == {pool.name: names}
    assert first.reasons()[names[0]].startswith("new node for 2 pending pod(s) of job big")

    restarted = ClusterScaler(kube_ctx, [pool], unneeded_after=timedelta(0))
    assert restarted.step().added == {}  # the nodes made before are found: no duplicate
    assert pool_nodes(kube_core, pool) == names

    wait_for(lambda: ready_nodes(kube_core, pool) == 4, 60, what="4 ready nodes")
    wait_for(lambda: running(kube_core, kube_namespace, "big") == 8, 120, what="8 running pods")
    kept = restarted.step()
    assert kept.added == {} and kept.removed == ()  # every node is needed

    juliarun.delete(kube_ctx, job, force=True)
    wait_for(lambda: running(kube_core, kube_namespace, "big") == 0, 60, what="pods gone")
    down = restarted.step()
    assert sorted(down.removed) == names  # empty nodes go at once, down to min 0
    wait_for(lambda: pool_nodes(kube_core, pool) == [], 60, what="the nodes deleted")


def test_headroom_starts_the_next_job_at_once_and_critical_pods_keep_their_node(
    kube_ctx: Any, pool: NodePool, kube_core: client.CoreV1Api, kube_namespace: str
) -> None:
    scaler = ClusterScaler(
        kube_ctx,
        [pool],
        headroom={pool.name: Headroom.of(pods=2, pod_cpu="2", pod_memory="1Gi")},
        unneeded_after=timedelta(0),
    )
    held = scaler.step()
    assert held.added == {pool.name: [pool.node_name(0)]}  # room for 2 pods of 2 cpu
    assert "headroom" in held.reasons()[pool.node_name(0)]
    wait_for(lambda: ready_nodes(kube_core, pool) == 1, 60, what="the headroom node")

    quick = workers("quick", pool, 2)
    juliarun.submit(kube_ctx, quick)
    # no scaler step in between: the pods run on the room kept free
    wait_for(lambda: running(kube_core, kube_namespace, "quick") == 2, 120, what="2 pods")
    assert pool_nodes(kube_core, pool) == [pool.node_name(0)]

    # a critical pod on the node: never removed, whatever the plan wants
    kube_core.create_namespaced_pod(
        kube_namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="critical", labels={"juliarun.io/critical": "true"}),
            spec=client.V1PodSpec(
                node_name=pool.node_name(0),
                containers=[client.V1Container(name="main", image="pause")],
                tolerations=[client.V1Toleration(operator="Exists")],
            ),
        ),
    )
    juliarun.delete(kube_ctx, quick, force=True)
    wait_for(lambda: running(kube_core, kube_namespace, "quick") == 0, 60, what="pods gone")
    no_headroom = ClusterScaler(kube_ctx, [pool], unneeded_after=timedelta(0))
    step = no_headroom.step()
    assert step.removed == () and step.draining == ()
    assert "critical" in step.reasons()[pool.node_name(0)]
    assert pool_nodes(kube_core, pool) == [pool.node_name(0)]


def test_a_spot_node_taken_back_is_replaced_and_the_job_completes(
    kube_ctx: Any, pool: NodePool, kube_core: client.CoreV1Api, kube_namespace: str
) -> None:
    spot = pool.model_copy(update={"spot": True})
    job = JuliaParBatchWorkers(
        "spotty",
        "/opt/none.jl",
        nworkers=2,
        restart="OnFailure",
        env={"KWOK_RUN_FOR": "30s"},
        resources={
            "cpu": "2",
            "memory": "1Gi",
            "node_type": "highcpu",
            "node_labels": {"juliarun.io/pool": spot.name},
        },
    )
    juliarun.submit(kube_ctx, job)
    wait_for(
        lambda: (
            len(
                kube_core.list_namespaced_pod(
                    kube_namespace, label_selector="juliarun.io/job=spotty"
                ).items
            )
            == 2
        ),
        60,
        what="2 pods",
    )
    scaler = ClusterScaler(kube_ctx, [spot], unneeded_after=timedelta(0))
    assert scaler.step().added == {spot.name: [spot.node_name(0)]}
    assert pool_nodes(kube_core, spot) == [spot.node_name(0)]
    node = kube_core.read_node(spot.node_name(0))
    assert node.metadata.labels["juliarun.io/spot"] == "true"
    wait_for(lambda: running(kube_core, kube_namespace, "spotty") == 2, 120, what="2 pods")

    # Taken back: the instance is gone, and with it its node and pods (what a cloud's node
    # lifecycle controller and pod GC do; kwok alone would keep "running" pods of a lost node).
    KwokProvider(kube_ctx.backend.client).delete_nodes(spot, [spot.node_name(0)])
    for gone in kube_core.list_namespaced_pod(
        kube_namespace, field_selector=f"spec.nodeName={spot.node_name(0)}"
    ).items:
        kube_core.delete_namespaced_pod(gone.metadata.name, kube_namespace, grace_period_seconds=0)

    def replaced() -> bool:
        scaler.step()
        return running(kube_core, kube_namespace, "spotty") == 2 and ready_nodes(kube_core, spot)

    wait_for(replaced, 120, 2, "the workers running again on a new node")
    assert pool_nodes(kube_core, spot) == [spot.node_name(0)]  # the name is free again
    final = juliarun.wait(kube_ctx, job, timeout=180)
    assert str(final) == "succeeded"
    juliarun.delete(kube_ctx, job, force=True)


def test_a_node_running_a_non_interruptible_job_is_never_removed(
    kube_ctx: Any, pool: NodePool, kube_core: client.CoreV1Api, kube_namespace: str
) -> None:
    provider = KwokProvider(kube_ctx.backend.client)
    kept, other = pool.node_name(0), pool.node_name(1)

    def pods_of(job: str) -> list[client.V1Pod]:
        selector = f"juliarun.io/job={job}"
        return list(kube_core.list_namespaced_pod(kube_namespace, label_selector=selector).items)

    def runs_on(job: str, node: str) -> bool:
        return [(p.status.phase, p.spec.node_name) for p in pods_of(job)] == [("Running", node)]

    provider.create_nodes(pool, [kept])
    wait_for(lambda: ready_nodes(kube_core, pool) == 1, 60, what="the first node")
    juliarun.submit(kube_ctx, workers("keep", pool, 1, interruptible=False))
    wait_for(lambda: runs_on("keep", kept), 120, what="the non-interruptible job running")
    [keep_pod] = pods_of("keep")
    assert keep_pod.metadata.labels["juliarun.io/interruptible"] == "false"

    # a second job on a second node (the first cordoned meanwhile): each node half used
    provider.create_nodes(pool, [other])
    wait_for(lambda: ready_nodes(kube_core, pool) == 2, 60, what="the second node")
    kube_core.patch_node(kept, {"spec": {"unschedulable": True}})
    juliarun.submit(kube_ctx, workers("free", pool, 1))
    wait_for(lambda: runs_on("free", other), 120, what="the other job running")
    kube_core.patch_node(kept, {"spec": {"unschedulable": False}})

    # the two jobs fit one node: the scaler empties the node whose pod can move, never the one
    # running the non-interruptible job, whatever its budget
    scaler = ClusterScaler(kube_ctx, [pool], unneeded_after=timedelta(0), disruption_budget=5)
    seen: list[tuple[str, ...]] = []

    def consolidated() -> bool:
        step = scaler.step()
        seen.append((*step.removed, *step.draining))
        assert step.reasons()[kept] == (
            f"runs pod {kube_namespace}/{keep_pod.metadata.name} of non-interruptible job keep"
        )
        return pool_nodes(kube_core, pool) == [kept] and runs_on("free", kept)

    wait_for(consolidated, 120, 2, "the other node removed and its job moved")
    assert all(kept not in names for names in seen)
    assert any(other in names for names in seen)
    assert [p.metadata.name for p in pods_of("keep")] == [keep_pod.metadata.name]  # untouched
    assert runs_on("keep", kept)
