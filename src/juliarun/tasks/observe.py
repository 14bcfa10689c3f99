"""Observation tasks: metrics, log search, and the cluster view as artifacts."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from juliarun import api
from juliarun.backends.base import ClusterStatus
from juliarun.logs.base import Stream
from juliarun.metrics import Row
from juliarun.metrics.base import Aggregation
from juliarun.tasks._context import context


@task(cache_policy=NONE)
def record_metric(
    cluster: str, name: str, value: float, tags: dict[str, str] | None = None
) -> None:
    with context(cluster) as ctx:
        api.record(ctx, name, value, **(tags or {}))


@task(cache_policy=NONE)
def query_metric(
    cluster: str,
    *,
    name: str,
    tags: dict[str, str] | None = None,
    last: timedelta | None = None,
    window: timedelta | None = None,
    agg: Aggregation = "mean",
    group_by: tuple[str, ...] = (),
) -> list[Row]:
    with context(cluster) as ctx:
        return api.metrics(
            ctx, name, tags=tags, last=last, window=window, agg=agg, group_by=group_by
        )


@task(cache_policy=NONE)
def search_logs(
    cluster: str,
    text: str | None = None,
    job: str | None = None,
    regex: str | None = None,
    limit: int | None = 200,
    *,
    worker: str | None = None,
    stream: Stream | None = None,
    tenant: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[str]:
    """Matching lines as ``timestamp, worker, line``, also published as a table artifact
    (every filter of :func:`juliarun.search`)."""
    with context(cluster) as ctx:
        lines = api.search(
            ctx,
            text,
            job=job,
            regex=regex,
            limit=limit,
            worker=worker,
            stream=stream,
            tenant=tenant,
            since=since,
            until=until,
        )
    create_table_artifact(
        key="log-search",
        table=[
            {
                "time": ln.timestamp.isoformat(),
                "job": ln.job,
                "worker": ln.worker,
                "stream": ln.stream,
                "line": ln.message,
            }
            for ln in lines
        ],
        description=f"lines matching {text or regex!r}",
    )
    return [ln.render() for ln in lines]


@task(cache_policy=NONE)
def publish_cluster_status(cluster: str) -> ClusterStatus:
    """The cluster view as a table artifact, and node free-percentages as metrics."""
    with context(cluster) as ctx:
        status: ClusterStatus = api.status(ctx)
        for node in status.nodes:
            for resource in ("cpu", "gpu", "mem", "dsk", "pod"):
                value = getattr(node, resource)
                api.record(ctx, f"juliarun.node.{resource}_free_pct", value, node=node.name)
    create_table_artifact(
        key=f"cluster-{status.cluster}", table=status.table(), description=status.render(False)
    )
    return status
