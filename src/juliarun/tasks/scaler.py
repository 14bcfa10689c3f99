"""The process autoscaler as a Prefect task: a JobScaler run for a while, each decision logged
like the seed (``changing scale of workers to 5``), emitted as a ``juliarun.scaler.decided``
event and recorded as a metric (by the scaler itself)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event

from juliarun import api
from juliarun.metrics.base import Row
from juliarun.metrics.plot import data_uri, render_png
from juliarun.scaler import JobScaler
from juliarun.scaling.metrics import AverageMetric, BoundedMetric, WorkQueueMetric
from juliarun.scaling.policy import Decision, HPAPolicy, ScalingPolicy, ScalingRules
from juliarun.tasks._context import context

SCALER_EVENT = "juliarun.scaler.decided"


def emit_decision(cluster: str, decision: Decision) -> None:
    """One ``juliarun.scaler.decided`` event: the inputs, the counts and the reason."""
    emit_event(
        event=SCALER_EVENT,
        resource={
            "prefect.resource.id": f"juliarun.scaler.{cluster}.{decision.job}",
            "prefect.resource.name": decision.job,
            "juliarun.cluster": cluster,
            "juliarun.job": decision.job,
        },
        occurred=datetime.fromtimestamp(decision.at, UTC),
        payload={
            "current": decision.current,
            "desired": decision.desired,
            "changed": decision.changed,
            "value": decision.value,
            "reason": decision.reason,
            "inputs": dict(decision.inputs),
            "source": decision.source,
        },
    )


@task(cache_policy=NONE)
def run_queue_scaler(
    cluster: str,
    job: str,
    queue: str,
    work_queue: str,
    *,
    per_worker: float,
    window: float,
    low: int,
    high: int,
    interval: float,
    duration: float,
    scale_down_after: float,
) -> list[dict[str, Any]]:
    """Scale ``job`` on the backlog of ``work_queue`` (on the cluster's queue ``queue``) for
    ``duration`` seconds (or until the job ends); returns the decisions."""
    logger = get_run_logger()

    def decided(decision: Decision) -> None:
        if decision.changed:
            logger.info("changing scale of %s to %d", job, decision.desired)
        emit_decision(cluster, decision)

    with context(cluster) as ctx:
        broker = api.start_queue(ctx, queue)  # the running broker, or started
        metric = BoundedMetric(
            AverageMetric(WorkQueueMetric(broker, work_queue, per_worker=per_worker), window),
            low,
            high,
        )
        policy = HPAPolicy(
            min_workers=low,
            max_workers=high,
            scale_down=ScalingRules(
                stabilization=scale_down_after,
                policies=[ScalingPolicy(type="Percent", value=100, period=max(interval, 1))],
            ),
        )
        scaler = JobScaler(ctx, job, metric, interval, policy=policy, on_decision=decided)
        decisions = scaler.run(steps=max(1, math.ceil(duration / interval)))
    return [
        {
            "at": datetime.fromtimestamp(d.at, UTC).isoformat(timespec="seconds"),
            "from": d.current,
            "workers": d.desired,
            "value": d.value,
            "backlog": d.inputs.get("backlog"),
            "reason": d.reason,
        }
        for d in decisions
    ]


@task(cache_policy=NONE)
def plot_scaling(job: str, decisions: list[dict[str, Any]]) -> None:
    """An image artifact: the backlog and the workers of ``job`` over the run."""
    rows = [
        Row(datetime.fromisoformat(d["at"]), {"series": series}, float(value))
        for d in decisions
        for series, value in (("workers", d["workers"]), ("backlog", d["backlog"]))
        if value is not None
    ]
    if not rows:
        return
    title = f"{job}: backlog and workers"
    create_image_artifact(
        image_url=data_uri(render_png(rows, title=title)),
        key=f"scaler-{job}",
        description=title,
    )
