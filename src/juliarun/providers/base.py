"""The provider seam: create and delete the nodes of a :class:`~juliarun.specs.NodePool`.

Node names are chosen by the caller (the planner derives them from the pool and an index), so
a create repeated after a crash finds the node it made before instead of making a second one:
``create_nodes`` and ``delete_nodes`` are idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from juliarun.errors import BackendError
from juliarun.specs import NodePool


class ProviderError(BackendError):
    """A provider refused or failed to create or delete nodes."""


@runtime_checkable
class NodeProvider(Protocol):
    """Makes and removes the nodes of node pools."""

    kind: ClassVar[str]

    def nodes(self, pool: NodePool) -> list[str]:
        """Names of the pool's nodes that exist at the provider, sorted."""
        ...

    def create_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        """Create the nodes called ``names`` (those that exist already are left alone);
        returns the names newly created."""
        ...

    def delete_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        """Delete the nodes called ``names`` (those already gone are fine); returns the names
        that were deleted now."""
        ...
