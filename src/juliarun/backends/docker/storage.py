"""Storage on the Docker backend, mounted at ``/mnt/<name>`` in every worker container.

- ``host``: a bind mount of the directory (created on this machine if missing);
- ``ramdisk``: a tmpfs mount of the spec's size, one per container (like a Kubernetes
  ``emptyDir`` with ``medium: Memory``: workers do not share it);
- ``git``: the checkout made on this machine by the local backend's git code (same cache
  under ``JULIARUN_HOME/storage/git``, same locking and ref resolution), bind-mounted
  **read-only**. Chosen over cloning into a named volume because it reuses the tested
  clone/fetch/ref code, needs no git inside any image nor network from a helper container
  (a ``file://`` or private URL clones with this machine's access), and costs no copy; the
  read-only mount keeps workers from changing a checkout other jobs share. It needs what
  ``host`` storage needs too: the engine runs on this machine (its usual setup).
- ``volume``: a Docker named volume ``juliarun-<scope>-<name>`` (labelled as juliarun's, made
  once and kept across jobs), read-only when its access mode is ``ReadOnlyMany``. The local
  driver cannot enforce a size or a storage class: both are recorded as labels only, and a
  ``Block`` volume is refused.

Mounts are plain mappings (stored in the job's ``job.json``) that
:func:`docker_mount` turns into the SDK's ``Mount``:

>>> from juliarun.specs import StorageSpec
>>> mount_for("scratch", StorageSpec(name="scratch", kind="ramdisk", size="64Mi"), "")
{'type': 'tmpfs', 'target': '/mnt/scratch', 'source': None, 'read_only': False,
 'tmpfs_size': 67108864}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docker.types import Mount

from juliarun.backends.local import storage as local_storage
from juliarun.errors import StorageError
from juliarun.specs import StorageSpec, parse_memory

MNT = "/mnt"


def provision(spec: StorageSpec, home: Path) -> str:
    """Create what ``spec`` needs on this machine (idempotent); returns where it lives
    (``volume`` storage is the engine's: see :func:`provision_volume`)."""
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


def mount_for(name: str, spec: StorageSpec, source: str) -> dict[str, Any]:
    """The mount of ``spec`` at ``/mnt/<name>``; ``source`` is what :func:`provision` gave."""
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
    if spec.kind == "volume":
        return {
            "type": "volume",
            "target": target,
            "source": source,
            "read_only": spec.access_mode == "ReadOnlyMany",
            "tmpfs_size": None,
        }
    return {
        "type": "bind",
        "target": target,
        "source": source,
        "read_only": spec.kind == "git",
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
