"""The Storage block: named storage defined once on the Prefect server and used by name."""

from __future__ import annotations

from typing import cast

from prefect.blocks.core import Block
from pydantic import Field

from juliarun.blocks.cluster import DOCS, LOGO
from juliarun.errors import StorageNotFoundError
from juliarun.specs import AccessMode, StorageKind, StorageSpec, VolumeMode
from juliarun.storage import StorageCatalog


class Storage(Block):
    """Storage jobs mount at ``/mnt/<name>``: a host directory, a RAM disk, a volume or a git
    checkout.
    The block document's name is the storage name."""

    _block_type_name = "juliarun Storage"
    _block_type_slug = "juliarun-storage"
    _logo_url = LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]
    _description = (
        "Named storage for juliarun jobs: host directory, RAM disk, volume or git checkout."
    )

    kind: StorageKind = Field(
        "host", description="host directory, ramdisk (tmpfs), volume (a claim) or git."
    )
    path: str | None = Field(None, description="host: the directory (absolute path).")
    size: str | None = Field(
        None, description="ramdisk: the size limit, e.g. 256Mi; volume: the size, e.g. 10Gi."
    )
    storage_class: str | None = Field(
        None, description="volume: the Kubernetes StorageClass (None: the cluster's default)."
    )
    access_mode: AccessMode | None = Field(
        None, description="volume: ReadWriteOnce (default), ReadOnlyMany or ReadWriteMany."
    )
    volume_mode: VolumeMode | None = Field(
        None, description="volume: Filesystem (default) or Block (Kubernetes only)."
    )
    url: str | None = Field(None, description="git: the repository URL or path.")
    ref: str | None = Field(None, description="git: branch, tag or commit.")
    aliases: list[str] = Field(default_factory=list, description="Other names for it.")

    def spec(self, name: str | None = None) -> StorageSpec:
        """The validated spec (the name defaults to the block document's name)."""
        doc_name = name or getattr(self, "_block_document_name", None) or ""
        return StorageSpec(name=doc_name, **self.model_dump(include=set(StorageSpec.model_fields)))

    @classmethod
    def from_spec(cls, spec: StorageSpec) -> Storage:
        return cls(**spec.model_dump(exclude={"name"}))


def resolve_storage(catalog: StorageCatalog, name: str) -> StorageSpec:
    """The storage called ``name``: from the cluster's catalog, else a saved ``Storage`` block
    of that name (then recorded in the catalog, so storage defined once in the Prefect UI is
    usable by name). Raises :class:`StorageNotFoundError` naming what is defined."""
    try:
        return catalog.get(name)
    except StorageNotFoundError:
        try:
            block = cast(Storage, Storage.load(name))
        except ValueError:
            raise StorageNotFoundError(name, [s.name for s in catalog.all()]) from None
        return catalog.define(block.spec(name))
