"""``volume`` storage on Docker: a labelled named volume, kept across jobs (one job writes, the
next reads). The local driver enforces neither size nor class: they are recorded as labels."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from juliarun.backends.base import wait_for_job
from juliarun.backends.docker import DockerBackend
from juliarun.errors import StorageError
from juliarun.logs import LogQuery, open_log_store
from juliarun.specs import Batch, StorageSpec

pytestmark = pytest.mark.docker


def test_a_docker_volume_written_by_one_job_is_read_by_the_next(
    juliarun_home: Path,
    base_image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    backend = DockerBackend(juliarun_home, image=base_image, labels=docker_labels, kill_grace=2)
    vol = StorageSpec(name="vol", kind="volume", storage_class="ssd", size="64Mi")
    try:
        name = backend.provision_storage(vol)
        assert backend.provision_storage(vol) == name  # idempotent
        labels = docker_client.volumes.get(name).attrs["Labels"]
        assert labels["app.kubernetes.io/managed-by"] == "juliarun"
        assert (labels["juliarun.io/size"], labels["juliarun.io/storage-class"]) == ("64Mi", "ssd")
        for job, script in (
            ("writer", "echo kept > /mnt/vol/data"),
            ("reader", "cat /mnt/vol/data"),
        ):
            backend.submit(Batch(job, command=["sh", "-c", script], storage="vol"), {"vol": vol})
            assert wait_for_job(backend, job, timeout=120).phase == "succeeded"
        store = open_log_store(backend.log_store)
        try:
            assert [ln.message for ln in store.query(LogQuery(job="reader"))] == ["kept"]
        finally:
            store.close()
        block = StorageSpec(name="raw", kind="volume", size="1Gi", volume_mode="Block")
        with pytest.raises(StorageError, match="volume_mode 'Block' needs a Kubernetes cluster"):
            backend.provision_storage(block)
    finally:
        for job in backend.jobs():
            backend.delete(job.name, force=True)
        backend.close()
