"""Node providers: who creates and deletes a node pool's nodes (the cluster autoscaler's hands).

One protocol (:class:`~juliarun.providers.base.NodeProvider`), one module per provider:
``kwok`` (simulated nodes on the cluster's apiserver, run by kwok: the test cluster and the
demo). The cloud providers (AWS, Azure, GCP) come behind the same protocol.
"""

from collections.abc import Mapping
from typing import Any

from juliarun.errors import ConfigError
from juliarun.providers.base import NodeProvider, ProviderError

__all__ = ["NodeProvider", "ProviderError", "provider_for"]


def provider_for(kind: str, options: Mapping[str, str], *, kube: Any, cluster: str) -> NodeProvider:
    """The provider of ``kind`` (a pool's ``provider``) for ``cluster``: ``kwok`` makes Node
    objects through ``kube`` (the cluster's client); ``aws`` launches EC2 instances (region
    and endpoint from ``options``, credentials from the usual AWS chain)."""
    if kind == "kwok":
        from juliarun.providers.kwok import KwokProvider

        return KwokProvider(kube)
    if kind == "aws":
        from juliarun.providers.aws import AwsProvider

        return AwsProvider.connect(
            cluster=cluster, region=options.get("region"), endpoint_url=options.get("endpoint")
        )
    raise ConfigError(
        f"no node provider {kind!r} in this version of juliarun",
        hint="use provider='kwok' or 'aws'",
    )
