"""A recurring snapshot of the cluster: components, waiting pods, free capacity per node."""

from __future__ import annotations

from typing import Any

from juliarun.flows._flow import flow
from juliarun.tasks import publish_cluster_status


@flow(name="cluster-report")
def cluster_report(cluster: str = "local") -> dict[str, Any]:
    """Publish the cluster view as a table artifact and record free capacity as metrics."""
    status = publish_cluster_status(cluster)
    return {"cluster": status.cluster, "healthy": status.healthy, "nodes": status.table()}
