"""The plain parts of queues on Docker and Kubernetes: the drain's index bookkeeping, the
RabbitMQ block, the broker objects (no password outside the Secret) and the settings that pick
the broker image."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from juliarun.backends.kubernetes import drain
from juliarun.backends.kubernetes.manifests import job_manifest
from juliarun.backends.kubernetes.queues import KubernetesQueue, broker_objects
from juliarun.blocks.queues import RabbitMQ
from juliarun.queues.image import broker_image_spec
from juliarun.settings import Settings
from juliarun.specs import JuliaParBatchWorkers, StorageSpec


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
    pod["status"]["containerStatuses"] = [{"name": "main", "restartCount": 2}]
    assert drain.restart_count(pod) == 2 and drain.restart_count({"status": {}}) == 0


def test_the_drain_signals_only_a_worker_that_catches_sigterm() -> None:
    """The exec'd script, run here against real processes (``/proc/1`` replaced by theirs):
    one that installed a SIGTERM handler is asked and stops cleanly, one that did not is left
    alone."""
    catcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    plain = subprocess.Popen(["sleep", "60"])
    try:
        assert catcher.stdout is not None and catcher.stdout.readline() == b"ready\n"
        for proc, said in ((catcher, "asked"), (plain, "starting")):
            script = drain.STOP_SCRIPT.replace("/proc/1/", f"/proc/{proc.pid}/").replace(
                "kill -TERM 1", f"kill -TERM {proc.pid}"
            )
            out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
            assert out.stdout.strip() == said
        assert catcher.wait(timeout=10) == 0
        assert plain.poll() is None  # not signalled
    finally:
        for proc in (catcher, plain):
            proc.kill()
            proc.wait()


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
