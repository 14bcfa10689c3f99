"""git storage in Docker volumes (``provision_git``) on the real engine: what is in the volume
is read back through a container (``stat``, ``readlink``, ``find``), and what the engine did is
counted from its own event stream (volume ``create``/``destroy``, helper container ``create``,
``extract-to-dir`` for every ``put_archive``), filtered by the test's own label."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.types import Mount

from juliarun.backends.docker.backend import _missing_script
from juliarun.backends.docker.storage import (
    FILL_AT,
    FILLED_AT,
    GIT_MARKER,
    GitVolume,
    mount_for,
    provision_git,
)
from juliarun.errors import StorageError
from juliarun.specs import StorageSpec
from tests.integration.fixtures.docker import TEST_LABEL
from tests.unit.test_storage import Repo, code, commit, git

pytestmark = pytest.mark.docker

HELPER = "juliarun.io/helper=git-fill"


class Engine:
    """The real engine, a scope unique to the test, and what ``provision_git`` asked of it."""

    def __init__(self, client: docker.DockerClient, labels: dict[str, str], image: str) -> None:
        self.client, self.image = client, image
        self.test_id = labels[TEST_LABEL]
        self.scope = self.test_id[:8]
        self.labels = {**labels, "juliarun.io/scope": self.scope}
        self.ensured = 0

    def provision(self, spec: StorageSpec, home: Path) -> GitVolume:
        def ensure() -> None:
            self.ensured += 1

        return provision_git(
            self.client,
            spec,
            home,
            scope=self.scope,
            labels=self.labels,
            image=self.image,
            ensure_image=ensure,
        )

    def events(self, since: float) -> Counter[str]:
        """What the engine did to this test's containers and volumes since ``since``: counts of
        ``helper create`` (a git-fill helper), ``put`` (an archive extracted into a helper),
        ``container create`` (any other), ``container destroy``, ``volume destroy``."""
        until = time.time() + 0.5  # the engine streams until then, then the call returns
        seen: Counter[str] = Counter()
        mine = f"{TEST_LABEL}={self.test_id}"
        # Volume events carry no labels: this test's volumes are those named with its scope.
        # Only destroy counts: the engine also reports a volume "create" for every container
        # that mounts an existing volume, so a made volume shows in its labels and CreatedAt.
        for kind, filters in (("volume", {}), ("container", {"label": [mine]})):
            for event in self.client.events(
                since=f"{since:.9f}",
                until=f"{until:.9f}",
                filters={"type": kind, **filters},
                decode=True,
            ):
                actor = event.get("Actor", {})
                attributes, action = actor.get("Attributes", {}), event["Action"]
                if kind == "volume":
                    named = actor.get("ID", "").startswith(f"juliarun-{self.scope}-")
                    if named and action == "destroy":
                        seen["volume destroy"] += 1
                elif action == "create":
                    helper = attributes.get("juliarun.io/helper") == "git-fill"
                    seen["helper create" if helper else "container create"] += 1
                elif action == "extract-to-dir":
                    seen["put"] += 1
                elif action == "destroy":
                    seen["container destroy"] += 1
        return seen

    def helpers(self) -> list[Any]:
        return self.client.containers.list(
            all=True, filters={"label": [HELPER, f"{TEST_LABEL}={self.test_id}"]}
        )

    def sh(self, volume: str, script: str, *, read_only: bool = True) -> str:
        """Run ``script`` in a container of the image with ``volume`` at /v; its output."""
        container = self.client.containers.create(
            self.image,
            command=["sh", "-c", script],
            labels=self.labels,
            mounts=[Mount("/v", volume, type="volume", read_only=read_only)],
            network_disabled=True,
        )
        try:
            container.start()
            status = container.wait(timeout=60)
            out: bytes = container.logs(stdout=True, stderr=True)
            assert status["StatusCode"] == 0, out.decode()
            return out.decode()
        finally:
            container.remove(force=True)


@pytest.fixture
def engine(
    docker_client: docker.DockerClient, docker_labels: dict[str, str], base_image: str
) -> Engine:
    return Engine(docker_client, docker_labels, base_image)


def _ctimes(engine: Engine, volume: str) -> dict[str, float]:
    """Every entry's inode change time in the volume (what was written when)."""
    out = engine.sh(volume, "cd /v && find . -mindepth 1 -printf '%C@ %P\\n'")
    return {name: float(stamp) for stamp, name in (ln.split(" ", 1) for ln in out.splitlines())}


def test_git_storage_is_copied_into_a_volume_of_its_commit_marker_last(
    engine: Engine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    (repo.path / "run.sh").write_text("#!/bin/sh\n")
    (repo.path / "run.sh").chmod(0o700)
    (repo.path / "link").symlink_to("version.txt")
    git(repo.path, "add", "run.sh", "link")
    git(repo.path, "commit", "--quiet", "-m", "more")
    head = git(repo.path, "rev-parse", "HEAD")
    home = tmp_path / "home"

    since = time.time()
    volume = engine.provision(code(repo), home)
    seen = engine.events(since)
    assert (volume.name, volume.commit) == (f"juliarun-{engine.scope}-git-code-{head[:12]}", head)
    # One helper (there was no volume to check), the tree then the marker.
    assert seen == Counter({"helper create": 1, "put": 2, "container destroy": 1})
    assert engine.ensured == 1
    assert engine.helpers() == []  # the helper is gone

    labels = dict(engine.client.volumes.get(volume.name).attrs["Labels"])
    filled_at = int(labels.pop(FILLED_AT))  # orders fills for prune_git_volumes
    assert abs(filled_at / 1e9 - time.time()) < 60
    assert labels == {
        **engine.labels,
        "juliarun.io/storage": "code",
        "juliarun.io/git-commit": head,
    }

    # What a job sees: the tree and .git, root's, readable by all, the link kept as a link.
    listing = engine.sh(volume.name, "cd /v && ls -A")
    assert listing.split() == [".git", "link", "run.sh", "version.txt"]
    stats = engine.sh(
        volume.name, "cd /v && stat -c '%n %a %u %g %F' run.sh version.txt .git link .git/HEAD"
    )
    assert stats.splitlines() == [
        "run.sh 755 0 0 regular file",  # executable: runnable by any user
        "version.txt 644 0 0 regular file",
        ".git 755 0 0 directory",
        "link 777 0 0 symbolic link",
        ".git/HEAD 644 0 0 regular file",
    ]
    assert engine.sh(volume.name, "readlink /v/link; cat /v/link") == "version.txt\ntwo"
    assert engine.sh(volume.name, f"cat /v/{GIT_MARKER}") == f"{head}\n"
    # git's read-only object files are readable by others too.
    objects = engine.sh(volume.name, "find /v/.git/objects -type f -printf '%m\\n' | sort -u")
    assert objects.split() == ["644"]

    # The marker was written last: after every other entry of the volume (but .git, whose
    # ctime its new entry, the marker, moved: not before the tree's).
    ctimes = _ctimes(engine, volume.name)
    marker, parent = ctimes.pop(GIT_MARKER), ctimes.pop(".git")
    assert len(ctimes) > 10  # the tree and .git's objects
    assert marker > max(ctimes.values())
    assert max(ctimes.values()) < parent <= marker

    assert volume.has_file("run.sh") and not volume.has_file("missing.jl")
    assert not volume.has_file(".git")  # a tree, not a file


def test_a_complete_git_volume_is_reused_and_an_incomplete_one_refilled(
    engine: Engine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    home = tmp_path / "home"
    first = engine.provision(code(repo), home)
    made = engine.client.volumes.get(first.name).attrs

    since = time.time()
    again, via_branch = (
        engine.provision(code(repo), home),
        engine.provision(code(repo, "main"), home),
    )
    assert again == first and via_branch.name == first.name  # one commit, one volume
    # Reused: a helper each to read the marker, nothing made or copied.
    assert engine.events(since) == Counter({"helper create": 2, "container destroy": 2})
    assert engine.client.volumes.get(first.name).attrs == made  # the same volume, untouched
    assert engine.ensured == 3

    # A fill that crashed after part of the tree: no marker, a file missing, and its helper
    # left behind (created, never started, holding the volume).
    engine.sh(first.name, f"rm /v/{GIT_MARKER} /v/version.txt", read_only=False)
    leftover = engine.client.containers.create(
        engine.image,
        command=["/juliarun-helper-never-started"],
        labels={**engine.labels, "juliarun.io/helper": "git-fill"},
        mounts=[Mount(FILL_AT, first.name, type="volume", no_copy=True)],
        network_disabled=True,
    )
    since = time.time()
    assert engine.provision(code(repo), home) == first
    seen = engine.events(since)
    with pytest.raises(docker.errors.NotFound):
        leftover.reload()
    # The check's helper, the leftover and the old volume removed; one fresh fill.
    assert seen == Counter(
        {
            "helper create": 2,  # the check, the fill
            "container destroy": 3,  # the check, the leftover, the fill
            "volume destroy": 1,
            "put": 2,
        }
    )
    assert engine.helpers() == []
    assert engine.sh(first.name, f"cat /v/{GIT_MARKER} /v/version.txt") == f"{first.commit}\ntwo"
    refilled = engine.client.volumes.get(first.name).attrs
    assert int(refilled["Labels"][FILLED_AT]) > int(made["Labels"][FILLED_AT])  # made again

    # A new commit on the ref: a new volume; the old one stays for the jobs that use it.
    second = commit(repo.path, "three", "third")
    newer = engine.provision(code(repo), home)
    assert newer.commit == second and newer.name != first.name
    volumes = engine.client.volumes.list(filters={"label": f"{TEST_LABEL}={engine.test_id}"})
    assert {v.name for v in volumes} == {first.name, newer.name}
    assert engine.sh(newer.name, "cat /v/version.txt") == "three"
    assert engine.sh(first.name, "cat /v/version.txt") == "two"


def test_concurrent_provisions_of_one_commit_fill_its_volume_once(
    engine: Engine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    home = tmp_path / "home"
    refs = [None, "main", None, "main"]  # two checkouts (and their locks) of one commit
    since = time.time()
    with ThreadPoolExecutor(len(refs)) as pool:
        volumes = list(pool.map(lambda ref: engine.provision(code(repo, ref), home), refs))
    assert len({v.name for v in volumes}) == 1
    # One fill (a helper, two archives); the three others each found it complete with a
    # helper of their own (none saw it half filled, none removed it).
    assert engine.events(since) == Counter({"helper create": 4, "put": 2, "container destroy": 4})
    made = engine.client.volumes.list(filters={"label": f"{TEST_LABEL}={engine.test_id}"})
    assert [v.name for v in made] == [volumes[0].name]
    assert engine.sh(volumes[0].name, f"cat /v/{GIT_MARKER}") == f"{repo.second}\n"


def test_a_missing_git_ref_fails_before_anything_is_made_on_the_engine(
    engine: Engine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    since = time.time()
    with pytest.raises(StorageError, match="git ref 'no-such-branch' not found"):
        engine.provision(code(repo, "no-such-branch"), tmp_path / "home")
    assert engine.events(since) == Counter()
    assert engine.ensured == 0
    assert engine.client.volumes.list(filters={"label": f"{TEST_LABEL}={engine.test_id}"}) == []


def test_a_missing_script_is_found_in_the_host_path_or_the_git_commit(
    engine: Engine, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "upstream")
    tree = engine.provision(code(repo), tmp_path / "home")
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
