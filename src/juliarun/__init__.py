"""juliarun: run Julia workloads at scale from Python.

The seed's session API (``init``, ``status``, ``submit``, ``list``, ``tail``, ``delete``,
``scale``) over local processes, Docker and Kubernetes; see the README for a tour.
"""

from juliarun.api import (
    Context,
    collect,
    define_storage,
    delete,
    init,
    list,
    metrics,
    record,
    scale,
    search,
    status,
    submit,
    tail,
    wait,
)
from juliarun.backends.base import ClusterStatus, JobStatus
from juliarun.errors import JuliaRunError
from juliarun.specs import (
    Batch,
    BundlePackage,
    BundleSpec,
    ImageSpec,
    JuliaBatch,
    JuliaParBatchWorkers,
    Resources,
    StorageSpec,
)

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BundlePackage",
    "BundleSpec",
    "ClusterStatus",
    "Context",
    "ImageSpec",
    "JobStatus",
    "JuliaBatch",
    "JuliaParBatchWorkers",
    "JuliaRunError",
    "Resources",
    "StorageSpec",
    "collect",
    "define_storage",
    "delete",
    "init",
    "list",
    "metrics",
    "record",
    "scale",
    "search",
    "status",
    "submit",
    "tail",
    "wait",
]
