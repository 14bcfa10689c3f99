"""Tenant tasks: one call to the tenant driver each, with a table artifact of what it did."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.backends.kubernetes import tenants as tn
from juliarun.errors import ConfigError
from juliarun.specs import TenantSpec
from juliarun.tasks._context import context


@task(cache_policy=NONE)
def ensure_tenant(cluster: str, spec: TenantSpec) -> list[dict[str, Any]]:
    """Create or update the tenant's namespace, quota, limits, roles and bindings; returns one
    row per object (kind, name, namespace, action), also published as a table artifact."""
    with context(cluster) as ctx:
        if not isinstance(ctx.backend, KubernetesBackend):
            raise ConfigError(
                f"tenants need a kubernetes cluster; {cluster!r} is {ctx.backend.kind}",
                hint="pass cluster='kubernetes' or a KubernetesCluster block's name",
            )
        rows = [obj.row() for obj in tn.ensure_tenant(ctx.backend.client, spec)]
    create_table_artifact(
        key=f"tenant-{spec.name}",
        table=rows,
        description=f"tenant {spec.name}: namespace, quota, limits, roles and bindings",
    )
    return rows
