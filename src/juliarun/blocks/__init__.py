"""Prefect blocks: saved cluster and storage configuration."""

from juliarun.blocks.cluster import Cluster, LocalCluster, load_cluster
from juliarun.blocks.storage import Storage

__all__ = ["Cluster", "LocalCluster", "Storage", "load_cluster"]
