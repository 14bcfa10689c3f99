"""The Kubernetes log and metric collector on the real test cluster: a 3-worker Julia job on the
real node, its pod logs shipped into the SQLite and the Elasticsearch log stores exactly once
(also when collected again, and through run_job), metric lines printed by ``JuliaRun.record``
and the kubelet's cpu/memory samples in the metric store. Every test has its own namespace,
JULIARUN_HOME and (Elasticsearch) index prefix."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import juliarun
from juliarun.api import Context
from juliarun.logs import LogQuery
from juliarun.specs import JuliaParBatchWorkers
from tests.integration.fixtures.kubernetes import kubeconfig_path

pytestmark = pytest.mark.kubernetes

LINES = 40
SCRIPT = f"""include(ENV["JULIARUN_JL"])
w = ENV["JULIARUN_WORKER_INDEX"]
for i in 1:{LINES}
    println("worker ", w, " line ", i)
end
flush(stdout)
JuliaRun.record("collector.progress", 1.5; step="first")
JuliaRun.record("collector.progress", 2.5; step="second")
x = zeros(UInt8, 64 * 1024 * 1024); x[end] = 1  # something for the memory sample
t = time(); while time() - t < 8; end  # busy: something for the cpu sample
println(stderr, "worker ", w, " done ", x[end])
"""


def expected(name: str) -> Counter[tuple[str, str]]:
    return Counter(
        [(f"{name}-{w}", f"worker {w} line {i}") for w in range(3) for i in range(1, LINES + 1)]
        + [(f"{name}-{w}", f"worker {w} done 1") for w in range(3)]
    )


def kube_env(monkeypatch: pytest.MonkeyPatch, namespace: str, image: str) -> None:
    monkeypatch.setenv("JULIARUN_KUBECONFIG", str(kubeconfig_path()))
    monkeypatch.setenv("JULIARUN_KUBE_NAMESPACE", namespace)
    monkeypatch.setenv("JULIARUN_JULIA_IMAGE", image)
    monkeypatch.setenv("JULIARUN_POLL_INTERVAL", "0.5")


@pytest.fixture
def code(tmp_path: Path) -> Path:
    path = tmp_path / "code"
    path.mkdir()
    (path / "lines.jl").write_text(SCRIPT)
    return path


@pytest.fixture
def kube_ctx(
    kube_namespace: str,
    kube_julia_image: str,
    juliarun_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Context]:
    kube_env(monkeypatch, kube_namespace, kube_julia_image)
    ctx = juliarun.init("kubernetes")
    try:
        yield ctx
    finally:
        ctx.close()


def three_workers(ctx: Context, code: Path) -> JuliaParBatchWorkers:
    juliarun.define_storage(ctx, name="code", kind="host", path=str(code))
    name = f"coll-{uuid.uuid4().hex[:6]}"
    return JuliaParBatchWorkers(
        name, "/mnt/code/lines.jl", "code", nworkers=3, cpu="100m", memory="512Mi"
    )


def assert_stored_once(ctx: Context, name: str) -> None:
    got = ctx.logs.query(LogQuery(job=name))
    assert Counter((x.worker, x.message) for x in got) == expected(name)
    assert {x.stream for x in got} == {"stdout"}  # Kubernetes merges the streams
    assert {x.cluster for x in got} == {"kubernetes"}
    hits = juliarun.search(ctx, "line 7", job=name)
    assert sorted(x.worker for x in hits) == [f"{name}-{w}" for w in range(3)]
    assert not juliarun.search(ctx, regex="^##juliarun-metric", job=name)


def test_collect_ships_every_line_once_and_the_metrics(kube_ctx: Context, code: Path) -> None:
    job = three_workers(kube_ctx, code)
    juliarun.submit(kube_ctx, job)
    result = juliarun.collect(kube_ctx, job, timeout=300)
    assert result.ended == "succeeded", result
    assert result.lines == 3 * (LINES + 1)
    assert_stored_once(kube_ctx, job.name)

    # collecting again (a retried flow, `juliarun logs collect`) resumes from the store
    again = juliarun.collect(kube_ctx, job, timeout=120)
    assert again.lines == 0 and again.metric_points == 0, again
    assert_stored_once(kube_ctx, job.name)

    # metric lines from inside the job, with the job's tags
    rows = juliarun.metrics(
        kube_ctx,
        "collector.progress",
        tags={"job": job.name},
        agg="sum",
        group_by=("worker", "step"),
    )
    assert {(dict(r.group)["worker"], dict(r.group)["step"], r.value) for r in rows} == {
        (f"{job.name}-{w}", step, value)
        for w in range(3)
        for step, value in (("first", 1.5), ("second", 2.5))
    }

    # system metrics from the kubelet summary API, per worker
    cpu = juliarun.metrics(
        kube_ctx, "juliarun.cpu_seconds", tags={"job": job.name}, agg="max", group_by=("worker",)
    )
    assert {r.group["worker"] for r in cpu} == {f"{job.name}-{w}" for w in range(3)}
    assert all(r.value > 0 for r in cpu)
    mem = juliarun.metrics(
        kube_ctx, "juliarun.memory_bytes", tags={"job": job.name}, agg="max", group_by=("worker",)
    )
    assert {r.group["worker"] for r in mem} == {f"{job.name}-{w}" for w in range(3)}
    assert all(r.value > 32 * 1024 * 1024 for r in mem)
    restarts = juliarun.metrics(
        kube_ctx, "juliarun.restarts", tags={"job": job.name}, agg="max", group_by=("worker",)
    )
    assert {r.value for r in restarts} == {0.0}
    assert juliarun.delete(kube_ctx, job, force=True)


TRAILING = """include(ENV["JULIARUN_JL"])
println("worker ", ENV["JULIARUN_WORKER_INDEX"], " starts")
flush(stdout)
for i in 1:5
    JuliaRun.record("collector.trailing", i; step=string(i))
end
"""


def test_collecting_again_ships_no_metric_line_twice(kube_ctx: Context, code: Path) -> None:
    """Metric lines printed after a worker's last log line: the store's newest log line is
    behind them, the collector's checkpoint is not (SQLite keeps every point written)."""
    (code / "trailing.jl").write_text(TRAILING)
    juliarun.define_storage(kube_ctx, name="code", kind="host", path=str(code))
    name = f"trail-{uuid.uuid4().hex[:6]}"
    job = JuliaParBatchWorkers(
        name, "/mnt/code/trailing.jl", "code", nworkers=3, cpu="100m", memory="512Mi"
    )
    juliarun.submit(kube_ctx, job)
    first = juliarun.collect(kube_ctx, job, timeout=300)
    assert first.ended == "succeeded" and first.metric_points == 3 * 5, first
    for _ in range(2):
        again = juliarun.collect(kube_ctx, job, timeout=120)
        assert again.lines == 0 and again.metric_points == 0, again
    rows = juliarun.metrics(
        kube_ctx,
        "collector.trailing",
        tags={"job": name},
        agg="count",
        group_by=("worker", "step"),
    )
    assert {(r.group["worker"], r.group["step"], r.value) for r in rows} == {
        (f"{name}-{w}", str(i), 1.0) for w in range(3) for i in range(1, 6)
    }
    assert kube_ctx.logs.count(LogQuery(job=name)) == 3
    assert juliarun.delete(kube_ctx, job, force=True)


@pytest.mark.elasticsearch
def test_collect_into_elasticsearch(
    kube_namespace: str,
    kube_julia_image: str,
    juliarun_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    es_client: object,
    code: Path,
) -> None:
    from elasticsearch import Elasticsearch

    from juliarun.logs.elasticsearch import ElasticsearchLogStore

    assert isinstance(es_client, Elasticsearch)
    prefix = f"juliarun-test-{uuid.uuid4().hex[:12]}"
    kube_env(monkeypatch, kube_namespace, kube_julia_image)
    monkeypatch.setenv("JULIARUN_LOG_STORE", "elasticsearch")
    monkeypatch.setenv("JULIARUN_ES_INDEX_PREFIX", prefix)
    try:
        with juliarun.init("kubernetes") as ctx:
            assert isinstance(ctx.logs, ElasticsearchLogStore)
            job = three_workers(ctx, code)
            juliarun.submit(ctx, job)
            result = juliarun.collect(ctx, job, timeout=300)
            assert result.ended == "succeeded", result
            assert_stored_once(ctx, job.name)
            assert juliarun.collect(ctx, job, timeout=120).lines == 0
            assert_stored_once(ctx, job.name)
            juliarun.delete(ctx, job, force=True)
    finally:
        names = list(es_client.options(ignore_status=404).indices.get(index=f"{prefix}-*"))
        if names:
            es_client.options(ignore_status=404).indices.delete(index=",".join(names))
        es_client.options(ignore_status=404).indices.delete_index_template(name=prefix)


@pytest.mark.prefect_server
def test_run_job_collects_into_the_store(
    kube_ctx: Context, code: Path, prefect_api_url: str
) -> None:
    from juliarun.flows import run_job
    from juliarun.specs import StorageSpec

    job = three_workers(kube_ctx, code)
    result = run_job(
        job,
        cluster="kubernetes",
        storage=[StorageSpec(name="code", kind="host", path=str(code))],
        timeout=300,
        delete_after=True,
    )
    assert result["status"] == "succeeded"
    assert_stored_once(kube_ctx, job.name)
