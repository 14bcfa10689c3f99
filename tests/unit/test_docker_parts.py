"""The Docker backend's engine-free parts: names and scopes, registries and credentials, the
engine configuration a supervisor reconnects with, storage mounts, retries, the runtime
registry. (Everything that needs the engine is in tests/integration/test_docker_backend.py.)"""

from __future__ import annotations

import io
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import docker.errors
import pytest
import requests
from docker.types import Mount
from pydantic import SecretStr

from juliarun.backends.docker.backend import _missing_script
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
    FILL_AT,
    FILLED_AT,
    GIT_MARKER,
    GitVolume,
    docker_mount,
    host_path,
    mount_for,
    provision_git,
    tar_file,
)
from juliarun.backends.supervised.runtime import Exit, open_runtime
from juliarun.errors import BackendError, StorageError
from juliarun.specs import StorageSpec
from tests.unit.test_storage import Repo, code, commit, git


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


# -- git storage in a volume, on a fake engine ---------------------------------------------------


class FakeContainer:
    """A created helper: archives go to (and come from) the volume mounted at FILL_AT."""

    def __init__(self, engine: FakeEngine, labels: dict[str, str], mounts: list[Any]) -> None:
        self.engine = engine
        self.labels = labels
        [mount] = mounts
        assert (mount["Target"], mount["Type"], mount["VolumeOptions"]) == (
            FILL_AT,
            "volume",
            {"NoCopy": True},
        )
        self.volume: str = mount["Source"]
        assert self.volume in engine.volumes.made, "a helper mounts a volume made beforehand"

    def put_archive(self, path: str, data: bytes | IO[bytes]) -> bool:
        assert path == FILL_AT
        raw = data if isinstance(data, bytes) else data.read()
        files = self.engine.volumes.made[self.volume]["files"]
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for member in tar:
                body = tar.extractfile(member) if member.isfile() else None
                files[member.name] = (member, body.read() if body else b"")
        self.engine.calls.append(f"put {self.volume} {len(raw)}")
        return True

    def get_archive(self, path: str) -> tuple[list[bytes], dict[str, Any]]:
        name = path.removeprefix(FILL_AT + "/")
        files = self.engine.volumes.made[self.volume]["files"]
        if name not in files:
            raise docker.errors.NotFound(f"no {path}")
        return [tar_file(name.rsplit("/", 1)[-1], files[name][1])], {}

    def remove(self, force: bool = False) -> None:
        self.engine.containers.made.remove(self)


class FakeVolume:
    def __init__(self, engine: FakeEngine, name: str) -> None:
        self.engine, self.name = engine, name

    def remove(self) -> None:
        if any(c.volume == self.name for c in self.engine.containers.made):
            raise docker.errors.APIError("volume is in use", response=_status(409))
        del self.engine.volumes.made[self.name]
        self.engine.calls.append(f"rm {self.name}")


def _status(code: int) -> requests.Response:
    response = requests.Response()
    response.status_code = code
    return response


class FakeVolumes:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.made: dict[str, dict[str, Any]] = {}

    def get(self, name: str) -> FakeVolume:
        if name not in self.made:
            raise docker.errors.NotFound(f"no volume {name}")
        return FakeVolume(self.engine, name)

    def create(self, name: str, driver: str, labels: dict[str, str]) -> None:
        self.made[name] = {"labels": labels, "files": {}}
        self.engine.calls.append(f"create {name}")


class FakeContainers:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.made: list[FakeContainer] = []

    def create(self, image: str, **options: Any) -> FakeContainer:
        assert image == "job-image"
        assert options["command"] and options["network_disabled"]
        container = FakeContainer(self.engine, options["labels"], options["mounts"])
        self.made.append(container)
        return container

    def list(self, all: bool, filters: dict[str, Any]) -> list[FakeContainer]:
        assert all and "juliarun.io/helper=git-fill" in filters["label"]
        return [c for c in self.made if c.volume == filters["volume"]]


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.volumes = FakeVolumes(self)
        self.containers = FakeContainers(self)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def _provision(engine: FakeEngine, spec: StorageSpec, home: Path) -> GitVolume:
    return provision_git(
        engine,
        spec,
        home,
        scope="0123abcd",
        labels={"app.kubernetes.io/managed-by": "juliarun", "juliarun.io/scope": "0123abcd"},
        image="job-image",
        ensure_image=lambda: engine.calls.append("ensure"),
    )


def test_git_storage_is_copied_into_a_volume_of_its_commit_marker_last(
    engine: FakeEngine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    (repo.path / "run.sh").write_text("#!/bin/sh\n")
    (repo.path / "run.sh").chmod(0o700)
    (repo.path / "link").symlink_to("version.txt")
    git(repo.path, "add", "run.sh", "link")
    git(repo.path, "commit", "--quiet", "-m", "more")
    head = git(repo.path, "rev-parse", "HEAD")
    home = tmp_path / "home"

    volume = _provision(engine, code(repo), home)
    assert (volume.name, volume.commit) == (f"juliarun-0123abcd-git-code-{head[:12]}", head)
    made = engine.volumes.made[volume.name]
    filled_at = int(made["labels"].pop(FILLED_AT))  # orders fills for prune_git_volumes
    assert abs(filled_at / 1e9 - time.time()) < 60
    assert made["labels"] == {
        "app.kubernetes.io/managed-by": "juliarun",
        "juliarun.io/scope": "0123abcd",
        "juliarun.io/storage": "code",
        "juliarun.io/git-commit": head,
    }
    assert [c.split()[0] for c in engine.calls] == ["ensure", "create", "put", "put"]
    files = made["files"]
    assert list(files)[-1] == GIT_MARKER  # written last, in a put of its own
    assert files[GIT_MARKER][1] == f"{head}\n".encode()
    assert files["version.txt"][1] == b"two"
    assert ".git/HEAD" in files and "./" not in files  # .git too, so git works in the job
    modes = {name: (m.mode, m.uid, m.gid, m.uname) for name, (m, _) in files.items()}
    assert modes["run.sh"] == (0o755, 0, 0, "root")  # readable (and runnable) by any user
    assert modes["version.txt"] == (0o644, 0, 0, "root")
    assert modes[".git"] == (0o755, 0, 0, "root")
    assert files["link"][0].issym() and files["link"][0].linkname == "version.txt"
    assert engine.containers.made == []  # the helper is gone
    assert volume.has_file("run.sh") and not volume.has_file("missing.jl")
    assert not volume.has_file(".git")  # a tree, not a file


def test_a_complete_git_volume_is_reused_and_an_incomplete_one_refilled(
    engine: FakeEngine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    home = tmp_path / "home"
    first = _provision(engine, code(repo), home)
    engine.calls.clear()
    again, via_branch = (
        _provision(engine, code(repo), home),
        _provision(engine, code(repo, "main"), home),
    )
    assert again == first and via_branch.name == first.name  # one commit, one volume
    assert engine.calls == ["ensure", "ensure"]  # reused: nothing made or copied

    # A fill that crashed after part of the tree: no marker, and its helper left behind.
    files = engine.volumes.made[first.name]["files"]
    del files[GIT_MARKER]
    FakeContainers.create(engine.containers, "job-image", **_leftover(first.name))
    engine.calls.clear()
    assert _provision(engine, code(repo), home) == first
    assert [c.split()[0] for c in engine.calls] == ["ensure", "rm", "create", "put", "put"]
    assert GIT_MARKER in engine.volumes.made[first.name]["files"]
    assert engine.containers.made == []

    # A new commit on the ref: a new volume; the old one stays for the jobs that use it.
    second = commit(repo.path, "three", "third")
    newer = _provision(engine, code(repo), home)
    assert newer.commit == second and newer.name != first.name
    assert set(engine.volumes.made) == {first.name, newer.name}


def test_concurrent_provisions_of_one_commit_fill_its_volume_once(
    engine: FakeEngine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    home = tmp_path / "home"
    refs = [None, "main", None, "main"]  # two checkouts (and their locks) of one commit
    with ThreadPoolExecutor(len(refs)) as pool:
        volumes = list(pool.map(lambda ref: _provision(engine, code(repo, ref), home), refs))
    assert len({v.name for v in volumes}) == 1
    assert [c.split()[0] for c in engine.calls].count("create") == 1
    assert [c.split()[0] for c in engine.calls].count("put") == 2


def _leftover(volume: str) -> dict[str, Any]:
    return {
        "command": ["x"],
        "network_disabled": True,
        "labels": {"juliarun.io/helper": "git-fill"},
        "mounts": [Mount(FILL_AT, volume, type="volume", no_copy=True)],
    }


def test_a_missing_git_ref_fails_before_anything_is_made_on_the_engine(
    engine: FakeEngine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    with pytest.raises(StorageError, match="git ref 'no-such-branch' not found"):
        _provision(engine, code(repo, "no-such-branch"), tmp_path / "home")
    assert engine.calls == [] and engine.volumes.made == {}


def test_a_missing_script_is_found_in_the_host_path_or_the_git_commit(
    engine: FakeEngine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    tree = _provision(engine, code(repo), tmp_path / "home")
    host = StorageSpec(name="data", kind="host", path=str(tmp_path))
    mounts = [mount_for("data", host, str(tmp_path)), mount_for("src", code(repo), tree.name)]
    trees = {"src": tree}
    assert _missing_script("/mnt/src/version.txt", mounts, trees) is None
    assert _missing_script("/mnt/src/main.jl", mounts, trees) == (
        f"not in commit {tree.commit[:12]} of git storage 'src'"
    )
    assert _missing_script("/mnt/data/main.jl", mounts, trees) == (
        f"looked at {tmp_path / 'main.jl'}"
    )
    assert _missing_script("/opt/app/main.jl", mounts, trees) is None  # in the image, maybe


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
