"""Observation tasks: metrics, log search, and the cluster view as artifacts."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
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
    create_markdown_artifact(
        key=f"cluster-{status.cluster}-capacity",
        markdown=capacity_markdown(status),
        description=f"Free capacity per node of {status.cluster}",
    )
    return status


RESOURCES = (("cpu", "CPU"), ("mem", "memory"), ("gpu", "GPU"), ("dsk", "disk"), ("pod", "pods"))


def capacity_png(status: ClusterStatus) -> bytes:
    """A bar chart of free capacity: per node, one bar per resource, in percent of what the
    node can allocate (the numbers of the cluster table, as a picture)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    nodes = status.nodes
    fig = Figure(figsize=(max(4.0, 1.2 + 1.1 * len(nodes)), 3.2), dpi=100)
    ax = fig.add_subplot()
    width = 0.8 / len(RESOURCES)
    for i, (field, label) in enumerate(RESOURCES):
        xs = [n + (i - (len(RESOURCES) - 1) / 2) * width for n in range(len(nodes))]
        ax.bar(xs, [getattr(node, field) for node in nodes], width, label=label)
    ax.set_xticks(range(len(nodes)), [node.name for node in nodes], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("free (%)")
    ax.set_title(f"Free capacity per node: {status.cluster}", fontsize=10)
    ax.legend(fontsize=7, ncols=len(RESOURCES), loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def capacity_markdown(status: ClusterStatus) -> str:
    """The capacity picture as markdown (an embedded PNG), with the same numbers as text."""
    import base64

    if not status.nodes:
        return f"**{status.cluster}**: no nodes"
    data = base64.b64encode(capacity_png(status)).decode()
    rows = "\n".join(
        f"| {n.name} | " + " | ".join(f"{getattr(n, f)}%" for f, _ in RESOURCES) + " |"
        for n in status.nodes
    )
    header = "| node | " + " | ".join(label for _, label in RESOURCES) + " |"
    return (
        f"![Free capacity per node of {status.cluster}](data:image/png;base64,{data})\n\n"
        f"{header}\n|{'---|' * (len(RESOURCES) + 1)}\n{rows}\n"
    )
