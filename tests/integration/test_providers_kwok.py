"""The kwok node provider against the test cluster: a pool's nodes are real Node objects that
kwok runs, the real scheduler places a pool's node type there, and creates and deletes are
idempotent (a restarted autoscaler makes no duplicate)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.backends.kubernetes.client import KubeClient
from juliarun.providers.kwok import KwokProvider
from juliarun.specs import Batch, NodePool
from tests.integration.fixtures._service import require
from tests.integration.fixtures.kubernetes import _probe_kwok, node_ready, wait_for

pytestmark = pytest.mark.kwok

NOT_READY_TAINT = "node.kubernetes.io/not-ready"


@pytest.fixture
def pool() -> NodePool:
    return NodePool(
        name=f"p{uuid.uuid4().hex[:6]}",
        node_type="highcpu",
        cpu="4",
        memory="16Gi",
        max=3,
        labels={"juliarun.io/test": "providers"},
    )


@pytest.fixture
def provider(kube_ctx: object, pool: NodePool) -> Iterator[KwokProvider]:
    require("kwok", _probe_kwok)
    backend = kube_ctx.backend  # type: ignore[attr-defined]
    assert isinstance(backend, KubernetesBackend)
    kube: KubeClient = backend.client
    made = KwokProvider(kube)
    yield made
    made.delete_nodes(pool, made.nodes(pool))


def test_kwok_nodes_of_a_pool_run_its_node_type_and_are_idempotent(
    provider: KwokProvider, pool: NodePool, kube_core: client.CoreV1Api, kube_ctx: object
) -> None:
    names = [pool.node_name(0), pool.node_name(1)]
    assert provider.create_nodes(pool, names) == names
    assert provider.create_nodes(pool, names) == []  # after a restart: nothing new
    assert provider.nodes(pool) == sorted(names)

    def ready() -> bool:
        # Ready, and the node lifecycle controller has taken its not-ready taint off again (it
        # trails the Ready condition, by longer on a loaded machine)
        nodes = {n.metadata.name: n for n in kube_core.list_node().items}
        return all(
            name in nodes
            and node_ready(nodes[name])
            and not any(t.key == NOT_READY_TAINT for t in nodes[name].spec.taints or [])
            for name in names
        )

    wait_for(ready, timeout=60, what="the pool's kwok nodes to be Ready")
    node = kube_core.read_node(names[0])
    assert node.metadata.labels["juliarun.io/pool"] == pool.name
    assert node.metadata.labels["juliarun.io/node-type"] == "highcpu"
    assert node.status.allocatable["cpu"] == "4"
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
        ("juliarun.io/node-type", "highcpu", "NoSchedule")
    ]

    import juliarun

    job = Batch(
        f"on-pool-{pool.name}",
        ["sleep", "600"],
        env={"KWOK_RUN_FOR": "600s"},  # kwok keeps the pod running that long
        resources={
            "cpu": "3",
            "memory": "1Gi",
            "node_type": "highcpu",
            "node_labels": {"juliarun.io/pool": pool.name},
        },
    )
    juliarun.submit(kube_ctx, job)  # type: ignore[arg-type]

    def placed() -> bool:
        pods = kube_core.list_pod_for_all_namespaces(
            label_selector=f"juliarun.io/job={job.name}"
        ).items
        return bool(pods) and all(p.spec.node_name in names for p in pods)

    wait_for(placed, timeout=60, what="the job's pod to land on a pool node")
    wait_for(
        lambda: str(juliarun.status(kube_ctx, job)) == "running",  # type: ignore[arg-type]
        timeout=30,
        what="the job to run",
    )
    quick = Batch(f"quick-{pool.name}", ["true"], resources=job.resources)
    juliarun.submit(kube_ctx, quick)  # type: ignore[arg-type]
    assert str(juliarun.wait(kube_ctx, quick, timeout=60)) == "succeeded"  # type: ignore[arg-type]
    assert str(juliarun.status(kube_ctx, job)) == "running"  # type: ignore[arg-type]
    juliarun.delete(kube_ctx, job, force=True)  # type: ignore[arg-type]
    juliarun.delete(kube_ctx, quick, force=True)  # type: ignore[arg-type]

    assert provider.delete_nodes(pool, [names[1]]) == [names[1]]
    assert provider.delete_nodes(pool, [names[1]]) == []  # already gone
    assert provider.nodes(pool) == [names[0]]
