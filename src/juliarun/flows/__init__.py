"""Prefect flows: the pipelines juliarun runs orchestrated."""

from juliarun.flows._specs import quiet_juliarun_tracebacks
from juliarun.flows.alerts import evaluate_alerts
from juliarun.flows.autoscale import cluster_autoscaler, process_autoscaler
from juliarun.flows.builds import (
    build_image,
    build_package_bundle,
    prewarm_image,
    prune_bundles,
    prune_storage,
    run_pipeline,
)
from juliarun.flows.cluster_report import cluster_report
from juliarun.flows.run_job import run_job
from juliarun.flows.tenants import ensure_tenant_flow

quiet_juliarun_tracebacks()

__all__ = [
    "build_image",
    "build_package_bundle",
    "cluster_autoscaler",
    "cluster_report",
    "ensure_tenant_flow",
    "evaluate_alerts",
    "prewarm_image",
    "process_autoscaler",
    "prune_bundles",
    "prune_storage",
    "run_job",
    "run_pipeline",
]
