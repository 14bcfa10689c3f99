"""The cluster-autoscaler flow against the test Prefect server and the test cluster's kwok
nodes: the nodes a pending job needs appear, each one a ``juliarun.cluster.scaled`` event, and
the run publishes its table of nodes per pool."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.flows import cluster_autoscaler
from juliarun.providers.kwok import KwokProvider
from juliarun.specs import NodePool
from juliarun.tasks._context import close_all
from juliarun.tasks.clusterscale import CLUSTER_EVENT
from tests.integration.fixtures.kubernetes import wait_for
from tests.integration.pool_jobs import pool_workers

pytestmark = [pytest.mark.prefect_server, pytest.mark.kwok]


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url
    close_all()


def test_the_flow_adds_the_nodes_a_job_reserves_and_reports_them(
    prefect_api: str, kube_ctx: Any, kube_core: client.CoreV1Api, kube_namespace: str
) -> None:
    pool = NodePool(
        name=f"cf{uuid.uuid4().hex[:6]}", node_type="highcpu", cpu="4", memory="16Gi", max=4
    )
    job = pool_workers("reserve", pool, 4)
    juliarun.submit(kube_ctx, job)
    wait_for(
        lambda: (
            len(
                kube_core.list_namespaced_pod(
                    kube_namespace, label_selector="juliarun.io/job=reserve"
                ).items
            )
            == 4
        ),
        60,
        what="pods",
    )
    try:
        result = cluster_autoscaler([pool], cluster="kubernetes", interval=1, duration=2)
        assert result["loops"] >= 1
        made = KwokProvider(kube_ctx.backend.client).nodes(pool)
        assert made == [pool.node_name(0), pool.node_name(1)]
    finally:
        juliarun.delete(kube_ctx, job, force=True)
        provider = KwokProvider(kube_ctx.backend.client)
        provider.delete_nodes(pool, provider.nodes(pool))

    event_filter = EventFilter(
        event=EventNameFilter(name=[CLUSTER_EVENT]),
        resource=EventResourceFilter(
            id=[f"juliarun.node.kubernetes.{pool.node_name(i)}" for i in range(2)]
        ),
    )
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as prefect:
        while True:
            events = prefect.read_events(filter=event_filter, limit=50).events
            if len(events) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["cluster-kubernetes-pools"]))
        )
    assert sorted((e.payload["action"], e.payload["pool"]) for e in events) == [
        ("add", pool.name),
        ("add", pool.name),
    ]
    assert all(
        e.payload["reason"].startswith("new node for 2 pending pod(s) of job reserve")
        for e in events
    )
    assert artifacts  # the key is the cluster's: find this run's rows among its versions
    tables = [json.loads(a.data) if isinstance(a.data, str) else a.data for a in artifacts]
    assert any(row["pool"] == pool.name and row["added"] for rows in tables for row in rows or [])


def test_the_flow_scales_pools_saved_as_blocks(
    prefect_api: str, kube_ctx: Any, kube_core: client.CoreV1Api, kube_namespace: str
) -> None:
    from juliarun.blocks import NodePoolBlock
    from juliarun.errors import ConfigError

    name = f"cluster-b{uuid.uuid4().hex[:6]}"
    saved = NodePool(name=name, node_type="highcpu", cpu="4", memory="16Gi", max=3)
    NodePoolBlock.from_pool(saved).save(name)
    with pytest.raises(ConfigError) as missing:
        cluster_autoscaler(pool_blocks=[name, "cluster-nosuchpool"], interval=1, duration=1)
    assert missing.value.message == "no NodePool block called 'cluster-nosuchpool'"
    with pytest.raises(ConfigError) as none:
        cluster_autoscaler(interval=1, duration=1)
    assert none.value.message == "cluster-autoscaler: no node pools to scale"
    assert KwokProvider(kube_ctx.backend.client).nodes(saved) == []  # nothing was done

    job = pool_workers("blocky", saved, 2)
    juliarun.submit(kube_ctx, job)
    wait_for(
        lambda: (
            len(
                kube_core.list_namespaced_pod(
                    kube_namespace, label_selector="juliarun.io/job=blocky"
                ).items
            )
            == 2
        ),
        60,
        what="pods",
    )
    provider = KwokProvider(kube_ctx.backend.client)
    try:
        result = cluster_autoscaler(pool_blocks=[name], interval=1, duration=2)
        assert result["pools"] == [name]
        assert provider.nodes(saved) == [saved.node_name(0)]  # 2 x 2 cpu: one 4-cpu node
    finally:
        juliarun.delete(kube_ctx, job, force=True)
        provider.delete_nodes(saved, provider.nodes(saved))
        with get_client(sync_client=True) as prefect:
            prefect.delete_block_document(NodePoolBlock.load(name)._block_document_id)
