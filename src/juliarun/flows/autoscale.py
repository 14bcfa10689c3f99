"""The autoscalers as flows.

``process_autoscaler``: the seed's ``run(JobScaler(...))`` — a job's workers follow the backlog
of a work queue for a while, each decision an event, the run ending with a plot of backlog and
workers over time. ``cluster_autoscaler``: node pools follow what jobs reserve, each change an
event, the run ending with a table of nodes per pool."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from juliarun.blocks.nodepool import load_pools
from juliarun.errors import ConfigError
from juliarun.flows._flow import flow
from juliarun.scaling.planner import Headroom
from juliarun.specs import NodePool
from juliarun.tasks.clusterscale import publish_pool_sizes, run_cluster_scaler
from juliarun.tasks.scaler import plot_scaling, run_queue_scaler

Text = Annotated[str, Field(min_length=1, max_length=63)]


@flow(name="process-autoscaler", flow_run_name="{job}")
def process_autoscaler(  # noqa: PLR0917 - flow parameters are the form in the UI
    job: Annotated[Text, Field(description="The JuliaParBatchWorkers job scaled.")],
    queue: Annotated[Text, Field(description="The cluster's queue (start_queue's)")] = "mq",
    work_queue: Annotated[Text, Field(description="The queue whose backlog counts.")] = "work",
    cluster: Annotated[str, Field(description="The job's and queue's cluster.")] = "local",
    per_worker: Annotated[float, Field(gt=0, description="Backlog per worker.")] = 1.0,
    window: Annotated[float, Field(gt=0, description="Seconds averaged over.")] = 30.0,
    low: Annotated[int, Field(ge=0, le=1000, description="Fewest workers.")] = 1,
    high: Annotated[int, Field(ge=1, le=1000, description="Most workers.")] = 10,
    interval: Annotated[float, Field(gt=0, description="Seconds between decisions.")] = 10.0,
    duration: Annotated[float, Field(gt=0, description="Seconds this run scales.")] = 600.0,
    scale_down_after: Annotated[
        float, Field(ge=0, description="Seconds the backlog stays low before workers go.")
    ] = 60.0,
) -> dict[str, Any]:
    """Scale ``job`` on the backlog of ``work_queue`` for ``duration`` seconds (or until the job
    ends): desired workers = the average backlog / ``per_worker``, within ``low``..``high``,
    straight up, down after ``scale_down_after``. Schedule it back to back to keep a job
    scaled; a restarted run resumes from the job's worker count."""
    decisions = run_queue_scaler(
        cluster,
        job,
        queue,
        work_queue,
        per_worker=per_worker,
        window=window,
        low=low,
        high=high,
        interval=interval,
        duration=duration,
        scale_down_after=scale_down_after,
    )
    plot_scaling(job, decisions)
    # The first decision may be a change too (from the count the job had when the run began)
    changes = sum(1 for d in decisions if d["workers"] != d["from"])
    return {"job": job, "decisions": len(decisions), "changes": changes}


@flow(name="cluster-autoscaler", flow_run_name="{cluster}")
def cluster_autoscaler(  # noqa: PLR0917 - flow parameters are the form in the UI
    pools: Annotated[
        list[NodePool], Field(description="The node pools scaled (with pool_blocks).")
    ] = [],  # noqa: B006 - a flow parameter's default (Prefect copies it per run)
    cluster: Annotated[str, Field(description="The Kubernetes cluster.")] = "kubernetes",
    headroom_pods: Annotated[
        int, Field(ge=0, le=10000, description="Pods of headroom_cpu/memory kept room for.")
    ] = 0,
    headroom_cpu: Annotated[str, Field(description="CPU of one headroom pod.")] = "1",
    headroom_memory: Annotated[str, Field(description="Memory of one headroom pod.")] = "1Gi",
    interval: Annotated[float, Field(gt=0, description="Seconds between loops.")] = 10.0,
    duration: Annotated[float, Field(gt=0, description="Seconds this run scales.")] = 300.0,
    unneeded_after: Annotated[
        float, Field(ge=0, description="Seconds a node stays unneeded before it goes.")
    ] = 120.0,
    disruption_budget: Annotated[
        int, Field(ge=0, le=1000, description="Nodes with pods removed at once.")
    ] = 1,
    pool_blocks: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(description="Names of saved NodePool blocks scaled too."),
    ] = [],  # noqa: B006 - a flow parameter's default (Prefect copies it per run)
) -> dict[str, Any]:
    """Keep ``pools`` sized to what jobs reserve (pending and gated pods' requests), with room
    for ``headroom_pods`` more pods in every pool, for ``duration`` seconds: nodes added through
    each pool's provider, unneeded nodes drained and removed (never under a critical pod), gated
    jobs placed whole. Every change is a ``juliarun.cluster.scaled`` event; the run publishes a
    table of nodes per pool. Schedule it back to back to keep a cluster scaled. ``pool_blocks``
    names node pools saved as NodePool blocks (in the Prefect UI), scaled with ``pools``."""
    every = [*pools, *load_pools(pool_blocks)]
    if not every:
        raise ConfigError(
            "cluster-autoscaler: no node pools to scale",
            hint="give pools=[NodePool(...)] or pool_blocks=['<saved NodePool block>']",
        )
    headroom = (
        Headroom.of(pods=headroom_pods, pod_cpu=headroom_cpu, pod_memory=headroom_memory)
        if headroom_pods
        else None
    )
    rows = run_cluster_scaler(
        cluster,
        every,
        headroom,
        interval=interval,
        duration=duration,
        unneeded_after=unneeded_after,
        disruption_budget=disruption_budget,
    )
    publish_pool_sizes(cluster, rows)
    return {
        "cluster": cluster,
        "pools": [p.name for p in every],
        "loops": len(rows) // len(every),
    }
