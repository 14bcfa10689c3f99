"""GCP nodes: one instance per node in a pool's zonal managed instance group
(google-cloud-compute), created by name from the group's instance template.

A managed instance group creates instances with the names it is given (``createInstances``),
so a node's instance and the Kubernetes Node (the kubelet's hostname on GCE) carry one name; a
create repeated after a restart finds the instance among the group's managed instances and
makes no second one. Calls return once GCP has accepted them (the operation is not waited for:
the autoscaler's next loop sees the Node when its kubelet joins). The instance template says
what a node is (machine type, image, the start-up script that joins the cluster, SPOT
provisioning for a ``spot`` pool).

Pool ``provider_options``: ``project``, ``zone``, ``group`` (the managed instance group's
name), all required.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from juliarun.errors import ConfigError
from juliarun.providers.base import ProviderError
from juliarun.specs import NodePool

REQUIRED = ("project", "zone", "group")
_GONE = {"DELETING", "ABANDONING"}


def check_options(pool: NodePool) -> None:
    """Every option the provider needs is set (all missing ones named at once)."""
    missing = [k for k in REQUIRED if not pool.provider_options.get(k)]
    if missing:
        raise ConfigError(
            f"gcp: pool {pool.name} lacks provider_options {', '.join(missing)}",
            hint="set project, zone and group (the managed instance group) on the NodePool",
        )


def _where(pool: NodePool) -> dict[str, str]:
    check_options(pool)
    opts = pool.provider_options
    return {
        "project": opts["project"],
        "zone": opts["zone"],
        "instance_group_manager": opts["group"],
    }


def _error(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    code = getattr(exc, "code", None)
    if not (code and message):
        return str(exc).splitlines()[0]
    return f"{int(code)} {re.sub(r'^[A-Z]+ https?://[^ ]+: ', '', str(message))}"


class GcpProvider:
    """Creates and deletes the instances of node pools through ``groups`` (a
    ``google.cloud.compute_v1.InstanceGroupManagersClient``)."""

    kind: ClassVar[str] = "gcp"

    def __init__(self, groups: Any) -> None:
        self.groups = groups

    @classmethod
    def connect(cls, *, options: Mapping[str, str] | None = None) -> GcpProvider:
        """A provider with a client of its own (credentials from Application Default
        Credentials); ``options['endpoint']`` overrides the API endpoint."""
        from google.api_core.client_options import ClientOptions
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import compute_v1

        endpoint = (options or {}).get("endpoint")
        client_options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        try:
            return cls(compute_v1.InstanceGroupManagersClient(client_options=client_options))
        except DefaultCredentialsError as exc:
            raise ConfigError(
                f"gcp: no Application Default Credentials: {exc}",
                hint="set GOOGLE_APPLICATION_CREDENTIALS to a service account key, or run "
                "`gcloud auth application-default login`",
            ) from exc

    def _instances(self, pool: NodePool) -> dict[str, str]:
        """The group's live instances: name → its current action."""
        found: dict[str, str] = {}
        where = _where(pool)
        try:
            for managed in self.groups.list_managed_instances(**where):
                action = str(managed.current_action or "")
                if action in _GONE:
                    continue
                found[str(managed.instance).rsplit("/", 1)[-1]] = action
        except Exception as exc:  # google-api-core's errors: the API said no, or is unreachable
            raise ProviderError(
                f"gcp: cannot list the instances of pool {pool.name}: {_error(exc)}",
                hint="check the credentials, project, zone and the managed instance group",
            ) from exc
        return found

    def nodes(self, pool: NodePool) -> list[str]:
        return sorted(self._instances(pool))

    def create_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        from google.cloud import compute_v1

        if not names:
            return []
        existing = self._instances(pool)
        new = [name for name in names if name not in existing]
        if not new:
            return []
        request = compute_v1.InstanceGroupManagersCreateInstancesRequest(
            instances=[compute_v1.PerInstanceConfig(name=name) for name in new]
        )
        try:
            self.groups.create_instances(
                **_where(pool), instance_group_managers_create_instances_request_resource=request
            )
        except Exception as exc:
            raise ProviderError(
                f"gcp: cannot create nodes {', '.join(new)} of pool {pool.name}: {_error(exc)}",
                hint="check the group's instance template, the zone's quota and the credentials",
            ) from exc
        return new

    def delete_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        from google.cloud import compute_v1

        if not names:
            return []
        existing = self._instances(pool)
        gone = [name for name in names if name in existing]
        if not gone:
            return []
        zone = pool.provider_options["zone"]
        request = compute_v1.InstanceGroupManagersDeleteInstancesRequest(
            instances=[f"zones/{zone}/instances/{name}" for name in gone],
            skip_instances_on_validation_error=True,
        )
        try:
            self.groups.delete_instances(
                **_where(pool), instance_group_managers_delete_instances_request_resource=request
            )
        except Exception as exc:
            raise ProviderError(
                f"gcp: cannot delete nodes {', '.join(gone)} of pool {pool.name}: {_error(exc)}"
            ) from exc
        return gone
