"""The Docker backend's engine-free parts: names and scopes, registries and credentials, the
engine configuration a supervisor reconnects with, storage mounts, retries, the runtime
registry. (Everything that needs the engine is in tests/integration/test_docker_backend.py;
git storage in volumes in tests/integration/test_docker_git_volumes.py.)"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr

from juliarun.backends.docker.engine import (
    EngineConfig,
    Names,
    RegistryAuth,
    gpu_runtimes,
    image_registry,
    retry,
    scope,
)
from juliarun.backends.docker.storage import (
    docker_mount,
    host_path,
    mount_for,
    tar_file,
)
from juliarun.backends.supervised.runtime import Exit, open_runtime
from juliarun.errors import BackendError
from juliarun.specs import StorageSpec


def test_scopes_keep_homes_and_clusters_apart() -> None:
    assert scope("/a", "docker") == scope("/a", "docker")
    assert len({scope("/a", "docker"), scope("/b", "docker"), scope("/a", "other")}) == 3
    names = Names("0123abcd")
    assert names.container("job-2") == "juliarun-0123abcd-job-2"
    assert names.job_selector("job") == {
        "label": [
            "app.kubernetes.io/managed-by=juliarun",
            "juliarun.io/scope=0123abcd",
            "juliarun.io/job=job",
        ]
    }


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("julia:1.10", "docker.io"),
        ("library/julia", "docker.io"),
        ("someone/julia:1", "docker.io"),
        ("localhost/julia", "localhost"),
        ("localhost:5000/juliarun/julia:1.5.3", "localhost:5000"),
        ("ghcr.io/org/img@sha256:abc", "ghcr.io"),
    ],
)
def test_the_registry_an_image_pulls_from(image: str, registry: str) -> None:
    assert image_registry(image) == registry


def test_registry_credentials_apply_to_their_registry_only() -> None:
    auth = RegistryAuth("https://localhost:5000/", "me", SecretStr("s3cret"))
    assert auth.applies_to("localhost:5000/juliarun/julia:1.5.3")
    assert not auth.applies_to("julia:1.10")
    assert "s3cret" not in repr(auth)
    assert auth.auth_config() == {"username": "me", "password": "s3cret"}
    hub = RegistryAuth("index.docker.io", "me", SecretStr("x"))
    assert hub.applies_to("julia:1.10") and not hub.applies_to("ghcr.io/a/b")


def test_the_engine_config_a_supervisor_reconnects_with(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EngineConfig("tcp://127.0.0.1:2375", "1.41", 30)
    assert EngineConfig.from_json(config.to_json()) == config
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other.sock")
    unset = EngineConfig()
    assert unset.endpoint == "unix:///run/other.sock"
    assert unset.to_json()["base_url"] is None  # the supervisor inherits DOCKER_HOST
    monkeypatch.delenv("DOCKER_HOST")
    assert EngineConfig().endpoint == "unix:///var/run/docker.sock"


def test_gpu_runtimes_come_from_docker_info() -> None:
    assert gpu_runtimes({"Runtimes": {"runc": {}, "io.containerd.runc.v2": {}}}) == []
    assert gpu_runtimes({"Runtimes": {"runc": {}, "nvidia": {}}}) == ["nvidia"]
    assert gpu_runtimes({}) == []


def test_storage_mounts(tmp_path: Path) -> None:
    code = StorageSpec(name="code", kind="host", path=str(tmp_path))
    repo = StorageSpec(name="repo", kind="git", url="file:///srv/repo")
    ram = StorageSpec(name="scratch", kind="ramdisk")
    volume = "juliarun-0123abcd-git-repo-4b825dc642cb"
    mounts = [
        mount_for("code", code, str(tmp_path)),
        mount_for("src", repo, volume),  # mounted under the name used
        mount_for("scratch", ram, ""),
    ]
    assert [(m["type"], m["target"], m["read_only"]) for m in mounts] == [
        ("bind", "/mnt/code", False),
        ("volume", "/mnt/src", True),  # git: its commit's volume, never written by jobs
        ("tmpfs", "/mnt/scratch", False),
    ]
    assert mounts[2]["tmpfs_size"] is None  # no size: the engine's default
    assert host_path("/mnt/code/a/b.jl", mounts) == tmp_path / "a" / "b.jl"
    assert host_path("/mnt/codex/b.jl", mounts) is None
    assert host_path("/mnt/scratch/b.jl", mounts) is None  # tmpfs: nothing on this machine
    assert host_path("/mnt/src/b.jl", mounts) is None  # a volume: on the engine
    sdk = docker_mount(mounts[1])
    assert (sdk["Type"], sdk["Target"], sdk["Source"], sdk["ReadOnly"]) == (
        "volume",
        "/mnt/src",
        volume,
        True,
    )


def test_tar_file_holds_one_root_owned_file() -> None:
    with tarfile.open(fileobj=io.BytesIO(tar_file(".git/x", b"abc"))) as tar:
        [member] = tar.getmembers()
        body = tar.extractfile(member)
        assert body is not None and body.read() == b"abc"
    assert (member.name, member.mode, member.uid, member.size) == (".git/x", 0o644, 0, 3)


def test_retry_tries_again_only_after_transient_failures() -> None:
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("engine restarting")
        return "ok"

    assert retry(flaky, sleep=slept.append) == "ok"
    assert slept == [0.5, 1.0]

    def refused() -> str:
        calls.append(1)
        raise ValueError("bad request")

    calls.clear()
    with pytest.raises(ValueError, match="bad request"):
        retry(refused, sleep=slept.append)
    assert len(calls) == 1


def test_an_unknown_worker_runtime_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="unknown worker runtime 'vm'") as err:
        open_runtime({"runtime": {"kind": "vm"}})
    assert "resubmit" in err.value.hint


def test_exit_reasons() -> None:
    assert Exit.of_code(0).reason == "exit code 0"
    assert Exit.of_code(-15) == Exit(-15, "killed by signal 15")
