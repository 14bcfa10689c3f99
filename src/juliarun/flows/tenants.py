"""The tenant flow: a namespace with a ResourceQuota, a LimitRange, roles and bindings."""

from __future__ import annotations

from typing import Any

from juliarun.flows._flow import flow
from juliarun.specs import TenantSpec
from juliarun.tasks.tenants import ensure_tenant


@flow(name="tenant", flow_run_name="tenant-{spec.name}")
def ensure_tenant_flow(spec: TenantSpec, cluster: str = "kubernetes") -> dict[str, Any]:
    """Create the tenant ``spec.name`` (its namespace has the same name) or bring it to
    ``spec``; running it again changes nothing. Publishes a table of the objects."""
    rows = ensure_tenant(cluster, spec)
    return {"tenant": spec.name, "namespace": spec.name, "objects": rows}
