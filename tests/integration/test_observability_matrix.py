"""Issue 6's backend matrix against the real servers: on each backend (local processes, Docker,
the real Kubernetes node) a running 3-worker Julia job's lines are searchable in Elasticsearch
while it runs and after it ends, follow mode streams them live, and the metrics it records from
inside plus the automatic system metrics (``juliarun.cpu_seconds`` / ``juliarun.memory_bytes``
per worker) are queryable in InfluxDB and plotted as a PNG.

Every case has its own JULIARUN_HOME, Elasticsearch index prefix, InfluxDB database and (Docker)
labels or (Kubernetes) namespace. On Kubernetes the collector runs in a thread, as the run_job
flow's ``watch_job`` task does."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import juliarun
from juliarun.api import Context
from juliarun.backends.base import CollectResult
from juliarun.logs import LogQuery
from juliarun.logs.elasticsearch import ElasticsearchLogStore
from juliarun.metrics.influxdb import InfluxMetricStore
from juliarun.metrics.plot import PNG_SIGNATURE, plot
from juliarun.specs import JuliaParBatchWorkers
from tests.integration.fixtures.kubernetes import kubeconfig_path
from tests.unit.local_jobs import eventually

pytestmark = [pytest.mark.elasticsearch, pytest.mark.influxdb]

LINES = 100
EVERY = 10  # a metric point every EVERY lines
SCRIPT = f"""include(ENV["JULIARUN_JL"])
w = ENV["JULIARUN_WORKER_INDEX"]
x = zeros(UInt8, 64 * 1024 * 1024); x[end] = 1  # something for the memory samples
for i in 1:{LINES}
    println("worker ", w, " line ", i)
    flush(stdout)
    if i % {EVERY} == 0
        JuliaRun.record("matrix.progress", i; phase="loop")
    end
    t = time(); while time() - t < 0.12; end  # busy: something for the cpu samples
end
println(stderr, "worker ", w, " done ", x[end])
"""


def expected(name: str) -> Counter[tuple[str, str]]:
    return Counter(
        [(f"{name}-{w}", f"worker {w} line {i}") for w in range(3) for i in range(1, LINES + 1)]
        + [(f"{name}-{w}", f"worker {w} done 1") for w in range(3)]
    )


@pytest.fixture
def stores_env(
    juliarun_home: Path,
    influx_bucket: str,
    es_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """Elasticsearch and InfluxDB selected, with this case's own index prefix and database."""
    prefix = f"juliarun-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("JULIARUN_LOG_STORE", "elasticsearch")
    monkeypatch.setenv("JULIARUN_ES_INDEX_PREFIX", prefix)
    monkeypatch.setenv("JULIARUN_METRIC_STORE", "influxdb")
    monkeypatch.setenv("JULIARUN_INFLUX_BUCKET", influx_bucket)
    try:
        yield prefix
    finally:
        es = es_client.options(ignore_status=404)
        names = list(es.indices.get(index=f"{prefix}-*"))
        if names:
            es.indices.delete(index=",".join(names))
        es.indices.delete_index_template(name=prefix)


def backend_env(kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixtures and variables of one backend (only that backend's services are needed)."""
    if kind == "local":
        request.getfixturevalue("julia")
    elif kind == "docker":
        monkeypatch.setenv("JULIARUN_JULIA_IMAGE", request.getfixturevalue("julia_image"))
        labels = request.getfixturevalue("docker_labels")
        monkeypatch.setenv("JULIARUN_DOCKER_LABELS", json.dumps(labels))
    else:
        monkeypatch.setenv("JULIARUN_KUBECONFIG", str(kubeconfig_path()))
        monkeypatch.setenv("JULIARUN_KUBE_NAMESPACE", request.getfixturevalue("kube_namespace"))
        monkeypatch.setenv("JULIARUN_JULIA_IMAGE", request.getfixturevalue("kube_julia_image"))
        monkeypatch.setenv("JULIARUN_POLL_INTERVAL", "0.5")


class Collector:
    """Runs ``juliarun.collect`` in a thread on Kubernetes; nothing to do elsewhere."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.result: CollectResult | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        if ctx.backend.kind == "kubernetes":
            self.thread = threading.Thread(target=self._run, args=(ctx, name), daemon=True)
            self.thread.start()

    def _run(self, ctx: Context, name: str) -> None:
        try:
            self.result = juliarun.collect(ctx, name, timeout=300)
        except BaseException as exc:
            self.error = exc

    def done(self) -> bool:
        return self.thread is None or not self.thread.is_alive()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=330)
            assert not self.thread.is_alive(), "the collector did not end"
            assert self.error is None, self.error
            assert self.result is not None and self.result.ended == "succeeded", self.result


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("local", marks=pytest.mark.julia),
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("kubernetes", marks=pytest.mark.kubernetes),
    ],
)
def test_three_worker_julia_job_logs_metrics_and_plot(
    kind: str,
    stores_env: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    backend_env(kind, request, monkeypatch)
    code = tmp_path / "code"
    code.mkdir()
    (code / "matrix.jl").write_text(SCRIPT)
    name = f"matrix-{uuid.uuid4().hex[:6]}"
    workers = {f"{name}-{w}" for w in range(3)}
    with juliarun.init(kind) as ctx:
        assert isinstance(ctx.logs, ElasticsearchLogStore)
        assert isinstance(ctx.metrics, InfluxMetricStore)
        juliarun.define_storage(ctx, name="code", kind="host", path=str(code))
        job = JuliaParBatchWorkers(
            name, "/mnt/code/matrix.jl", "code", nworkers=3, cpu="100m", memory="512Mi"
        )
        juliarun.submit(ctx, job)
        collector = Collector(ctx, name)
        try:
            # searchable within seconds, while it runs
            def some_from_every_worker() -> bool:
                found = juliarun.search(ctx, "line", job=name)
                return {x.worker for x in found} == workers

            eventually(some_from_every_worker, timeout=180, interval=0.2, what="lines")
            assert not ctx.backend.status(name).done
            assert juliarun.search(ctx, "line 1", job=name)
            assert juliarun.search(ctx, regex=r"^worker [0-2] line [0-9]+$", job=name)

            # follow streams them live: some arrive after following began, until the end
            already = ctx.logs.count(LogQuery(job=name))
            followed = list(
                ctx.logs.follow(
                    LogQuery(job=name),
                    stop=lambda: collector.done() and ctx.backend.status(name).done,
                    poll_interval=0.2,
                )
            )
            assert juliarun.wait(ctx, job, timeout=300).phase == "succeeded"
            collector.join()
        finally:
            if not collector.done():
                juliarun.delete(ctx, job, force=True)

        # after it ends: every line, once, searchable
        got = ctx.logs.query(LogQuery(job=name))
        assert Counter((x.worker, x.message) for x in got) == expected(name)
        assert len(followed) == len(got) > already
        assert Counter(x.message for x in followed) == Counter(x.message for x in got)
        hits = juliarun.search(ctx, f"line {LINES}", job=name)
        assert sorted(x.worker for x in hits) == sorted(workers)
        assert not juliarun.search(ctx, regex="^##juliarun-metric", job=name)

        # metrics recorded from inside the Julia job, with the job's tags
        ctx.metrics.flush()
        progress = juliarun.metrics(
            ctx, "matrix.progress", tags={"job": name}, agg="sum", group_by=("worker", "phase")
        )
        total = float(sum(range(EVERY, LINES + 1, EVERY)))
        assert {(r.group["worker"], r.group["phase"], r.value) for r in progress} == {
            (w, "loop", total) for w in workers
        }
        # the automatic system metrics, per worker
        cpu = juliarun.metrics(
            ctx, "juliarun.cpu_seconds", tags={"job": name}, agg="max", group_by=("worker",)
        )
        assert {r.group["worker"] for r in cpu} == workers
        assert all(r.value > 0 for r in cpu)
        mem = juliarun.metrics(
            ctx, "juliarun.memory_bytes", tags={"job": name}, agg="max", group_by=("worker",)
        )
        assert {r.group["worker"] for r in mem} == workers
        assert all(r.value > 32 * 1024 * 1024 for r in mem)

        # plotted: a PNG with content
        for metric in ("matrix.progress", "juliarun.cpu_seconds", "juliarun.memory_bytes"):
            series = juliarun.metrics(
                ctx,
                metric,
                tags={"job": name},
                agg="max",
                group_by=("worker",),
                window=timedelta(seconds=2),
            )
            assert {r.group["worker"] for r in series} == workers, metric
            path = plot(series, tmp_path / f"{metric}.png", title=f"{metric} of {name}")
            data = path.read_bytes()
            assert data[:8] == PNG_SIGNATURE and len(data) > 5000, metric
        juliarun.delete(ctx, job)
