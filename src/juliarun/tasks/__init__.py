"""Thin Prefect tasks: one driver call each, with retries and logging around it."""

from juliarun.tasks.jobs import (
    delete_job,
    job_summary,
    scale_job,
    submit_job,
    watch_job,
)
from juliarun.tasks.observe import publish_cluster_status, query_metric, record_metric, search_logs
from juliarun.tasks.storage import (
    define_storage,
    prepare_storage,
    provision_storage,
    prune_storage_task,
)

__all__ = [
    "define_storage",
    "delete_job",
    "job_summary",
    "prepare_storage",
    "provision_storage",
    "prune_storage_task",
    "publish_cluster_status",
    "query_metric",
    "record_metric",
    "scale_job",
    "search_logs",
    "submit_job",
    "watch_job",
]
