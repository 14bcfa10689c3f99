"""Alert rules evaluated on a schedule: events for firing alerts, and a failed run to show it."""

from __future__ import annotations

from typing import Any

from prefect import State
from prefect.states import Completed, Failed

from juliarun.flows._flow import flow
from juliarun.metrics.alerts import AlertRule
from juliarun.tasks.metrics import call_alert_hooks, check_alerts, emit_alert_events


@flow(name="evaluate-alerts")
def evaluate_alerts(
    rules: list[AlertRule],
    cluster: str = "local",
    fail_on_alert: bool = True,
    hooks: list[str] | None = None,
) -> State[list[dict[str, Any]]]:
    """Evaluate ``rules`` against the cluster's metrics, emit a ``juliarun.alert.firing`` event
    per firing alert, call the alert ``hooks`` named (e.g. a ``ScaleHook``) with the firing
    alerts, and end Failed when any fires (unless ``fail_on_alert`` is off)."""
    if not rules:
        return Completed(message="no alert rules", data=[])
    alerts = check_alerts(cluster, rules)
    emit_alert_events(cluster, alerts)
    if hooks:
        call_alert_hooks(hooks, alerts)
    result = [
        {"rule": a.rule, "group": dict(a.group), "value": a.value, "message": a.message}
        for a in alerts
    ]
    if alerts and fail_on_alert:
        messages = "; ".join(a.message for a in alerts)
        return Failed(message=f"{len(alerts)} alert(s) firing: {messages}", data=result)
    return Completed(message=f"{len(alerts)} alert(s) firing", data=result)
