"""Shipping throughput of ElasticsearchLogStore against raw ``elasticsearch.helpers.bulk``.

    eval "$(scripts/testenv env)"
    .venv/bin/python bench/es_shipping.py [--lines 200000] [--bulk-sizes 1000,2000,5000]
        [--rounds 3] [--auto-id]

For each bulk size, ``--rounds`` pairs in the same run, alternating which goes first:
``store.write`` of N log lines + ``store.close()`` (ids, per-item result checks, spool bookkeeping
included) into its own index prefix, and ``helpers.bulk`` of the equivalent documents (same
fields, ``create`` with the same ids, built from the same LogLine objects) into its own index with
the same mapping. Prints the median lines/s of both and their ratio (goal >= 0.8), optionally raw
auto-id indexing for reference, and what the store's read-side refresh of an unchanged index
costs. The server is shared (other test runs may load it): compare ratios, not absolute rates.
Every index is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from elasticsearch import Elasticsearch, helpers

from juliarun.logs.base import LogLine
from juliarun.logs.elasticsearch import ElasticsearchLogStore, index_template

T0 = datetime(2024, 3, 1, 1, 0, tzinfo=UTC)


def make_lines(n: int) -> list[LogLine]:
    return [
        LogLine(
            timestamp=T0 + timedelta(microseconds=i * 10),
            job="bench-job",
            worker=f"bench-job-{i % 3}",
            stream="stdout",
            message=f"iteration {i}: loss={1 / (i + 1):.6f} elapsed={i * 0.001:.3f}s",
        )
        for i in range(n)
    ]


def drop(es: Elasticsearch, pattern: str, template: str | None = None) -> None:
    names = list(es.options(ignore_status=404).indices.get(index=pattern))
    if names:
        es.indices.delete(index=",".join(names))
    if template:
        es.options(ignore_status=404).indices.delete_index_template(name=template)


def run_store(url: str, lines: list[LogLine], bulk_size: int) -> float:
    prefix = f"bench-store-{uuid.uuid4().hex[:8]}"
    store = ElasticsearchLogStore(
        url, spool=tempfile.mkdtemp(prefix="juliarun-bench-spool-"), index_prefix=prefix,
        bulk_size=bulk_size,
    )  # fmt: skip
    es = Elasticsearch(url, request_timeout=60)
    try:
        t0 = time.perf_counter()
        stored = store.write(lines)
        store.close()
        elapsed = time.perf_counter() - t0
        assert stored == len(lines), stored
        assert store.spooled == 0, "Elasticsearch was unreachable: lines were spooled"
        es.indices.refresh(index=f"{prefix}-*")
        assert es.count(index=f"{prefix}-*")["count"] == len(lines)
        return len(lines) / elapsed
    finally:
        drop(es, f"{prefix}-*", prefix)
        es.close()


def run_raw(url: str, lines: list[LogLine], bulk_size: int, *, with_ids: bool) -> float:
    index = f"bench-raw-{uuid.uuid4().hex[:8]}"
    es = Elasticsearch(url, request_timeout=60)
    body = index_template(index)["template"]
    es.indices.create(index=index, settings=body["settings"], mappings=body["mappings"])
    writer = uuid.uuid4().hex[:12]

    def actions() -> Iterator[dict[str, Any]]:
        for seq, line in enumerate(lines):
            action: dict[str, Any] = {
                "_index": index,
                "@timestamp": line.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "cluster": line.cluster,
                "tenant": line.tenant,
                "job": line.job,
                "worker": line.worker,
                "stream": line.stream,
                "message": line.message,
                "writer": writer,
                "seq": seq,
            }
            if with_ids:
                action["_op_type"] = "create"
                action["_id"] = f"{writer}.{seq}"
            yield action

    try:
        t0 = time.perf_counter()
        ok, _errors = helpers.bulk(es, actions(), chunk_size=bulk_size)
        elapsed = time.perf_counter() - t0
        assert ok == len(lines), ok
        return len(lines) / elapsed
    finally:
        es.indices.delete(index=index)
        es.close()


def refresh_cost(url: str, rounds: int = 200) -> float:
    """Milliseconds per store.refresh() on an index with nothing new."""
    prefix = f"bench-refresh-{uuid.uuid4().hex[:8]}"
    store = ElasticsearchLogStore(url, spool=tempfile.mkdtemp(), index_prefix=prefix)
    es = Elasticsearch(url)
    try:
        store.write(make_lines(1000))
        store.refresh()
        t0 = time.perf_counter()
        for _ in range(rounds):
            store.refresh()
        return (time.perf_counter() - t0) / rounds * 1000
    finally:
        store.close()
        drop(es, f"{prefix}-*", prefix)
        es.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--bulk-sizes", default="1000,2000,5000")
    parser.add_argument("--rounds", type=int, default=3, help="pairs per bulk size (median)")
    parser.add_argument("--auto-id", action="store_true", help="also time raw auto-id indexing")
    parser.add_argument("--url", default=os.environ.get("JULIARUN_ES_URL", "http://127.0.0.1:9200"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.bulk_sizes.split(",")]
    lines = make_lines(args.lines)
    run_store(args.url, lines[:5000], 1000)  # warm-up: connections, template, JIT in the server
    run_raw(args.url, lines[:5000], 1000, with_ids=True)

    print(f"lines={args.lines} rounds={args.rounds} url={args.url} (medians of lines/s)")
    print(f"{'bulk':>6} {'store lines/s':>14} {'raw lines/s':>12} {'ratio':>6} {'raw auto-id':>12}")
    best: tuple[float, int] = (0.0, 0)
    for size in sizes:
        stores: list[float] = []
        raws: list[float] = []
        for r in range(args.rounds):  # alternate which goes first
            if r % 2:
                raws.append(run_raw(args.url, lines, size, with_ids=True))
                stores.append(run_store(args.url, lines, size))
            else:
                stores.append(run_store(args.url, lines, size))
                raws.append(run_raw(args.url, lines, size, with_ids=True))
        store, raw = statistics.median(stores), statistics.median(raws)
        auto = run_raw(args.url, lines, size, with_ids=False) if args.auto_id else float("nan")
        best = max(best, (store, size))
        print(f"{size:>6} {store:>14,.0f} {raw:>12,.0f} {store / raw:>6.2f} {auto:>12,.0f}")
    print(f"fastest store bulk size: {best[1]} ({best[0]:,.0f} lines/s)")
    print(f"read-side refresh of an unchanged index: {refresh_cost(args.url):.2f} ms")


if __name__ == "__main__":
    main()
