"""The seed's process-autoscaler session on Docker and on Kubernetes: ``start_queue`` (a broker
container / a broker pod with a Service and a Secret), ``JuliaParBatchWorkers(nworkers=1)`` of
real Julia workers consuming it, ``WorkQueueMetric`` → ``AverageMetric`` → ``BoundedMetric(1,
10)``, a ``JobScaler``, bursts of work, then ``delete`` of the workers and the queue. The workers
rise to at least 5 and come back to 1, and every message is processed exactly once (counted by
id): scale-down drains the workers that go (on Kubernetes, the highest indexes, asked to stop
before the count is lowered), so no message is processed twice."""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from typing import Any

import pytest

from juliarun import api
from juliarun.demo_autoscale import run, write_worker
from juliarun.specs import JuliaParBatchWorkers, StorageSpec


def session(ctx: api.Context) -> tuple[dict[str, int], str]:
    out = io.StringIO()
    counts = run(
        out,
        ctx=ctx,
        bursts=2,
        per_burst=30,
        work_seconds=0.3,
        interval=1.0,
        window=3.0,
        scale_down_after=4.0,
        timeout=480.0,
        cpu="50m",
        memory="300Mi",
    )
    return counts, out.getvalue()


def check(counts: dict[str, int], text: str) -> None:
    assert counts["published"] == 60
    assert (counts["processed"], counts["distinct"]) == (60, 60)  # each id exactly once
    assert counts["most_workers"] >= 5
    assert counts["final_workers"] == 1
    # counts["redelivered"] may be above 0: a drained worker that acks its last message may be
    # sent the next one before it closes (prefetch 1); the broker takes that one back unstarted.
    changes = [int(n) for n in re.findall(r"^changing scale of workers to (\d+)$", text, re.M)]
    assert max(changes) == counts["most_workers"] and changes[-1] == 1
    assert "60 results for 60 messages: 60 distinct, 0 processed more than once" in text


@pytest.mark.docker
def test_the_session_on_docker_scales_up_and_back_and_loses_nothing(
    docker_client: Any, julia_image: str, juliarun_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JULIARUN_JULIA_IMAGE", julia_image)
    with api.init("docker") as ctx:
        try:
            counts, text = session(ctx)
        finally:
            ctx.backend.delete_queue("mq", force=True)  # type: ignore[attr-defined]
        check(counts, text)
        # the broker container went with the queue
        label = "juliarun.io/queue=mq"
        scope = f"juliarun.io/scope={ctx.backend.names.scope}"  # type: ignore[attr-defined]
        left = docker_client.containers.list(all=True, filters={"label": [label, scope]})
        assert left == []


@pytest.mark.kubernetes
def test_the_session_on_kubernetes_scales_up_and_back_and_loses_nothing(
    kube_ctx: api.Context, kube_core: Any, kube_namespace: str
) -> None:
    queue = api.start_queue(kube_ctx, name="mq")  # the session finds this one running
    password = queue._password  # the one place it is read: to check it is nowhere else
    job = JuliaParBatchWorkers("probe", "/mnt/code/w.jl", "code", env=queue.env)
    code = StorageSpec(name="code", kind="host", path="/tmp")
    manifest = json.dumps(kube_ctx.backend.manifest(job, {"code": code}))  # type: ignore[attr-defined]
    assert password not in manifest and password not in json.dumps(queue.env)
    assert '"secretKeyRef": {"name": "juliarun-queue-mq", "key": "password"}' in manifest
    counts, text = session(kube_ctx)
    check(counts, text)
    assert password not in text
    # delete(ctx, queue) removed the broker's pod, Service and Secret
    selector = "juliarun.io/queue=mq"
    assert kube_core.list_namespaced_pod(kube_namespace, label_selector=selector).items == []
    assert kube_core.list_namespaced_service(kube_namespace, label_selector=selector).items == []
    assert kube_core.list_namespaced_secret(kube_namespace, label_selector=selector).items == []


@pytest.mark.kubernetes
def test_a_restarted_broker_pod_loses_no_message_and_workers_reconnect(
    kube_ctx: api.Context, kube_core: Any, kube_namespace: str
) -> None:
    """The broker's container is stopped mid-run (SIGTERM to its first process) and the kubelet
    starts it again in the same pod: the durable queue and its persistent messages are on the
    pod's ``emptyDir``, the Service's address does not change, the worker reconnects, and every
    message is processed (at most the one in hand when the broker went away twice)."""
    from kubernetes import client as k8s
    from kubernetes.stream import stream

    ctx = kube_ctx
    root = ctx.settings.home / "restart"
    write_worker(root)
    api.define_storage(ctx, name="juliarun", kind="host", path=str(root))
    queue = api.start_queue(ctx, name="mq")
    for name in ("work", "done"):
        queue.declare(name)
    ids = [f"m-{i}" for i in range(20)]
    queue.publish("work", ids)
    workers = JuliaParBatchWorkers(
        "workers",
        "/mnt/juliarun/scaler/worker.jl",
        "juliarun",
        nworkers=1,
        cpu="50m",
        memory="300Mi",
        restart="OnFailure",
        env={**queue.env, "WORK_SECONDS": "1.0"},
    )
    api.submit(ctx, workers)

    def wait(check: Any, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.5)

    wait(lambda: queue.depth("done") >= 3, 180, "3 results before the restart")
    queue.close()
    exec_client = k8s.ApiClient(kube_core.api_client.configuration)
    try:
        stream(
            k8s.CoreV1Api(exec_client).connect_get_namespaced_pod_exec,
            "juliarun-queue-mq",
            kube_namespace,
            container="broker",
            command=["sh", "-c", "kill -TERM 1"],
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
        )
    finally:
        exec_client.close()

    def restarted() -> bool:
        pod = kube_core.read_namespaced_pod("juliarun-queue-mq", kube_namespace)
        [status] = pod.status.container_statuses
        return bool(status.restart_count >= 1 and status.ready)

    wait(restarted, 120, "the broker container to restart")
    again = api.start_queue(ctx, name="mq")  # the same broker, found running
    assert 3 <= len(peek_done(again)) < 20  # the restart came mid-run
    assert again.url == queue.url
    wait(lambda: len({b for b in peek_done(again)}) == 20, 180, "all 20 ids after the restart")
    results = Counter(body.decode() for body in again.take("done"))
    assert set(results) == set(ids)  # nothing lost
    assert sum(results.values()) - 20 <= 1  # at most the message in hand, twice
    api.delete(ctx, workers, force=True)
    api.delete(ctx, again, force=True)


def peek_done(queue: Any) -> list[bytes]:
    """The results so far, put back (taken and published again)."""
    bodies: list[bytes] = queue.take("done")
    if bodies:
        queue.publish("done", bodies)
    return bodies
