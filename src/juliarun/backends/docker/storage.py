"""Storage on the Docker backend, mounted at ``/mnt/<name>`` in every worker container.

- ``host``: a bind mount of the directory (created on this machine if missing);
- ``ramdisk``: a tmpfs mount of the spec's size, one per container (like a Kubernetes
  ``emptyDir`` with ``medium: Memory``: workers do not share it);
- ``git``: a Docker named volume holding the repository at the commit its ref resolves to,
  ``juliarun-<scope>-git-<name>-<commit[:12]>``, mounted **read-only** (see below);
- ``volume``: a Docker named volume ``juliarun-<scope>-<name>`` (labelled as juliarun's, made
  once and kept across jobs), read-only when its access mode is ``ReadOnlyMany``. The local
  driver cannot enforce a size or a storage class: both are recorded as labels only, and a
  ``Block`` volume is refused.

**git storage** (:func:`provision_git`). The repository is cloned or fetched on this machine
by the local backend's git code (same cache under ``JULIARUN_HOME/storage/git``, same lock,
same ref resolution): a bad url or a missing ref fails with :class:`StorageError` before
anything exists on the engine, a ``file://`` or private URL clones with this machine's access,
and no image needs git or network. The working tree *and* ``.git`` (so ``git log`` and
``git describe`` work in a job; the ``origin`` remote names this machine's url) are then copied
into the named volume through the engine API alone: a helper container that mounts the volume
is created (never started), a tar of the checkout is ``put_archive``'d into it, and the helper
is removed. Nothing is bind-mounted from this machine, so it works the same when the engine is
elsewhere (``DOCKER_HOST=tcp://...``), unlike the bind mount of the checkout it replaces. Every
entry is stored as ``root:root``, directories and executables ``0755``, other files ``0644``:
readable by whatever user a job's image runs as.

The helper's image is the **image the job runs** (``_plan`` passes it; the job's own check has
just made sure the engine has it, pulling it if needed): it adds no image of juliarun's own to
pull or mirror, and being never started it needs no shell or tool. ``provision_storage`` alone
(e.g. the ``run_job`` flow provisioning before it submits) uses the backend's default image.

Each commit gets its own volume, labelled with the scope, cluster, ``juliarun.io/storage`` and
``juliarun.io/git-commit``, and is **reused only when complete**: the last thing a fill writes
is the marker ``.git/juliarun-complete`` (inside ``.git``, so out of the working tree and of
``git status``) holding the commit, read back with ``get_archive`` on a created helper. A
volume without it (a fill that crashed or was interrupted) is removed, with any helper left
behind, and filled again. The checkout's lock is held from the fetch to the end of the fill
(the tree cannot move meanwhile) and a lock per volume name serializes fills of one commit
reached through two refs, so concurrent submits on this machine never see a half-filled volume.
A moved ref gives a new volume; the volumes of older commits are kept while jobs may still
mount them. :func:`prune_git_volumes` (the ``prune_storage`` flow, daily as the
``prune-storage`` deployment) removes those a newer fill of the same storage has replaced and
that no container uses (the engine refuses to remove a volume any container, running or
exited, refers to).

Mounts are plain mappings (stored in the job's ``job.json``) that
:func:`docker_mount` turns into the SDK's ``Mount``:

>>> from juliarun.specs import StorageSpec
>>> mount_for("scratch", StorageSpec(name="scratch", kind="ramdisk", size="64Mi"), "")
{'type': 'tmpfs', 'target': '/mnt/scratch', 'source': None, 'read_only': False,
 'tmpfs_size': 67108864}
>>> git_volume_name("0123abcd", "code", "4b825dc642cb6eb9a060e54bf8d69288fbee4904")
'juliarun-0123abcd-git-code-4b825dc642cb'
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from docker.types import Mount

from juliarun.backends.docker.engine import MANAGED_BY
from juliarun.backends.local import storage as local_storage
from juliarun.errors import StorageError
from juliarun.specs import StorageSpec, parse_memory

MNT = "/mnt"
STORAGE = "juliarun.io/storage"
GIT_COMMIT = "juliarun.io/git-commit"
FILLED_AT = "juliarun.io/filled-at"  # nanoseconds since the epoch (CreatedAt has seconds)
HELPER = "juliarun.io/helper"
# Where a helper container mounts the volume it fills (a path no image has: nothing is copied
# up into the volume from the image, and no_copy says so too), and the marker of a full fill.
FILL_AT = "/juliarun-fill"
GIT_MARKER = ".git/juliarun-complete"


def provision(spec: StorageSpec, home: Path) -> str:
    """Create what ``spec`` needs on this machine (idempotent); returns where it lives
    (``volume`` and ``git`` storage are the engine's: see :func:`provision_volume` and
    :func:`provision_git`)."""
    if spec.kind == "ramdisk":
        return f"tmpfs ({spec.size or 'no size limit'}) in each container"
    return str(local_storage.provision(spec, home))


def provision_volume(client: Any, spec: StorageSpec, volume: str, labels: dict[str, str]) -> str:
    """The named volume ``volume`` of ``spec`` on the engine, created with ``labels`` unless it
    exists (idempotent); returns its name."""
    import docker.errors

    if spec.volume_mode == "Block":
        raise StorageError(
            f"storage {spec.name!r}: volume_mode 'Block' needs a Kubernetes cluster",
            hint="use volume_mode 'Filesystem' on Docker",
        )
    try:
        client.volumes.get(volume)
        return volume
    except docker.errors.NotFound:
        pass
    recorded = {
        "juliarun.io/storage": spec.name,
        "juliarun.io/size": spec.size or "",
        "juliarun.io/storage-class": spec.storage_class or "",
        "juliarun.io/access-mode": spec.access_mode or "",
    }
    try:
        client.volumes.create(name=volume, driver="local", labels={**labels, **recorded})
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise StorageError(
                f"storage {spec.name!r}: cannot create Docker volume {volume}: {exc}"
            ) from exc
    return volume


@dataclass(frozen=True)
class GitVolume:
    """The named volume holding git storage at one commit, and the checkout it came from."""

    name: str
    commit: str
    checkout: Path

    def has_file(self, path: str) -> bool:
        """Whether ``path`` (relative to the repository's root) is a file at the commit."""
        proc = subprocess.run(
            ["git", "cat-file", "-t", f"{self.commit}:{path}"],
            cwd=self.checkout,
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.returncode == 0 and proc.stdout.strip() == "blob"


def git_volume_name(scope: str, storage: str, commit: str) -> str:
    return f"juliarun-{scope}-git-{storage}-{commit[:12]}"


def provision_git(
    client: Any,
    spec: StorageSpec,
    home: Path,
    *,
    scope: str,
    labels: dict[str, str],
    image: str,
    ensure_image: Callable[[], None],
) -> GitVolume:
    """The volume holding ``spec`` at the commit its ref resolves to now, filled from this
    machine's checkout through a helper container of ``image`` unless a complete one exists
    (idempotent). ``ensure_image`` makes sure the engine has ``image``; it is called after the
    ref resolved, before anything is created on the engine. ``labels`` go on the volume and the
    helper."""
    import docker.errors

    with local_storage.git_checkout(spec, home) as (checkout, commit):
        volume = GitVolume(git_volume_name(scope, spec.name, commit), commit, checkout)
        # The checkout's lock is held (its tree stays at commit); this one keeps out a fill of
        # the same commit reached through another ref.
        lock = home / "storage" / "docker" / f"{volume.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with local_storage.locked(lock):
            ensure_image()
            try:
                if not _complete(client, volume.name, commit, image, labels):
                    _fill(client, spec, volume, image=image, labels=labels)
            except docker.errors.APIError as exc:
                raise StorageError(
                    f"storage {spec.name!r}: cannot fill Docker volume {volume.name}: "
                    f"{getattr(exc, 'explanation', None) or exc}",
                    hint="check the Docker engine (docker info), then submit again",
                ) from exc
    return volume


def _complete(client: Any, volume: str, commit: str, image: str, labels: dict[str, str]) -> bool:
    """Whether ``volume`` holds a full fill of ``commit``; an incomplete one is removed."""
    import docker.errors

    try:
        client.volumes.get(volume)
    except docker.errors.NotFound:
        return False
    with _helper(client, volume, image, labels) as helper:
        marker = _read_file(helper, f"{FILL_AT}/{GIT_MARKER}")
    if marker == commit:
        return True
    # A fill that never finished: helpers it left behind hold the volume, remove them first.
    leftovers = client.containers.list(
        all=True,
        filters={"volume": volume, "label": [f"{MANAGED_BY}=juliarun", f"{HELPER}=git-fill"]},
    )
    for container in leftovers:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    try:
        client.volumes.get(volume).remove()
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        raise StorageError(
            f"Docker volume {volume} is incomplete (a fill was interrupted) and cannot be "
            f"removed: {getattr(exc, 'explanation', None) or exc}",
            hint=f"remove the containers that use it, then the volume: docker volume rm {volume}",
        ) from exc
    return False


def _fill(
    client: Any, spec: StorageSpec, volume: GitVolume, *, image: str, labels: dict[str, str]
) -> None:
    """Create ``volume`` and copy its checkout in, the marker last."""
    import docker.errors

    recorded = {STORAGE: spec.name, GIT_COMMIT: volume.commit, FILLED_AT: str(time.time_ns())}
    try:
        client.volumes.create(name=volume.name, driver="local", labels={**labels, **recorded})
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
    with _helper(client, volume.name, image, labels) as helper, tempfile.TemporaryFile() as tar:
        tar_tree(volume.checkout, tar)
        tar.seek(0)
        helper.put_archive(FILL_AT, tar)
        helper.put_archive(FILL_AT, tar_file(GIT_MARKER, f"{volume.commit}\n".encode()))


def prune_git_volumes(client: Any, scope: str) -> list[str]:
    """Remove the git volumes of ``scope`` that a newer fill of the same storage replaced and
    that no container uses; returns their names. The newest volume of each storage stays."""
    import docker.errors

    from juliarun.backends.docker.engine import SCOPE

    volumes = client.volumes.list(
        filters={"label": [f"{MANAGED_BY}=juliarun", f"{SCOPE}={scope}", GIT_COMMIT]}
    )
    by_storage: dict[str, list[Any]] = {}
    for volume in volumes:
        labels = volume.attrs.get("Labels") or {}
        by_storage.setdefault(labels.get(STORAGE, ""), []).append(volume)
    removed = []
    for group in by_storage.values():
        group.sort(key=_filled_at, reverse=True)
        for volume in group[1:]:
            try:
                volume.remove()
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # a container (running or exited) refers to it
                    continue
                raise StorageError(
                    f"cannot remove Docker volume {volume.name}: "
                    f"{getattr(exc, 'explanation', None) or exc}",
                    hint="check the Docker engine (docker info)",
                ) from exc
            removed.append(volume.name)
    return sorted(removed)


def _filled_at(volume: Any) -> tuple[int, str]:
    labels = volume.attrs.get("Labels") or {}
    try:
        stamp = int(labels.get(FILLED_AT) or 0)
    except ValueError:
        stamp = 0
    return stamp, str(volume.attrs.get("CreatedAt") or "")


@contextlib.contextmanager
def _helper(client: Any, volume: str, image: str, labels: dict[str, str]) -> Iterator[Any]:
    """A created (never started) container of ``image`` with ``volume`` at ``FILL_AT``."""
    import docker.errors

    container = client.containers.create(
        image,
        # Never run; given so that an image with neither CMD nor ENTRYPOINT is accepted.
        command=["/juliarun-helper-never-started"],
        labels={**labels, HELPER: "git-fill"},
        mounts=[Mount(FILL_AT, volume, type="volume", no_copy=True)],
        network_disabled=True,
    )
    try:
        yield container
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def _read_file(container: Any, path: str) -> str | None:
    """The text of the file ``path`` in ``container`` (``None``: there is none)."""
    import docker.errors

    try:
        chunks, _stat = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.next()
        data = tar.extractfile(member) if member is not None and member.isfile() else None
        return data.read().decode(errors="replace").strip() if data is not None else None


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """An entry owned by root and readable by all: ``0755`` for directories and executables,
    ``0644`` for other files (git's read-only object files included)."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if info.isdir() or (info.isfile() and info.mode & 0o111):
        info.mode = 0o755
    elif info.isfile():
        info.mode = 0o644
    return info


def tar_tree(root: Path, out: IO[bytes]) -> None:
    """Write a tar of everything under ``root`` (``.git`` too; symlinks as links) to ``out``,
    its entries relative to ``root`` and normalized (see :func:`_normalized`)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name, filter=_normalized)


def tar_file(name: str, data: bytes) -> bytes:
    """A tar holding one file ``name`` (root's, ``0644``, modified now) with ``data``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = _normalized(tarfile.TarInfo(name))
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def mount_for(name: str, spec: StorageSpec, source: str) -> dict[str, Any]:
    """The mount of ``spec`` at ``/mnt/<name>``; ``source`` is what :func:`provision` gave
    (the volume's name for ``volume`` and ``git`` storage)."""
    target = f"{MNT}/{name}"
    if spec.kind == "ramdisk":
        size = parse_memory(spec.size) if spec.size else None
        return {
            "type": "tmpfs",
            "target": target,
            "source": None,
            "read_only": False,
            "tmpfs_size": size,
        }
    if spec.kind in ("volume", "git"):  # git: the volume of provision_git, never written
        return {
            "type": "volume",
            "target": target,
            "source": source,
            "read_only": spec.kind == "git" or spec.access_mode == "ReadOnlyMany",
            "tmpfs_size": None,
        }
    return {
        "type": "bind",
        "target": target,
        "source": source,
        "read_only": False,
        "tmpfs_size": None,
    }


def host_path(path: str, mounts: list[dict[str, Any]]) -> Path | None:
    """Where a container path lies on this machine, when a bind mount holds it."""
    for mount in mounts:
        target = mount["target"]
        if mount["type"] == "bind" and (path == target or path.startswith(target + "/")):
            return Path(mount["source"] + path[len(target) :])
    return None


def docker_mount(mount: dict[str, Any]) -> Mount:
    return Mount(
        target=mount["target"],
        source=mount["source"],
        type=mount["type"],
        read_only=mount["read_only"],
        tmpfs_size=mount.get("tmpfs_size"),
    )
