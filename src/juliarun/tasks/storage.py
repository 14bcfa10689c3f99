"""Storage tasks."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NONE

from juliarun import api
from juliarun.blocks.storage import resolve_storage
from juliarun.specs import StorageSpec
from juliarun.tasks._context import context
from juliarun.tasks.jobs import _transient


@task(cache_policy=NONE)
def define_storage(cluster: str, spec: StorageSpec) -> StorageSpec:
    """Record ``spec`` in the cluster's storage catalog."""
    with context(cluster) as ctx:
        return api.define_storage(ctx, spec)


@task(cache_policy=NONE)
def prepare_storage(
    cluster: str, names: Sequence[str], define: Sequence[StorageSpec] = ()
) -> list[StorageSpec]:
    """Record the ``define`` specs in the cluster's storage catalog, then resolve each of
    ``names`` (the catalog, else a saved ``Storage`` block, then recorded): what a job's
    submit provisions. Nothing is created on the cluster here."""
    with context(cluster) as ctx:
        for spec in define:
            api.define_storage(ctx, spec)
        return [resolve_storage(ctx.storage, name) for name in names]


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def provision_storage(cluster: str, name: str) -> str:
    """Create the named storage on the cluster if needed (ahead of the jobs that use it);
    returns where it lives. The name is resolved as in :func:`prepare_storage`."""
    with context(cluster) as ctx:
        return ctx.backend.provision_storage(resolve_storage(ctx.storage, name))


@task(cache_policy=NONE)
def prune_storage_task(cluster: str) -> list[str]:
    """Remove storage a newer version replaced that nothing uses (Docker: git volumes of older
    commits); clusters with nothing of the kind return an empty list."""
    with context(cluster) as ctx:
        return ctx.backend.prune_storage()
