"""juliarun: run Julia workloads at scale from Python.

The seed's session, on the embedded local default::

    import juliarun
    ctx = juliarun.init()
    juliarun.define_storage(ctx, name="juliarun", kind="host", path="/srv/juliarun")
    job = juliarun.JuliaBatch("helloworld", "/mnt/juliarun/helloworld/helloworld.jl", "juliarun")
    juliarun.submit(ctx, job)
    juliarun.tail(ctx, job=job)
    juliarun.delete(ctx, job)
"""

from juliarun.api import (
    Context,
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
    JuliaBatch,
    JuliaParBatchWorkers,
    Resources,
    StorageSpec,
)

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "ClusterStatus",
    "Context",
    "JobStatus",
    "JuliaBatch",
    "JuliaParBatchWorkers",
    "JuliaRunError",
    "Resources",
    "StorageSpec",
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
