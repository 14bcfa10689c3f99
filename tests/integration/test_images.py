"""Image builds on the real engine and registry: the tag is the content hash, an unchanged spec
is not rebuilt, a failing RUN step is named, an unknown base fails before any build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from juliarun.builders.images import build_image, plan_image
from juliarun.errors import BuildError, SpecError
from juliarun.specs import ImageSpec

pytestmark = pytest.mark.docker


@pytest.fixture
def client(docker_client: docker.DockerClient, registry: str) -> Iterator[docker.DockerClient]:
    yield docker_client


def test_build_pushes_a_tag_named_by_the_content_hash_and_skips_an_unchanged_spec(
    client: docker.DockerClient,
    registry: str,
    base_image: str,
    docker_labels: dict[str, str],
    tmp_path: Path,
) -> None:
    (tmp_path / "hello.txt").write_text("hello world!\n")
    spec = ImageSpec(
        name="juliarun/test-images",
        base=base_image,
        files={"/opt/hello.txt": str(tmp_path / "hello.txt")},
        env={"GREETING": "hi"},
        run=["cat /opt/hello.txt"],
        labels=docker_labels,
    )
    lines: list[str] = []
    built = build_image(client, spec, registry, on_line=lines.append)
    assert built.built and built.pushed
    assert built.tag == f"{registry}/juliarun/test-images:{built.digest[:12]}"
    assert any(line.startswith("Step ") and "RUN cat /opt/hello.txt" in line for line in lines)
    assert "hello world!" in lines
    assert client.images.get_registry_data(built.tag).id.startswith("sha256:")
    out = client.containers.run(
        built.tag,
        ["sh", "-c", "cat /opt/hello.txt; echo $GREETING"],
        remove=True,
        labels=docker_labels,
    )
    assert out.decode().split() == ["hello", "world!", "hi"]

    again: list[str] = []
    second = build_image(client, spec, registry, on_line=again.append)
    assert (second.tag, second.built, second.pushed) == (built.tag, False, False)
    assert not any(line.startswith("Step ") for line in again)

    (tmp_path / "hello.txt").write_text("changed\n")  # a context file is part of the hash
    assert plan_image(client, spec, registry).digest != built.digest


def test_a_failing_run_step_is_named_with_its_output(
    client: docker.DockerClient, registry: str, base_image: str, docker_labels: dict[str, str]
) -> None:
    spec = ImageSpec(
        name="juliarun/test-images-fail",
        base=base_image,
        run=["echo before", "echo about to fail && exit 3"],
        labels=docker_labels,
    )
    with pytest.raises(BuildError) as err:
        build_image(client, spec, registry)
    assert err.value.step == "RUN echo about to fail && exit 3"
    assert "about to fail" in err.value.output
    assert "returned a non-zero code: 3" in str(err.value)
    made = {line.strip().removeprefix("---> ") for line in err.value.output}
    assert not [i for i in client.images.list(filters={"dangling": True}) if i.short_id[7:] in made]


def test_an_unknown_base_fails_early_naming_base(
    client: docker.DockerClient, registry: str, docker_labels: dict[str, str]
) -> None:
    spec = ImageSpec(
        name="juliarun/test-images-nobase",
        base=f"{registry}/juliarun/no-such-base:0",
        labels=docker_labels,
    )
    with pytest.raises(SpecError) as err:
        build_image(client, spec, registry)
    assert [field for field, _ in err.value.errors] == ["base"]
    assert "no-such-base" in str(err.value)
    assert not client.images.list(
        filters={"label": f"juliarun.io/test={docker_labels['juliarun.io/test']}"}
    )


def test_prewarm_pulls_onto_the_docker_engine_and_is_a_no_op_on_local(
    client: docker.DockerClient,
    registry: str,
    base_image: str,
    docker_labels: dict[str, str],
    juliarun_home: Path,
) -> None:
    from juliarun.backends.docker import DockerBackend
    from juliarun.backends.local import LocalBackend
    from juliarun.builders.prewarm import prewarm_image

    built = build_image(
        client,
        ImageSpec(
            name="juliarun/test-prewarm", base=base_image, run=["true"], labels=docker_labels
        ),
        registry,
    )
    client.images.remove(built.tag, force=True)  # only the registry has it now
    backend = DockerBackend(juliarun_home, labels=docker_labels)
    try:
        rows = prewarm_image(backend, built.tag)
        assert [(r.ready, r.detail) for r in rows] == [(True, f"pulled {built.tag}")]
        assert (
            client.images.get(built.tag).labels["juliarun.io/test"]
            == docker_labels["juliarun.io/test"]
        )
        assert prewarm_image(backend, built.tag)[0].detail == f"{built.tag} is present already"
        with pytest.raises(SpecError) as err:
            prewarm_image(backend, f"{registry}/juliarun/no-such-image:0")
        assert [field for field, _ in err.value.errors] == ["image"]
    finally:
        backend.close()
    assert prewarm_image(LocalBackend(juliarun_home), built.tag)[0].node == "local"
