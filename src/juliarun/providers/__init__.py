"""Node providers: who creates and deletes a node pool's nodes (the cluster autoscaler's hands).

One protocol (:class:`~juliarun.providers.base.NodeProvider`), one module per provider:
``kwok`` (simulated nodes on the cluster's apiserver, run by kwok: the test cluster and the
demo), ``aws`` (EC2 Fleet launches from a launch template), ``azure`` (VMs created by name in a
Flexible VM scale set) and ``gcp`` (instances created by name in a managed instance group).
"""

from collections.abc import Mapping
from typing import Any

from juliarun.errors import ConfigError
from juliarun.providers.base import NodeProvider, ProviderError

__all__ = ["NodeProvider", "ProviderError", "provider_for"]


def provider_for(kind: str, options: Mapping[str, str], *, kube: Any, cluster: str) -> NodeProvider:
    """The provider of ``kind`` (a pool's ``provider``) for ``cluster``: ``kwok`` makes Node
    objects through ``kube`` (the cluster's client); ``aws`` launches EC2 instances (region
    and endpoint from ``options``, credentials from the usual AWS chain); ``azure`` VMs of a
    scale set (azure-identity's default credential); ``gcp`` instances of a managed instance
    group (Application Default Credentials)."""
    if kind == "kwok":
        from juliarun.providers.kwok import KwokProvider

        return KwokProvider(kube)
    if kind == "aws":
        from juliarun.providers.aws import AwsProvider

        return AwsProvider.connect(
            cluster=cluster, region=options.get("region"), endpoint_url=options.get("endpoint")
        )
    if kind == "azure":
        from juliarun.providers.azure import AzureProvider

        return AzureProvider.connect(cluster=cluster, options=options)
    if kind == "gcp":
        from juliarun.providers.gcp import GcpProvider

        return GcpProvider.connect(options=options)
    raise ConfigError(
        f"no node provider {kind!r} in this version of juliarun",
        hint="use provider='kwok', 'aws', 'azure' or 'gcp'",
    )
