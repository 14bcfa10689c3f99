"""Smoke test: the real InfluxDB server takes points through the v2 write API and answers Flux."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from tests.integration.fixtures.influxdb import influxql

pytestmark = pytest.mark.influxdb


def test_server_is_1_8(influx_client: InfluxDBClient) -> None:
    assert influx_client.version().startswith("1.8.")


def test_write_then_flux_query_and_mean(influx_client: InfluxDBClient, influx_bucket: str) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    points = [
        Point("task_duration")
        .tag("flow", "solve")
        .tag("worker", f"w{i % 2}")
        .field("seconds", float(seconds))
        .time(start + timedelta(seconds=i), WritePrecision.S)
        for i, seconds in enumerate([1, 2, 3, 6])
    ]
    points.append(
        Point("task_duration")
        .tag("flow", "other")
        .tag("worker", "w0")
        .field("seconds", 100.0)
        .time(start, WritePrecision.S)
    )
    with influx_client.write_api(write_options=SYNCHRONOUS) as write_api:
        write_api.write(bucket=influx_bucket, record=points)

    query_api = influx_client.query_api()
    selection = f"""
        from(bucket: "{influx_bucket}")
          |> range(start: -1h)
          |> filter(fn: (r) => r._measurement == "task_duration" and r._field == "seconds")
          |> filter(fn: (r) => r.flow == "solve")
    """
    rows = [
        (record.values["worker"], record.get_time(), record.get_value())
        for table in query_api.query(selection)
        for record in table.records
    ]
    assert sorted(rows) == sorted(
        (f"w{i % 2}", start + timedelta(seconds=i), float(seconds))
        for i, seconds in enumerate([1, 2, 3, 6])
    )

    mean_tables = query_api.query(selection + ' |> group(columns: ["flow"]) |> mean()')
    means = [record.get_value() for table in mean_tables for record in table.records]
    assert means == [pytest.approx(3.0)]

    # The same points through InfluxQL: the bucket is the database the fixture made.
    database = influx_bucket.split("/", maxsplit=1)[0]
    body = influxql(f'SELECT count("seconds") FROM "{database}"."autogen"."task_duration"')
    assert body["results"][0]["series"][0]["values"][0][1] == 5
