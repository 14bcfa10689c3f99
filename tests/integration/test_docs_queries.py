"""The queries docs/observability.md gives for Grafana (InfluxQL and Flux) and the Elasticsearch
query DSL, run against the real servers on data juliarun's own stores wrote — with Grafana's
macros replaced by what Grafana would put there. Each query must answer with data, so a query
that drifts from the stores' schema fails here. (The KQL lines need Kibana, which the test
environment does not run; they are not executed.)"""

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
                Point("juliarun.restarts", float(w), at, tags),
                Point("files_processed", 1.0, at, {**tags, "stage": f"s{i % 2}"}),
            ]
    store = make_store(influx_bucket, tmp_path / "spool")
    try:
        store.write(points)
        assert store.flush(timeout=30)
    finally:
        store.close()
    yield influx_bucket


@pytest.mark.influxdb
def test_the_grafana_influxql_queries_answer(written: str) -> None:
    database = written.split("/", 1)[0]
    queries = [q for block in blocks("sql") for q in statements(block)]
    assert len(queries) == 4
    for query in queries:
        sent = query.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "10s")
        body = influxql(sent, database=database)
        series = [s for r in body["results"] for s in r.get("series", [])]
        assert series, f"no data for {query!r}"
        if "GROUP BY" in query and '"worker"' in query:
            assert {s["tags"]["worker"] for s in series} == {"train-0", "train-1"}, query


@pytest.mark.influxdb
def test_the_grafana_flux_queries_answer(written: str, influx_client: InfluxDBClient) -> None:
    queries = [q for block in blocks("flux") for q in statements(block)]
    assert len(queries) == 3
    for query in queries:
        sent = (
            query.replace('"juliarun/autogen"', json.dumps(written))
            .replace("v.timeRangeStart", "-1h")
            .replace("v.timeRangeStop", "now()")
            .replace("v.windowPeriod", "10s")
        )
        tables = influx_client.query_api().query(sent)
        assert sum(len(t.records) for t in tables) > 0, f"no data for {query!r}"


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
