"""The queries docs/observability.md gives for Grafana (InfluxQL and Flux) and the Elasticsearch
query DSL, run against the real servers on data juliarun's own stores wrote — with Grafana's
macros replaced by what Grafana would put there. Each query must answer with the exact values
the data implies, so a query that drifts from the stores' schema (or its aggregation) fails
here. (The KQL lines need Kibana, which the test environment does not run; they are not
executed.)"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from juliarun.logs.base import LogLine
from juliarun.logs.elasticsearch import ElasticsearchLogStore
from juliarun.metrics.base import Point
from tests.integration.fixtures.influxdb import influxql
from tests.integration.test_logs_elasticsearch import drop_prefix
from tests.integration.test_metrics_influxdb import make_store

if TYPE_CHECKING:
    from collections.abc import Iterator

    from elasticsearch import Elasticsearch
    from influxdb_client import InfluxDBClient

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def blocks(lang: str) -> list[str]:
    """The fenced ``lang`` blocks of the document."""
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def statements(block: str) -> list[str]:
    """The queries of a block: separated by blank lines, comment lines dropped."""
    queries = []
    for chunk in re.split(r"\n\s*\n", block):
        lines = [ln for ln in chunk.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
        if lines:
            queries.append("\n".join(lines))
    return queries


@pytest.fixture
def written(influx_bucket: str, tmp_path: Path) -> Iterator[str]:
    """Two workers of job ``train`` over the last minutes — the system metrics juliarun records
    and an application metric with a ``stage`` tag — written by the InfluxDB metric store."""
    now = datetime.now(UTC).replace(microsecond=0)
    points = []
    for w in range(2):
        tags = {"cluster": "local", "tenant": "default", "job": "train", "worker": f"train-{w}"}
        for i in range(12):
            at = now - timedelta(seconds=10 * (12 - i))
            points += [
                Point("juliarun.cpu_seconds", 1.5 * i * (w + 1), at, tags),
                Point("juliarun.memory_bytes", 2**20 * (100 + i), at, tags),
                # a counter: its latest value (2 and 3) is not its first or its mean
                Point("juliarun.restarts", float(i // 4 + w), at, tags),
                Point("files_processed", 1.0, at, {**tags, "stage": f"s{i % 2}"}),
            ]
    store = make_store(influx_bucket, tmp_path / "spool")
    try:
        store.write(points)
        assert store.flush(timeout=30)
    finally:
        store.close()
    yield influx_bucket


def _values(series: list[dict], tag: str) -> dict[str, list[float]]:  # type: ignore[type-arg]
    """Non-null values of each InfluxQL series, by the value of its ``tag``."""
    return {s["tags"][tag]: [row[1] for row in s["values"] if row[1] is not None] for s in series}


MEMORY = [float(2**20 * (100 + i)) for i in range(12)]


@pytest.mark.influxdb
def test_the_grafana_influxql_queries_answer(written: str) -> None:
    database = written.split("/", 1)[0]
    queries = [q for block in blocks("sql") for q in statements(block)]
    assert len(queries) == 4
    answers = []
    for query in queries:
        sent = query.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "10s")
        body = influxql(sent, database=database)
        answers.append([s for r in body["results"] for s in r.get("series", [])])
    cpu, memory, files, restarts = answers
    # cpu_seconds grows by 1.5 * (w + 1) every 10 s: 0.15 and 0.3 cores, between 12 points
    rates = _values(cpu, "worker")
    assert rates.keys() == {"train-0", "train-1"}
    assert rates["train-0"] == pytest.approx([0.15] * 11)
    assert rates["train-1"] == pytest.approx([0.3] * 11)
    assert _values(memory, "worker") == {"train-0": MEMORY, "train-1": MEMORY}
    # 12 points per stage (6 per worker), in however many 1-minute windows they straddle
    sums = _values(files, "stage")
    assert {stage: sum(v) for stage, v in sums.items()} == {"s0": 12.0, "s1": 12.0}
    assert _values(restarts, "worker") == {"train-0": [2.0], "train-1": [3.0]}


@pytest.mark.influxdb
def test_the_grafana_flux_queries_answer(written: str, influx_client: InfluxDBClient) -> None:
    queries = [q for block in blocks("flux") for q in statements(block)]
    assert len(queries) == 3
    answers: list[dict[str, list[float]]] = []
    for query, tag in zip(queries, ["worker", "worker", "stage"], strict=True):
        sent = (
            query.replace('"juliarun/autogen"', json.dumps(written))
            .replace("v.timeRangeStart", "-1h")
            .replace("v.timeRangeStop", "now()")
            .replace("v.windowPeriod", "10s")
        )
        by_tag: dict[str, list[float]] = {}
        for table in influx_client.query_api().query(sent):
            for record in table.records:
                by_tag.setdefault(record.values[tag], []).append(float(record.get_value()))
        answers.append(by_tag)
    memory, cpu, files = answers
    assert memory == {"train-0": MEMORY, "train-1": MEMORY}
    assert cpu.keys() == {"train-0", "train-1"}
    assert cpu["train-0"] == pytest.approx([0.15] * 11)
    assert cpu["train-1"] == pytest.approx([0.3] * 11)
    assert {stage: sum(v) for stage, v in files.items()} == {"s0": 12.0, "s1": 12.0}


@pytest.fixture
def es_prefix(es_client: Elasticsearch) -> Iterator[str]:
    name = f"juliarun-test-{uuid.uuid4().hex[:12]}"
    yield name
    drop_prefix(es_client, name)


@pytest.mark.elasticsearch
def test_the_query_dsl_example_finds_the_lines_it_describes(
    es_client: Elasticsearch, es_prefix: str, tmp_path: Path
) -> None:
    import os

    store = ElasticsearchLogStore(
        os.environ["JULIARUN_ES_URL"], spool=tmp_path / "spool", index_prefix=es_prefix
    )
    now = datetime.now(UTC)
    try:
        store.write(
            [
                LogLine(now, "helloworld", "helloworld-0", "stderr", "hello world from stderr"),
                LogLine(now, "helloworld", "helloworld-0", "stdout", "hello world from stdout"),
                LogLine(now, "other", "other-0", "stderr", "hello world elsewhere"),
            ]
        )
        store.refresh()
    finally:
        store.close(timeout=0)
    [example] = blocks("json")
    found = es_client.search(index=f"{es_prefix}-*", body=json.loads(example))
    assert [h["_source"]["message"] for h in found["hits"]["hits"]] == ["hello world from stderr"]
