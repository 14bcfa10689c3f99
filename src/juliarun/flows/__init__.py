"""Prefect flows: the pipelines juliarun runs orchestrated."""

from juliarun.flows.cluster_report import cluster_report
from juliarun.flows.run_job import run_job

__all__ = ["cluster_report", "run_job"]
