"""Storage tasks."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from juliarun import api
from juliarun.specs import StorageSpec
from juliarun.tasks._context import context


@task(cache_policy=NONE)
def define_storage(cluster: str, spec: StorageSpec) -> StorageSpec:
    """Record ``spec`` in the cluster's storage catalog."""
    with context(cluster) as ctx:
        return api.define_storage(ctx, spec)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2)
def provision_storage(cluster: str, name: str) -> str:
    """Create the named storage on the cluster if needed; returns where it lives."""
    with context(cluster) as ctx:
        return ctx.backend.provision_storage(ctx.storage.get(name))
