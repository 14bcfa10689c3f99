"""The plain parts of queues on Docker and Kubernetes and of the HPA option: the external-metrics
answers juliarun serves, the drain's index bookkeeping, the RabbitMQ block, the broker objects
(no password outside the Secret) and the settings that pick the broker image."""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from juliarun.backends.kubernetes import drain
from juliarun.backends.kubernetes.hpa import BACKLOG, ExternalMetricsServer, hpa_manifest
from juliarun.backends.kubernetes.manifests import job_manifest
from juliarun.backends.kubernetes.queues import KubernetesQueue, broker_objects
from juliarun.blocks.queues import RabbitMQ
from juliarun.queues.image import broker_image_spec
from juliarun.settings import Settings
from juliarun.specs import JuliaParBatchWorkers, StorageSpec

BASE = "/apis/external.metrics.k8s.io/v1beta1"


@pytest.fixture
def server() -> Iterator[ExternalMetricsServer]:
    def broken() -> float:
        raise RuntimeError("management API down")

    srv = ExternalMetricsServer(
        {"work": lambda: 12.0, "half": lambda: 2.5, "broken": broken},
        "127.0.0.1",
        service_names=["juliarun-external-metrics.jr.svc"],
        client_ca=None,
    )
    yield srv
    srv.httpd.server_close()
    srv._dir.cleanup()


def test_the_metrics_api_lists_the_backlog_metric_and_serves_each_queue(
    server: ExternalMetricsServer,
) -> None:
    status, body = server.answer(BASE)
    assert status == 200 and [r["name"] for r in body["resources"]] == [BACKLOG]
    status, body = server.answer(f"{BASE}/namespaces/jr/{BACKLOG}?labelSelector=queue%3Dwork")
    assert status == 200
    item = body["items"][0]
    assert (item["metricLabels"], item["value"]) == ({"queue": "work"}, "12")
    _, body = server.answer(f"{BASE}/namespaces/jr/{BACKLOG}?labelSelector=queue%3Dhalf")
    assert body["items"][0]["value"] == "2500m"
    status, body = server.answer(f"{BASE}/namespaces/jr/{BACKLOG}?labelSelector=queue%3Dother")
    assert status == 404 and "'other'" in body["message"]
    status, body = server.answer(f"{BASE}/namespaces/jr/{BACKLOG}?labelSelector=queue%3Dbroken")
    assert status == 503 and "management API down" in body["message"]
    assert server.answer(f"{BASE}/namespaces/jr/other-metric")[0] == 404


def test_the_metrics_api_answers_over_https_with_its_own_certificate(
    server: ExternalMetricsServer,
) -> None:
    server.start()
    try:
        context = ssl.create_default_context(cadata=server.cert.decode())
        context.check_hostname = False  # the certificate names the Service and the IP
        url = f"https://127.0.0.1:{server.port}{BASE}/namespaces/jr/{BACKLOG}?labelSelector=queue%3Dwork"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            assert json.load(response)["items"][0]["value"] == "12"
        assert server.requests == 1
    finally:
        server.httpd.shutdown()


def test_a_metrics_api_with_a_client_ca_refuses_clients_without_a_certificate() -> None:
    other = ExternalMetricsServer({}, "127.0.0.1", service_names=["x"], client_ca=None)
    strict = ExternalMetricsServer(
        {"work": lambda: 1.0}, "127.0.0.1", service_names=["y"], client_ca=other.cert.decode()
    )
    strict.start()
    try:
        context = ssl.create_default_context(cadata=strict.cert.decode())
        context.check_hostname = False
        with pytest.raises(OSError):
            urllib.request.urlopen(f"https://127.0.0.1:{strict.port}{BASE}", context=context)
        assert strict.requests == 0
    finally:
        strict.stop()
        other.httpd.server_close()


def test_the_hpa_targets_the_workers_object_with_messages_per_worker() -> None:
    hpa = hpa_manifest("w", "jr", "work", per_worker=2.5, min_workers=1, max_workers=4)
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "juliarun.io/v1",
        "kind": "JuliaWorkers",
        "name": "w",
    }
    assert spec["metrics"][0]["external"]["target"]["averageValue"] == "2500m"
    assert spec["metrics"][0]["external"]["metric"]["selector"] == {
        "matchLabels": {"queue": "work"}
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_the_drain_reads_indexes_and_live_pods() -> None:
    assert drain.completed_floor("3-5,1") == 1
    assert drain.completed_floor(None) is None
    pod = {
        "metadata": {"name": "w-2", "labels": {"batch.kubernetes.io/job-completion-index": "2"}},
        "status": {"phase": "Running"},
    }
    assert drain.pod_index(pod) == 2 and drain.live(pod)
    pod["metadata"]["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    assert not drain.live(pod)
    assert not drain.live({"metadata": {}, "status": {"phase": "Succeeded"}})


def test_the_broker_password_is_only_in_the_secret_and_jobs_read_it_from_there() -> None:
    secret, pod, service = broker_objects("mq", "jr", "img", "pw-123")
    assert secret["stringData"] == {"user": "juliarun", "password": "pw-123"}
    assert "pw-123" not in json.dumps([pod, service])
    queue = KubernetesQueue(
        "amqp://juliarun:pw-123@192.0.2.2:30000/%2F",
        management_url="http://192.0.2.2:30001",
        stomp_port=61613,
        job_host="10.96.0.10",
        secret="juliarun-queue-mq",
    )
    assert "pw-123" not in json.dumps(queue.env) and "pw-123" not in repr(queue)
    job = JuliaParBatchWorkers("w", "/mnt/code/w.jl", "code", env=queue.env)
    code = StorageSpec(name="code", kind="host", path="/srv/code")
    manifest = job_manifest(job, {"code": code}, namespace="jr", image="julia")
    env = manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in env
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert refs == {
        "JULIARUN_QUEUE_USER": {"name": "juliarun-queue-mq", "key": "user"},
        "JULIARUN_QUEUE_PASSWORD": {"name": "juliarun-queue-mq", "key": "password"},
    }
    assert "pw-123" not in json.dumps(manifest)


def test_the_rabbitmq_block_keeps_credentials_out_of_the_url() -> None:
    with pytest.raises(ValidationError, match="url"):
        RabbitMQ(url="amqp://u:p@mq:5672/%2F", username="u", password="p")
    with pytest.raises(ValidationError, match="url"):
        RabbitMQ(url="http://mq:5672/", username="u", password="p")
    with pytest.raises(ValidationError, match="stomp_port"):
        RabbitMQ(url="amqp://mq/%2F", username="u", password="p", stomp_port=0)
    block = RabbitMQ(url="amqp://mq:5673/jobs", username="u", password="p w", job_host="10.0.0.5")
    assert "p w" not in repr(block)
    queue = block.queue()
    assert queue.url == "amqp://u:p%20w@mq:5673/jobs" and queue.vhost == "jobs"
    assert queue.env["JULIARUN_QUEUE_HOST"] == "10.0.0.5"
    assert queue.env["JULIARUN_QUEUE_PASSWORD"] == "p w"


def test_the_settings_pick_the_broker_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JULIARUN_BASE_IMAGE", "localhost:5000/juliarun/bookworm:x")
    monkeypatch.setenv("JULIARUN_REGISTRY", "localhost:5000")
    monkeypatch.delenv("JULIARUN_QUEUE_IMAGE", raising=False)
    image = Settings().broker_image()
    assert (image.image, image.base, image.registry) == (
        None,
        "localhost:5000/juliarun/bookworm:x",
        "localhost:5000",
    )
    spec = broker_image_spec(image.base)
    assert spec.base == image.base and "rabbitmq-server" in spec.run[1]
    monkeypatch.setenv("JULIARUN_QUEUE_IMAGE", "reg/rabbit:1")
    assert Settings().broker_image().image == "reg/rabbit:1"
