"""Metric write throughput: ``InfluxMetricStore.write`` + ``close`` against raw influxdb-client
batch writes (``WriteApi`` in batching mode, the same batch size), in one run, each into its own
fresh database on the InfluxDB at ``JULIARUN_INFLUX_URL``.

    eval "$(scripts/testenv env)"
    .venv/bin/python bench/influx_writes.py [--points 200000] [--batch-size 5000] [--rounds 3]

The raw client gets ready-made line-protocol strings (its fastest input: no conversion at all)
and, separately, ``influxdb_client.Point`` objects built before the clock starts; the store gets
``juliarun.metrics.Point`` objects, which it checks and formats itself, in calls of 1000 points
(as a supervisor would). Every run ends when every point is acknowledged (``close``), and the
stored count is checked with InfluxQL. Prints points/s for each (the median of the rounds) and
the store's ratio to each baseline; the goal is >= 0.8 against the strings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from influxdb_client import InfluxDBClient
from influxdb_client import Point as RawPoint
from influxdb_client.client.write_api import WriteOptions

from juliarun.metrics.base import Point
from juliarun.metrics.influxdb import InfluxMetricStore, format_line

URL = os.environ.get("JULIARUN_INFLUX_URL", "http://127.0.0.1:8086")
TOKEN = os.environ.get("JULIARUN_INFLUX_TOKEN", ":")
ORG = os.environ.get("JULIARUN_INFLUX_ORG", "-")
CHUNK = 1000


def influxql(statement: str) -> dict[str, Any]:
    data = urllib.parse.urlencode({"q": statement}).encode()
    request = urllib.request.Request(f"{URL}/query", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        body: dict[str, Any] = json.load(response)
    return body


def stored(database: str) -> int:
    body = influxql(f'SELECT count("value") FROM "{database}"."autogen"."bench"')
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def points(n: int) -> list[Point]:
    """n points over 20 series (job x worker), one microsecond apart, like sampled metrics."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        Point(
            "bench",
            float(i % 97) / 7,
            t0 + timedelta(microseconds=i),
            {"cluster": "local", "job": f"job-{i % 4}", "worker": f"job-{i % 4}-{i % 5}"},
        )
        for i in range(n)
    ]


def timed(database: str, n: int, run: Callable[[str], None]) -> float:
    influxql(f'CREATE DATABASE "{database}"')
    try:
        start = time.perf_counter()
        run(f"{database}/autogen")
        elapsed = time.perf_counter() - start
        count = stored(database)
        if count != n:
            raise SystemExit(f"{database}: {count} points stored, expected {n}")
        return n / elapsed
    finally:
        influxql(f'DROP DATABASE "{database}"')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, batch = args.points, args.batch_size
    ours = points(n)
    lines = []
    for p in ours:
        series, field, nanos = format_line(p)
        lines.append(f"{series} {field} {nanos}")
    raw_points = [
        RawPoint("bench").tag("cluster", p.tags["cluster"]).tag("job", p.tags["job"])
        .tag("worker", p.tags["worker"]).field("value", p.value)
        .time(int(p.timestamp.timestamp()) * 10**9 + p.timestamp.microsecond * 1000)
        for p in ours
    ]  # fmt: skip
    client = InfluxDBClient(url=URL, token=TOKEN, org=ORG, timeout=60_000)
    options = WriteOptions(batch_size=batch, flush_interval=1000, max_retries=0)

    def raw(records: list[Any]) -> Callable[[str], None]:
        def run(bucket: str) -> None:
            with client.write_api(write_options=options) as write_api:
                for i in range(0, n, CHUNK):
                    write_api.write(bucket=bucket, org=ORG, record=records[i : i + CHUNK])

        return run

    def store(bucket: str) -> None:
        with tempfile.TemporaryDirectory() as spool:
            s = InfluxMetricStore(
                URL, TOKEN, ORG, bucket, spool=spool, batch_size=batch, close_timeout=120
            )
            for i in range(0, n, CHUNK):
                s.write(ours[i : i + CHUNK])
            s.close()
            if s.stats.sent != n:
                raise SystemExit(f"store: {s.stats} (expected {n} sent)")

    results: dict[str, list[float]] = {"raw lines": [], "raw Points": [], "store": []}
    runs = {"raw lines": raw(lines), "raw Points": raw(raw_points), "store": store}
    for _ in range(args.rounds):
        for name, run in runs.items():  # alternate, so drift hits all three alike
            results[name].append(timed(f"juliarun_bench_{uuid.uuid4().hex[:8]}", n, run))
    client.close()
    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"points: {n}, batch size: {batch}, rounds: {args.rounds} (median points/s)")
    for name, rate in median.items():
        print(f"  {name:<11} {rate:>10,.0f} points/s")
    print(f"  store / raw lines  = {median['store'] / median['raw lines']:.2f}x  (goal >= 0.8)")
    print(f"  store / raw Points = {median['store'] / median['raw Points']:.2f}x")


if __name__ == "__main__":
    main()
