"""Metric tasks: a chart as an image artifact, alert rules evaluated, alerts as Prefect events."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from prefect import task
from prefect.artifacts import create_image_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event

from juliarun import api
from juliarun.metrics.alerts import AbsenceRule, Alert, ThresholdRule, evaluate, run_hooks
from juliarun.metrics.base import Aggregation
from juliarun.metrics.plot import data_uri, render_png
from juliarun.tasks._context import context

ALERT_EVENT = "juliarun.alert.firing"


@task(cache_policy=NONE)
def plot_metric(
    cluster: str,
    *,
    name: str,
    tags: dict[str, str] | None = None,
    last: timedelta | None = None,
    window: timedelta | None = None,
    agg: Aggregation = "mean",
    group_by: tuple[str, ...] = (),
    key: str = "metric-plot",
) -> UUID:
    """Query the metric, render it as a PNG and publish it as an image artifact (the PNG
    travels inside the artifact as a ``data:`` URI, so no image host is needed)."""
    with context(cluster) as ctx:
        rows = api.metrics(
            ctx, name, tags=tags, last=last, window=window, agg=agg, group_by=group_by
        )
    title = f"{agg}({name})" + (f" per {window}" if window else "")
    artifact = create_image_artifact(
        image_url=data_uri(render_png(rows, title=title)), key=key, description=title
    )
    return cast(UUID, artifact)  # a sync caller gets the id, never a coroutine


@task(cache_policy=NONE)
def check_alerts(cluster: str, rules: list[ThresholdRule | AbsenceRule]) -> list[Alert]:
    with context(cluster) as ctx:
        return evaluate(rules, ctx.metrics)


@task(cache_policy=NONE)
def emit_alert_events(cluster: str, alerts: list[Alert]) -> int:
    """One ``juliarun.alert.firing`` event per alert, its resource the rule (and group)."""
    for alert in alerts:
        labels = {f"juliarun.group.{k}": v for k, v in alert.group.items()}
        group = ",".join(f"{k}={v}" for k, v in alert.group.items())
        payload: dict[str, Any] = {**asdict(alert), "at": alert.at.isoformat(), "cluster": cluster}
        emit_event(
            event=ALERT_EVENT,
            resource={
                "prefect.resource.id": f"juliarun.alert.{cluster}.{alert.rule}"
                + (f".{group}" if group else ""),
                "prefect.resource.name": alert.rule,
                "juliarun.cluster": cluster,
                "juliarun.metric": alert.metric,
                **labels,
            },
            occurred=alert.at,
            payload=payload,
        )
    return len(alerts)


@task(cache_policy=NONE)
def call_alert_hooks(hooks: list[str], alerts: list[Alert]) -> int:
    """Call the named alert hooks (``register_hook`` names or ``module:attribute``) with the
    firing alerts; an empty list tells them every alert cleared."""
    run_hooks(hooks, alerts)
    return len(hooks)
