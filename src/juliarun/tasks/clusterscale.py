"""The cluster autoscaler as a Prefect task: ClusterScaler loops for a while, every node added,
drained or removed (and demand it cannot serve) a ``juliarun.cluster.scaled`` event, the sizes
of the pools over time a table artifact."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event

from juliarun.clusterscaler import ClusterScaler, ScaleStep
from juliarun.scaling.planner import Headroom
from juliarun.specs import NodePool
from juliarun.tasks._context import context

CLUSTER_EVENT = "juliarun.cluster.scaled"


def emit_step(cluster: str, step: ScaleStep) -> int:
    """One event per node the step changed and per job whose demand it cannot serve."""
    emitted = 0
    for decision in step.plan.decisions:
        if decision.action == "keep":
            continue
        action = "draining" if decision.node in step.draining else decision.action
        emit_event(
            event=CLUSTER_EVENT,
            resource={
                "prefect.resource.id": f"juliarun.node.{cluster}.{decision.node}",
                "prefect.resource.name": decision.node,
                "juliarun.cluster": cluster,
                "juliarun.pool": decision.pool or "",
            },
            occurred=step.at,
            payload={"action": action, "reason": decision.reason, "pool": decision.pool},
        )
        emitted += 1
    for unmet in step.plan.unmet:
        emit_event(
            event=CLUSTER_EVENT,
            resource={
                "prefect.resource.id": f"juliarun.job.{cluster}.unmet.{unmet.job}",
                "juliarun.cluster": cluster,
            },
            occurred=step.at,
            payload={
                "action": "unmet",
                "job": unmet.job,
                "pods": unmet.pods,
                "reason": unmet.reason,
            },
        )
        emitted += 1
    return emitted


@task(cache_policy=NONE)
def run_cluster_scaler(
    cluster: str,
    pools: Sequence[NodePool],
    headroom: Headroom | None,
    *,
    interval: float,
    duration: float,
    unneeded_after: float,
    disruption_budget: int,
) -> list[dict[str, Any]]:
    """Scale ``pools`` for ``duration`` seconds; one row per loop and pool (nodes before and
    after, added, removed)."""
    logger = get_run_logger()
    rows: list[dict[str, Any]] = []

    def stepped(step: ScaleStep) -> None:
        emit_step(cluster, step)
        sizes = step.plan.sizes()
        for pool in pools:
            before, after = sizes.get(pool.name, (0, 0))
            added = step.added.get(pool.name, [])
            removed = [d.node for d in step.plan.remove if d.pool == pool.name]
            rows.append(
                {
                    "at": step.at.isoformat(timespec="seconds"),
                    "pool": pool.name,
                    "nodes": before,
                    "wanted": after,
                    "added": ", ".join(added),
                    "removed": ", ".join(removed),
                }
            )
            if added or removed:
                logger.info("pool %s: %d -> %d nodes", pool.name, before, after)

    with context(cluster) as ctx:
        scaler = ClusterScaler(
            ctx,
            list(pools),
            headroom=headroom,
            interval=interval,
            unneeded_after=timedelta(seconds=unneeded_after),
            disruption_budget=disruption_budget,
            on_step=stepped,
        )
        scaler.run(duration=duration)
    return rows


@task(cache_policy=NONE)
def publish_pool_sizes(cluster: str, rows: list[dict[str, Any]]) -> None:
    """A table artifact: nodes per pool over the run."""
    create_table_artifact(
        key=f"cluster-{cluster}-pools".lower().replace("_", "-"),
        table=rows,
        description=f"nodes per pool on {cluster}",
    )
