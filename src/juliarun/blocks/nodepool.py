"""The NodePool block: a node pool defined once on the Prefect server (in the UI or from
Python) and used by name by the ``cluster-autoscaler`` flow and deployment
(``pool_blocks=["highcpu"]``). The block document's name is the pool's name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from prefect.blocks.core import Block
from pydantic import Field

from juliarun.blocks.cluster import DOCS, LOGO
from juliarun.errors import ConfigError
from juliarun.specs import Cpu, Memory, NodePool, NodeTaint, NodeType, ProviderKind


class NodePoolBlock(Block):
    """A group of identical nodes the cluster autoscaler adds and removes (see
    :class:`juliarun.specs.NodePool`); the block document's name is the pool name."""

    _block_type_name = "juliarun Node Pool"
    _block_type_slug = "juliarun-node-pool"
    _logo_url = LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]
    _description = (
        "A node pool for juliarun's cluster autoscaler: node size, bounds, labels, taints and "
        "who makes the nodes (kwok, aws, azure, gcp)."
    )

    node_type: NodeType | None = Field(
        None, description="Node type its nodes are (gpu, spot, highmem, highcpu)."
    )
    cpu: Cpu = Field(description="Allocatable CPU per node, e.g. 4.")
    memory: Memory = Field(description="Allocatable memory per node, e.g. 16Gi.")
    gpu: int = Field(0, ge=0, le=64, description="GPUs per node (nvidia.com/gpu).")
    pods: int = Field(110, ge=1, le=1000, description="Pods per node.")
    min: int = Field(0, ge=0, le=10000, description="Nodes kept at least.")
    max: int = Field(ge=0, le=10000, description="Nodes at most.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra node labels.")
    taints: list[NodeTaint] = Field(default_factory=list, description="Extra node taints.")
    price: float = Field(0.0, ge=0, description="Price per node-hour (to prefer cheaper pools).")
    spot: bool = Field(False, description="Nodes may be taken back by the provider at any time.")
    provider: ProviderKind = Field(
        "kwok", description="Who makes the nodes: kwok, aws, azure or gcp."
    )
    provider_options: dict[str, str] = Field(
        default_factory=dict, description="Provider settings (see juliarun.providers)."
    )

    def pool(self, name: str | None = None) -> NodePool:
        """The validated pool (its name defaults to the block document's name)."""
        doc_name = name or getattr(self, "_block_document_name", None) or ""
        fields = self.model_dump(include=set(NodePool.model_fields) - {"name"})
        return NodePool(name=doc_name, **fields)

    @classmethod
    def from_pool(cls, pool: NodePool) -> NodePoolBlock:
        """The block of ``pool`` (save it under ``pool.name``)."""
        return cls(**pool.model_dump(exclude={"name"}))


def load_pools(names: Sequence[str]) -> list[NodePool]:
    """The node pools saved as NodePool blocks called ``names``; every missing one named at
    once."""
    found: list[NodePool] = []
    missing: list[str] = []
    for name in names:
        try:
            block = cast(NodePoolBlock, NodePoolBlock.load(name))
        except ValueError:
            missing.append(name)
            continue
        found.append(block.pool(name))
    if missing:
        raise ConfigError(
            f"no NodePool block called {', '.join(repr(n) for n in missing)}",
            hint="save one first: NodePoolBlock.from_pool(NodePool(...)).save('<name>'), or "
            "create a 'juliarun Node Pool' block in the Prefect UI",
        )
    return found
