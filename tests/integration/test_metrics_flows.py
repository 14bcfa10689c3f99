"""The metric flows and tasks on the Prefect server: a chart as an image artifact, alert rules
as events and a failed run. The cluster is the embedded local default (SQLite metrics)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.flows.alerts import evaluate_alerts
from juliarun.metrics.alerts import AbsenceRule, ThresholdRule
from juliarun.metrics.plot import PNG_SIGNATURE
from juliarun.tasks.metrics import ALERT_EVENT, plot_metric

pytestmark = pytest.mark.prefect_server


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url


def test_plot_metric_publishes_a_png_image_artifact(prefect_api: str, juliarun_home: Path) -> None:
    ctx = juliarun.init()
    now = datetime.now(UTC)
    for i in range(10):
        for worker in ("w1", "w2"):
            ctx.metrics.record(
                "loss", 1.0 / (i + 1), {"worker": worker}, now - timedelta(minutes=i)
            )
    ctx.close()
    key = f"loss-{uuid.uuid4().hex[:8]}"

    @flow(name=f"plot-{key}")
    def plot_flow() -> uuid.UUID:
        return plot_metric(
            "local",
            name="loss",
            last=timedelta(hours=1),
            window=timedelta(minutes=1),
            group_by=("worker",),
            key=key,
        )

    artifact_id = plot_flow()
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert artifact.id == artifact_id and artifact.type == "image"
    prefix = "data:image/png;base64,"
    assert isinstance(artifact.data, str) and artifact.data.startswith(prefix)
    assert base64.b64decode(artifact.data[len(prefix) :])[:8] == PNG_SIGNATURE


def test_evaluate_alerts_emits_events_and_fails_the_run(
    prefect_api: str, juliarun_home: Path
) -> None:
    ctx = juliarun.init()
    now = datetime.now(UTC)
    ctx.metrics.record("queue_length", 50, {"queue": "work"}, now - timedelta(seconds=30))
    ctx.metrics.record("queue_length", 2, {"queue": "other"}, now - timedelta(seconds=30))
    ctx.close()
    tag = uuid.uuid4().hex[:8]
    rules: list[ThresholdRule | AbsenceRule] = [
        ThresholdRule(
            name=f"long-queue-{tag}",
            metric="queue_length",
            op=">",
            value=10,
            agg="max",
            window=timedelta(minutes=5),
            group_by=("queue",),
        ),
        AbsenceRule(name=f"no-heartbeat-{tag}", metric="heartbeat", window=timedelta(minutes=5)),
    ]
    state = evaluate_alerts(rules, "local", return_state=True)
    assert state.is_failed()
    assert "2 alert(s) firing" in (state.message or "")
    assert "long-queue" in (state.message or "") and "queue=work" in (state.message or "")

    calm = evaluate_alerts(rules[:1], "local", fail_on_alert=False, return_state=True)
    assert calm.is_completed()
    assert [a["group"] for a in calm.result()] == [{"queue": "work"}]

    # one event per alert (the calm run emitted the threshold alert once more)
    event_filter = EventFilter(
        event=EventNameFilter(name=[ALERT_EVENT]),
        resource=EventResourceFilter(id_prefix=[f"juliarun.alert.local.long-queue-{tag}"]),
    )
    absent = EventFilter(
        event=EventNameFilter(name=[ALERT_EVENT]),
        resource=EventResourceFilter(id_prefix=[f"juliarun.alert.local.no-heartbeat-{tag}"]),
    )
    deadline = time.monotonic() + 30  # events reach the API asynchronously
    with get_client(sync_client=True) as client:
        while True:
            threshold_events = client.read_events(filter=event_filter, limit=50).events
            absence_events = client.read_events(filter=absent, limit=50).events
            if (len(threshold_events), len(absence_events)) == (2, 1):
                break
            assert time.monotonic() < deadline, (threshold_events, absence_events)
            time.sleep(0.5)
    event = threshold_events[0]
    assert event.resource["juliarun.group.queue"] == "work"
    assert event.payload["value"] == 50 and event.payload["threshold"] == 10
