"""The co-locating scheduler on the test cluster (real apiserver, real kube-scheduler, kwok
nodes): jobs start whole or wait gated, pack by default, and a policy registered by name
changes where a job lands."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

import juliarun
from juliarun.backends.base import DiagnosisCategory
from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.backends.kubernetes.placement import PlacementController
from juliarun.providers.kwok import KwokProvider
from juliarun.scaling.placement import register_policy
from juliarun.specs import NodePool
from tests.integration.fixtures.kubernetes import node_ready, wait_for
from tests.integration.pool_jobs import pool_workers

pytestmark = pytest.mark.kwok


@pytest.fixture
def gated_ctx(kube_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``init("kubernetes")`` with juliarun's placement (pods gated)."""
    monkeypatch.setenv("JULIARUN_KUBE_PLACEMENT", "juliarun")
    ctx = juliarun.init("kubernetes")
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def pool_nodes(kube_ctx: Any, kube_core: client.CoreV1Api) -> Iterator[tuple[NodePool, list[str]]]:
    """Two 4-cpu kwok nodes of a pool of this test's own (node type highcpu)."""
    backend = kube_ctx.backend
    assert isinstance(backend, KubernetesBackend)
    pool = NodePool(
        name=f"g{uuid.uuid4().hex[:6]}", node_type="highcpu", cpu="4", memory="16Gi", max=2
    )
    provider = KwokProvider(backend.client)
    names = provider.create_nodes(pool, [pool.node_name(0), pool.node_name(1)])

    def ready() -> bool:
        nodes = {n.metadata.name: n for n in kube_core.list_node().items}
        return all(n in nodes and node_ready(nodes[n]) for n in names)

    wait_for(ready, timeout=60, what="the pool's kwok nodes")
    yield pool, names
    provider.delete_nodes(pool, names)


workers = pool_workers


def nodes_of(kube_core: client.CoreV1Api, namespace: str, job: str) -> list[str | None]:
    pods = kube_core.list_namespaced_pod(namespace, label_selector=f"juliarun.io/job={job}")
    return sorted((p.spec.node_name or "") for p in pods.items)  # type: ignore[misc]


def gated(kube_core: client.CoreV1Api, namespace: str, job: str) -> int:
    pods = kube_core.list_namespaced_pod(namespace, label_selector=f"juliarun.io/job={job}")
    return sum(1 for p in pods.items if p.spec.scheduling_gates)


def test_jobs_start_whole_or_wait_gated(
    gated_ctx: Any,
    pool_nodes: tuple[NodePool, list[str]],
    kube_core: client.CoreV1Api,
    kube_namespace: str,
) -> None:
    pool, names = pool_nodes
    backend = gated_ctx.backend
    first, second = workers("gang-a", pool, 3), workers("gang-b", pool, 3)  # 6 of 8 cpu each
    juliarun.submit(gated_ctx, first)
    wait_for(lambda: gated(kube_core, kube_namespace, "gang-a") == 3, 30, what="gated pods")
    juliarun.submit(gated_ctx, second)
    wait_for(lambda: gated(kube_core, kube_namespace, "gang-b") == 3, 30, what="gated pods")
    status = juliarun.status(gated_ctx, second)
    assert status.category == DiagnosisCategory.WAITING_FOR_PLACEMENT
    assert str(status) == "created, 3 processes waiting"

    controller = PlacementController(backend.client)
    decisions = {d.job: d for d in controller.step()}
    assert decisions["gang-a"].placed and decisions["gang-a"].nodes == tuple(names)
    assert not decisions["gang-b"].placed
    assert re.match(
        r"job gang-b cannot be placed whole: 1 of 3 pods placed, none of \d+ nodes takes pod "
        r"gang-b-\d-\w+ \(cpu=2, memory=1Gi\): 2 node\(s\): insufficient cpu",
        decisions["gang-b"].reason,
    ), decisions["gang-b"].reason
    wait_for(lambda: juliarun.status(gated_ctx, first).phase == "running", 60, what="gang-a")
    assert nodes_of(kube_core, kube_namespace, "gang-a") == sorted([names[0], names[0], names[1]])
    assert gated(kube_core, kube_namespace, "gang-b") == 3  # no partial start
    waiting = juliarun.status(gated_ctx, second)
    assert waiting.category == DiagnosisCategory.WAITING_FOR_PLACEMENT
    assert waiting.reason is not None and waiting.reason.startswith("waiting for placement: ")

    juliarun.delete(gated_ctx, first, force=True)
    wait_for(lambda: not nodes_of(kube_core, kube_namespace, "gang-a"), 60, what="gang-a gone")
    again = {d.job: d for d in controller.step()}
    assert again["gang-b"].placed
    wait_for(lambda: juliarun.status(gated_ctx, second).phase == "running", 60, what="gang-b")
    assert gated(kube_core, kube_namespace, "gang-b") == 0
    juliarun.delete(gated_ctx, second, force=True)


def test_pack_by_default_and_a_registered_policy_changes_where_a_job_lands(
    gated_ctx: Any,
    pool_nodes: tuple[NodePool, list[str]],
    kube_core: client.CoreV1Api,
    kube_namespace: str,
) -> None:
    pool, names = pool_nodes
    register_policy("highest-name", lambda pod, node, free, placed: [-ord(c) for c in node.name])
    controller = PlacementController(gated_ctx.backend.client)

    packed = workers("packed", pool, 2)
    juliarun.submit(gated_ctx, packed)
    wait_for(lambda: gated(kube_core, kube_namespace, "packed") == 2, 30, what="gated pods")
    [decision] = controller.step()
    assert decision.placed and len(decision.nodes) == 1  # both workers on one node

    custom = workers("custom", pool, 1, placement="highest-name")
    juliarun.submit(gated_ctx, custom)
    wait_for(lambda: gated(kube_core, kube_namespace, "custom") == 1, 30, what="gated pod")
    [decision] = controller.step()
    assert decision.nodes == (max(names),)
    wait_for(
        lambda: nodes_of(kube_core, kube_namespace, "custom") == [max(names)],
        60,
        what="the custom job's pod bound to the node its policy chose",
    )
    for job in (packed, custom):
        juliarun.delete(gated_ctx, job, force=True)


def test_a_pass_that_read_the_cluster_before_another_placed_the_job_does_not_fail(
    gated_ctx: Any,
    pool_nodes: tuple[NodePool, list[str]],
    kube_core: client.CoreV1Api,
    kube_namespace: str,
) -> None:
    """Two controllers (or a slow pass): the one whose view is stale gets a conflict for the
    pods the other placed, says so, and neither moves a pod nor fails its pass."""
    pool, _ = pool_nodes
    job = workers("raced", pool, 2)
    juliarun.submit(gated_ctx, job)
    wait_for(lambda: gated(kube_core, kube_namespace, "raced") == 2, 30, what="gated pods")
    slow = PlacementController(gated_ctx.backend.client)
    stale = slow._state()  # read before the other controller acts
    fast = PlacementController(gated_ctx.backend.client)
    [first] = [d for d in fast.step() if d.job == "raced"]
    assert first.placed
    slow._state = lambda: stale  # type: ignore[method-assign]
    [late] = [d for d in slow.step() if d.job == "raced"]
    assert not late.placed
    assert re.fullmatch(
        r"pod raced-\d-\w+ changed while being placed \(409\); placing again on the next pass",
        late.reason,
    ), late.reason
    wait_for(lambda: juliarun.status(gated_ctx, job).phase == "running", 60, what="raced")
    assert sorted(set(nodes_of(kube_core, kube_namespace, "raced"))) == list(first.nodes)
    juliarun.delete(gated_ctx, job, force=True)
