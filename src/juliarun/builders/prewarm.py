"""Pre-warm nodes: put an image on every node that will run it before jobs need it.

One function per backend kind:

- ``kubernetes``: a labelled DaemonSet (nodeSelector and tolerations of the node type) whose
  pods pull the image and sleep; per-node readiness, removed when done or on timeout (see
  :mod:`juliarun.backends.kubernetes.prewarm`; kwok nodes report Ready without pulling);
- ``docker``: the engine's one node pulls the image (with the backend's registry credentials);
- ``local``: nothing to pull (jobs are processes), reported as such.

>>> from pathlib import Path
>>> from juliarun.backends.local import LocalBackend
>>> prewarm_image(LocalBackend(Path("/tmp/juliarun-doctest")), "julia:1.5")
[NodeReadiness(node='local', ready=True, detail='local jobs run as processes: no image to pull')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from juliarun.backends.base import Backend
from juliarun.errors import BackendError


@dataclass(frozen=True)
class NodeReadiness:
    """Whether one node has the image now."""

    node: str
    ready: bool
    detail: str


def _local(
    backend: Backend, image: str, node_type: str | None, timeout: float
) -> list[NodeReadiness]:
    return [NodeReadiness("local", True, "local jobs run as processes: no image to pull")]


def _docker(
    backend: Backend, image: str, node_type: str | None, timeout: float
) -> list[NodeReadiness]:
    import docker.errors

    from juliarun.backends.docker.engine import ensure_image

    client: Any = getattr(backend, "client")  # noqa: B009 - DockerBackend's engine client
    node = str(client.info().get("Name", "docker"))
    try:
        client.images.get(image)
        return [NodeReadiness(node, True, f"{image} is present already")]
    except docker.errors.ImageNotFound:
        pass
    ensure_image(
        client, image, kind="prewarm", auth=getattr(backend, "registry_auth", None), default=False
    )
    return [NodeReadiness(node, True, f"pulled {image}")]


def _kubernetes(
    backend: Backend, image: str, node_type: str | None, timeout: float
) -> list[NodeReadiness]:
    from juliarun.backends.kubernetes.backend import KubernetesBackend
    from juliarun.backends.kubernetes.prewarm import prewarm

    assert isinstance(backend, KubernetesBackend)
    rows = prewarm(backend, image, node_type, timeout=timeout)
    return [NodeReadiness(r.node, r.ready, r.detail) for r in rows]


PREWARMERS: dict[str, Callable[[Backend, str, str | None, float], list[NodeReadiness]]] = {
    "local": _local,
    "docker": _docker,
    "kubernetes": _kubernetes,
}


def prewarm_image(
    backend: Backend, image: str, *, node_type: str | None = None, timeout: float = 300.0
) -> list[NodeReadiness]:
    """Make ``image`` present on the cluster's nodes (of ``node_type`` when given); one
    readiness row per node. Raises :class:`SpecError` naming ``image`` when it cannot be
    pulled (Docker), :class:`BackendError` naming the nodes without it after ``timeout``
    seconds (Kubernetes)."""
    prewarmer = PREWARMERS.get(backend.kind)
    if prewarmer is None:
        raise BackendError(
            f"pre-warming images is not implemented for {backend.kind} clusters yet",
            hint=f"supported: {', '.join(sorted(PREWARMERS))}",
        )
    return prewarmer(backend, image, node_type, timeout)
