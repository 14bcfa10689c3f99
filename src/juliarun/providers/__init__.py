"""Node providers: who creates and deletes a node pool's nodes (the cluster autoscaler's hands).

One protocol (:class:`~juliarun.providers.base.NodeProvider`), one module per provider:
``kwok`` (simulated nodes on the cluster's apiserver, run by kwok: the test cluster and the
demo). The cloud providers (AWS, Azure, GCP) come behind the same protocol.
"""

from juliarun.providers.base import NodeProvider, ProviderError

__all__ = ["NodeProvider", "ProviderError"]
