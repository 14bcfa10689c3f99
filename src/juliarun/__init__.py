"""juliarun: run Julia workloads at scale from Python.

The seed's session API (``init``, ``status``, ``submit``, ``list``, ``tail``, ``delete``,
``scale``) over local processes, Docker and Kubernetes; see the README for a tour.
"""

from juliarun.api import (
    Context,
    Service,
    collect,
    define_storage,
    delete,
    expose,
    init,
    list,
    metrics,
    record,
    scale,
    search,
    start_queue,
    status,
    submit,
    tail,
    wait,
)
from juliarun.backends.base import ClusterStatus, JobStatus
from juliarun.clusterscaler import ClusterScaler
from juliarun.errors import JuliaRunError
from juliarun.queues import Queue, QueueStats
from juliarun.scaler import JobScaler, PodAutoscaler
from juliarun.scaling.metrics import (
    AverageMetric,
    BoundedMetric,
    CallableMetric,
    StoreMetric,
    WorkQueueMetric,
)
from juliarun.scaling.planner import Headroom
from juliarun.scaling.policy import HPAPolicy
from juliarun.specs import (
    Batch,
    BundlePackage,
    BundleSpec,
    ImageSpec,
    JuliaBatch,
    JuliaParBatchWorkers,
    NodePool,
    Resources,
    StorageSpec,
)

__version__ = "0.1.0"

__all__ = [
    "AverageMetric",
    "Batch",
    "BoundedMetric",
    "BundlePackage",
    "BundleSpec",
    "CallableMetric",
    "ClusterScaler",
    "ClusterStatus",
    "Context",
    "HPAPolicy",
    "Headroom",
    "ImageSpec",
    "JobScaler",
    "JobStatus",
    "JuliaBatch",
    "JuliaParBatchWorkers",
    "JuliaRunError",
    "NodePool",
    "PodAutoscaler",
    "Queue",
    "QueueStats",
    "Resources",
    "Service",
    "StorageSpec",
    "StoreMetric",
    "WorkQueueMetric",
    "collect",
    "define_storage",
    "delete",
    "expose",
    "init",
    "list",
    "metrics",
    "record",
    "scale",
    "search",
    "start_queue",
    "status",
    "submit",
    "tail",
    "wait",
]
