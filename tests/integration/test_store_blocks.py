"""Store blocks on the Prefect server: a LocalCluster referencing saved ElasticsearchLogs and
InfluxMetrics blocks sends a job's lines to Elasticsearch and its metrics to InfluxDB (the job's
job.json, holding those configs, is private); the evaluate-alerts flow calls its hooks; `juliarun
serve` schedules evaluate-alerts with the rules of JULIARUN_ALERT_RULES."""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.blocks import LocalCluster
from juliarun.blocks.stores import ElasticsearchLogs, InfluxMetrics
from juliarun.deployments.serve import EVALUATE_ALERTS
from juliarun.flows.alerts import evaluate_alerts
from juliarun.logs.elasticsearch import ElasticsearchLogStore
from juliarun.metrics.alerts import Alert, ThresholdRule, parse_rules, register_hook
from juliarun.metrics.influxdb import InfluxMetricStore
from tests.integration.fixtures.prefect import Serve, _served

pytestmark = pytest.mark.prefect_server


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url


@pytest.fixture
def saved_blocks(prefect_api: str) -> Iterator[list[tuple[type[Block], str]]]:
    """Blocks a test saves, deleted (in reverse order) from the shared server afterwards."""
    saved: list[tuple[type[Block], str]] = []
    yield saved
    for block_type, name in reversed(saved):
        block_type.delete(name)


@pytest.fixture
def es_prefix(es_client: Any) -> Iterator[str]:
    """An index prefix of this test's own; its indices and template deleted afterwards."""
    prefix = f"juliarun-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    es = es_client.options(ignore_status=404)
    names = list(es.indices.get(index=f"{prefix}-*"))
    if names:
        es.indices.delete(index=",".join(names))
    es.indices.delete_index_template(name=prefix)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.elasticsearch
@pytest.mark.influxdb
def test_a_local_cluster_with_saved_store_blocks(
    prefect_api: str,
    juliarun_home: Path,
    es_prefix: str,
    influx_bucket: str,
    saved_blocks: list[tuple[type[Block], str]],
) -> None:
    logs_name, metrics_name, cluster_name = _unique("es"), _unique("influx"), _unique("laptop")
    ElasticsearchLogs(url=os.environ["JULIARUN_ES_URL"], index_prefix=es_prefix).save(logs_name)
    saved_blocks.append((ElasticsearchLogs, logs_name))
    InfluxMetrics(
        url=os.environ["JULIARUN_INFLUX_URL"],
        token=os.environ.get("JULIARUN_INFLUX_TOKEN") or ":",
        org=os.environ.get("JULIARUN_INFLUX_ORG") or "-",
        bucket=influx_bucket,
    ).save(metrics_name)
    saved_blocks.append((InfluxMetrics, metrics_name))
    LocalCluster(
        log_store_block=ElasticsearchLogs.load(logs_name),
        metric_store_block=InfluxMetrics.load(metrics_name),
    ).save(cluster_name)
    saved_blocks.append((LocalCluster, cluster_name))

    loaded = LocalCluster.load(cluster_name)
    assert loaded.metric_store_block is not None
    assert loaded.metric_store_block.bucket == influx_bucket
    name = _unique("stores")
    script = (
        'for i in 1 2 3; do echo "block line $i"; '
        'echo "blocks.progress,phase=loop value=$i" >> "$JULIARUN_METRICS_FILE"; done'
    )
    with juliarun.init(cluster_name) as ctx:
        assert isinstance(ctx.logs, ElasticsearchLogStore) and ctx.logs.prefix == es_prefix
        assert isinstance(ctx.metrics, InfluxMetricStore)
        job = juliarun.Batch(name, command=["bash", "-c", script])
        juliarun.submit(ctx, job)
        assert juliarun.wait(ctx, job, timeout=120).phase == "succeeded"
        lines = [x.message for x in juliarun.search(ctx, "block line", job=name)]
        assert sorted(lines) == ["block line 1", "block line 2", "block line 3"]
        ctx.metrics.flush()
        rows = juliarun.metrics(
            ctx, "blocks.progress", tags={"job": name}, agg="sum", group_by=("phase",)
        )
        assert [(r.group["phase"], r.value) for r in rows] == [("loop", 6.0)]
        job_file = juliarun_home / "clusters" / cluster_name / "jobs" / name / "job.json"
        assert stat.S_IMODE(job_file.stat().st_mode) == 0o600
        # The store configs (credentials included) reach the supervisor on its stdin only.
        assert "metric_store" not in json.loads(job_file.read_text())
        assert influx_bucket not in job_file.read_text()
        juliarun.delete(ctx, name)


def test_evaluate_alerts_calls_its_hooks(prefect_api: str, juliarun_home: Path) -> None:
    with juliarun.init() as ctx:
        ctx.metrics.record(
            "queue_length", 50, {"job": "crew"}, datetime.now(UTC) - timedelta(seconds=30)
        )
    seen: list[list[Alert]] = []
    hook = _unique("collect")
    register_hook(hook, seen.append)
    rule = ThresholdRule(
        name=_unique("busy"),
        metric="queue_length",
        op=">",
        value=10,
        agg="max",
        window=timedelta(minutes=5),
        group_by=("job",),
    )
    state = evaluate_alerts([rule], "local", fail_on_alert=False, hooks=[hook], return_state=True)
    assert state.is_completed()
    assert [[(a.rule, dict(a.group)) for a in alerts] for alerts in seen] == [
        [(rule.name, {"job": "crew"})]
    ]
    quiet = evaluate_alerts([], "local", hooks=[hook], return_state=True)
    assert quiet.is_completed() and quiet.message == "no alert rules"
    assert len(seen) == 1


# In the parallel phase its schedule once read empty, though every other `juliarun serve` runs
# one at a time with it (the shared-names group): the registration that replaced it was not found.
@pytest.mark.serial
def test_serve_schedules_evaluate_alerts_with_the_rules_file(
    serve_juliarun: Serve, prefect_api_url: str, tmp_path: Path
) -> None:
    rules = [
        {"kind": "threshold", "name": "busy", "metric": "queue_length", "op": ">", "value": 10,
         "window": 300, "group_by": ["job"]},
        {"kind": "absence", "name": "silent", "metric": "heartbeat", "window": 60},
    ]  # fmt: skip
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": rules, "hooks": ["mypkg.hooks:scale"]}))
    started = datetime.now(UTC)
    serve_juliarun(env={"JULIARUN_ALERT_RULES": str(path)})
    full_name = f"evaluate-alerts/{EVALUATE_ALERTS}"
    # registered after run-job (which serve_juliarun waits for), by the same serve call
    deadline = time.monotonic() + 60
    while not _served(prefect_api_url, full_name, since=started):
        assert time.monotonic() < deadline, "evaluate-alerts was not served in time"
        time.sleep(0.5)
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_api_url}),
        get_client(sync_client=True) as client,
    ):
        deployment = client.read_deployment_by_name(full_name)
    assert [s.schedule.interval for s in deployment.schedules] == [timedelta(minutes=1)]  # type: ignore[union-attr]
    assert all(s.active for s in deployment.schedules)
    params = deployment.parameters
    assert params["cluster"] == "local" and params["hooks"] == ["mypkg.hooks:scale"]
    assert parse_rules(params["rules"]) == parse_rules(rules)
