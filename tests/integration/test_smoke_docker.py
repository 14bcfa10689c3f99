"""Smoke tests of the real Docker engine, the local registry and the locally built images."""

from __future__ import annotations

import io
import re
from typing import Any

import docker
import pytest

from tests.integration.fixtures.docker import TEST_LABEL, delete_from_registry

pytestmark = pytest.mark.docker


def _run(
    client: docker.DockerClient, image: str, command: list[str], labels: dict[str, str]
) -> str:
    """Run ``command`` in a fresh container of ``image``; return its output, checking exit 0."""
    container = client.containers.run(image, command, labels=labels, detach=True)
    result: dict[str, Any] = container.wait(timeout=120)
    output: str = container.logs(stdout=True, stderr=True).decode()
    assert result["StatusCode"] == 0, output
    return output


def test_engine_answers_with_its_version(docker_client: docker.DockerClient) -> None:
    version = docker_client.version()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version["Version"]), version
    assert version["ApiVersion"]
    assert docker_client.info()["Driver"] == "overlay2"


def test_build_push_pull_by_digest(
    docker_client: docker.DockerClient,
    registry: str,
    base_image: str,
    docker_labels: dict[str, str],
) -> None:
    test_id = docker_labels[TEST_LABEL]
    dockerfile = (
        f'FROM {base_image}\nRUN echo \'hello from {test_id}\' > /hello\nCMD ["cat", "/hello"]\n'
    )
    repository = "juliarun/smoke"
    name = f"{registry}/{repository}"
    tag = f"t-{test_id}"
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()),
        tag=f"{name}:{tag}",
        labels=docker_labels,
        rm=True,
        forcerm=True,
    )
    digest = ""
    for event in docker_client.images.push(name, tag=tag, stream=True, decode=True):
        assert "error" not in event, event
        digest = event.get("aux", {}).get("Digest", digest)
    assert digest.startswith("sha256:"), "the push reported no digest"
    try:
        docker_client.images.remove(image.id, force=True)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(f"{name}:{tag}")

        pulled = docker_client.images.pull(f"{name}@{digest}")
        assert f"{name}@{digest}" in pulled.attrs["RepoDigests"]
        assert pulled.labels.get(TEST_LABEL) == test_id
        assert _run(docker_client, f"{name}@{digest}", [], docker_labels) == (
            f"hello from {test_id}\n"
        )
    finally:
        delete_from_registry(registry, repository, digest)


def test_julia_image_runs(
    docker_client: docker.DockerClient, julia_image: str, docker_labels: dict[str, str]
) -> None:
    output = _run(docker_client, julia_image, ["julia", "--version"], docker_labels)
    assert output.strip() == "julia version 1.5.3"
