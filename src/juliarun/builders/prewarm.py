"""Pre-warm nodes: put an image on every node that will run it before jobs need it.

Each backend does it its own way (:meth:`~juliarun.backends.base.Backend.prewarm`):

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

from juliarun.backends.base import Backend, NodeReadiness

__all__ = ["NodeReadiness", "prewarm_image"]


def prewarm_image(
    backend: Backend, image: str, *, node_type: str | None = None, timeout: float = 300.0
) -> list[NodeReadiness]:
    """Make ``image`` present on the cluster's nodes (of ``node_type`` when given); one
    readiness row per node. Raises :class:`SpecError` naming ``image`` when it cannot be
    pulled (Docker), :class:`BackendError` naming the nodes without it after ``timeout``
    seconds (Kubernetes)."""
    return backend.prewarm(image, node_type=node_type, timeout=timeout)
