"""The process-autoscaler flow against the test Prefect server: real local Julia workers on a
real broker; each decision a ``juliarun.scaler.decided`` event, the run a plot artifact."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.demo_autoscale import write_worker
from juliarun.flows import process_autoscaler
from juliarun.tasks._context import close_all
from juliarun.tasks.scaler import SCALER_EVENT

pytestmark = [pytest.mark.prefect_server, pytest.mark.julia, pytest.mark.rabbitmq]


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url
    close_all()


def test_the_flow_scales_workers_up_on_backlog_and_reports_every_decision(
    prefect_api: str, juliarun_home: Path, julia: str, amqp_url: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    job_name, broker = f"flow-workers-{tag}", f"mq-{tag}"
    ctx = juliarun.init()
    root = juliarun_home / "code"
    write_worker(root)
    juliarun.define_storage(ctx, name="code", kind="host", path=str(root))
    queue = juliarun.start_queue(ctx, broker)
    try:
        queue.declare("work")
        queue.declare("done")
        workers = juliarun.JuliaParBatchWorkers(
            job_name,
            "/mnt/code/scaler/worker.jl",
            "code",
            nworkers=1,
            cpu="100m",
            memory="256Mi",
            env={**queue.env, "WORK_SECONDS": "0.5"},
        )
        juliarun.submit(ctx, workers)
        queue.publish("work", [str(i) for i in range(40)])
        result = process_autoscaler(
            job_name,
            queue=broker,
            per_worker=8,
            window=2,
            low=1,
            high=4,
            interval=1,
            duration=12,
            scale_down_after=60,
        )
        assert result["job"] == job_name and result["decisions"] >= 10
        assert result["changes"] >= 1
    finally:
        juliarun.delete(ctx, job_name, force=True)
        juliarun.delete(ctx, queue, force=True)
        ctx.close()

    event_filter = EventFilter(
        event=EventNameFilter(name=[SCALER_EVENT]),
        resource=EventResourceFilter(id=[f"juliarun.scaler.local.{job_name}"]),
    )
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=event_filter, limit=50).events
            if len(events) >= result["decisions"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"scaler-{job_name}"]))
        )
    assert len(events) == result["decisions"]
    desired = [e.payload["desired"] for e in sorted(events, key=lambda e: e.occurred)]
    assert max(desired) == 4 and desired[-1] == 4  # 40 queued / 8 per worker, capped at 4
    assert all("reason" in e.payload and "backlog" in e.payload["inputs"] for e in events)
    assert artifacts and artifacts[0].type == "image"
