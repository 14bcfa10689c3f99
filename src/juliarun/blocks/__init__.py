"""Prefect blocks: saved cluster, storage and node-pool configuration."""

from typing import Any

from juliarun.blocks.cluster import Cluster, LocalCluster, load_cluster
from juliarun.blocks.nodepool import NodePoolBlock, load_pools
from juliarun.blocks.oidc import OIDCCredentials
from juliarun.blocks.queues import RabbitMQ
from juliarun.blocks.storage import Storage
from juliarun.blocks.stores import ElasticsearchLogs, InfluxMetrics

__all__ = [
    "Cluster",
    "DockerCluster",
    "ElasticsearchLogs",
    "InfluxMetrics",
    "KubernetesCluster",
    "LocalCluster",
    "NodePoolBlock",
    "OIDCCredentials",
    "RabbitMQ",
    "Storage",
    "load_cluster",
    "load_pools",
]


def __getattr__(name: str) -> Any:
    # DockerCluster needs the docker extra (prefect-docker): imported on first use.
    if name == "DockerCluster":
        from juliarun.blocks.docker import DockerCluster

        return DockerCluster
    if name == "KubernetesCluster":  # needs the kubernetes extra
        from juliarun.blocks.kubernetes import KubernetesCluster

        return KubernetesCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
