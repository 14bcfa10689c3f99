"""Azure nodes: one virtual machine per node, in a pool's VM scale set of *Flexible*
orchestration (azure-mgmt-compute), named after the node and tagged with its pool and cluster.

A Flexible scale set takes VMs created by name (a Uniform one names its instances itself), so a
node's VM, its computer name (the kubelet's hostname) and the Kubernetes Node carry one name:
a create repeated after a restart finds the VM (listed by the scale set) and makes no second
one; a create or delete is a PUT or DELETE of that name, idempotent on Azure's side too. Calls
return once Azure has accepted them (no waiting for a VM to boot: the autoscaler's next loop
sees the Node when its kubelet joins).

Azure tag names cannot hold ``/``, so the tags are ``juliarun-pool``, ``juliarun-cluster`` and
``juliarun-node-name``. Pool ``provider_options``: ``subscription``, ``resource_group``,
``scale_set``, ``location``, ``vm_size``, ``image`` (an image resource id, or
``publisher:offer:sku:version``), ``subnet`` (a subnet resource id), ``ssh_public_key``
(required); ``admin_user`` (default ``juliarun``), ``custom_data`` (cloud-init that joins the
cluster, sent base64-encoded), ``zone``. A ``spot`` pool's VMs are Spot VMs, evicted by
deletion.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from juliarun.errors import ConfigError
from juliarun.providers.base import ProviderError
from juliarun.specs import NodePool

POOL_TAG = "juliarun-pool"
CLUSTER_TAG = "juliarun-cluster"
NAME_TAG = "juliarun-node-name"
REQUIRED = (
    "subscription",
    "resource_group",
    "scale_set",
    "location",
    "vm_size",
    "image",
    "subnet",
    "ssh_public_key",
)
_GONE = {"deleting", "deleted"}


def check_options(pool: NodePool) -> None:
    """Every option the provider needs is set (all missing ones named at once)."""
    missing = [k for k in REQUIRED if not pool.provider_options.get(k)]
    if missing:
        raise ConfigError(
            f"azure: pool {pool.name} lacks provider_options {', '.join(missing)}",
            hint="set them on the NodePool (see juliarun.providers.azure)",
        )


def scale_set_id(options: Mapping[str, str]) -> str:
    """The resource id of the pool's scale set."""
    return (
        f"/subscriptions/{options['subscription']}/resourceGroups/{options['resource_group']}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/{options['scale_set']}"
    )


def _image(image: str) -> dict[str, str]:
    if image.startswith("/"):
        return {"id": image}
    parts = image.split(":")
    if len(parts) != 4:
        raise ConfigError(
            f"azure: image {image!r} is neither a resource id nor publisher:offer:sku:version",
            hint="e.g. image='Canonical:ubuntu-24_04-lts:server:latest'",
        )
    return dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))


def _error(exc: Exception) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or str(exc).splitlines()[0]
    return f"{code}: {message}" if code else message


class AzureProvider:
    """Creates and deletes the VMs of node pools through ``compute`` (an
    ``azure.mgmt.compute.ComputeManagementClient`` for the pool's subscription)."""

    kind: ClassVar[str] = "azure"

    def __init__(self, compute: Any, *, cluster: str) -> None:
        self.compute = compute
        self.cluster = cluster

    @classmethod
    def connect(
        cls, *, cluster: str, options: Mapping[str, str], credential: Any = None
    ) -> AzureProvider:
        """A provider with a client of its own; credentials from ``azure-identity``'s default
        chain (environment, managed identity, Azure CLI) unless ``credential`` is given."""
        from azure.mgmt.compute import ComputeManagementClient

        if not options.get("subscription"):
            raise ConfigError(
                "azure: the pool's provider_options name no subscription",
                hint="provider_options={'subscription': '<id>', ...}",
            )
        if credential is None:
            try:
                from azure.identity import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
                    DefaultAzureCredential,
                )
            except ImportError as exc:
                raise ConfigError(
                    "azure: no credential given and azure-identity is not installed",
                    hint="pip install 'juliarun[azure]' (azure-identity)",
                ) from exc
            credential = DefaultAzureCredential()
        return cls(ComputeManagementClient(credential, options["subscription"]), cluster=cluster)

    def _vms(self, pool: NodePool) -> dict[str, str]:
        """The pool's live VMs: node name → provisioning state."""
        check_options(pool)
        opts = pool.provider_options
        vmss = scale_set_id(opts)
        found: dict[str, str] = {}
        try:
            for vm in self.compute.virtual_machines.list(
                opts["resource_group"], filter=f"'virtualMachineScaleSet/id' eq '{vmss}'"
            ):
                tags = vm.tags or {}
                if tags.get(POOL_TAG) != pool.name or tags.get(CLUSTER_TAG) != self.cluster:
                    continue
                state = str(vm.provisioning_state or "")
                if state.lower() in _GONE:
                    continue
                found[tags.get(NAME_TAG) or str(vm.name)] = state
        except Exception as exc:  # azure-core's errors: the API said no, or is unreachable
            raise ProviderError(
                f"azure: cannot list the VMs of pool {pool.name}: {_error(exc)}",
                hint="check the credentials, the subscription and the scale set",
            ) from exc
        return found

    def nodes(self, pool: NodePool) -> list[str]:
        return sorted(self._vms(pool))

    def create_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        if not names:
            return []
        existing = self._vms(pool)
        created = []
        for name in names:
            if name in existing:
                continue
            try:
                self.compute.virtual_machines.begin_create_or_update(
                    pool.provider_options["resource_group"],
                    name,
                    self.vm(pool, name),
                    polling=False,
                )
            except Exception as exc:
                raise ProviderError(
                    f"azure: cannot create node {name} of pool {pool.name}: {_error(exc)}",
                    hint="check the VM size's quota in the region, the image and the subnet",
                ) from exc
            created.append(name)
        return created

    def vm(self, pool: NodePool, name: str) -> Any:
        """The ``VirtualMachine`` of node ``name`` (azure-mgmt-compute's model)."""
        from azure.mgmt.compute import models as m

        opts = pool.provider_options
        user = opts.get("admin_user") or "juliarun"
        os_profile = m.OSProfile(
            computer_name=name,
            admin_username=user,
            linux_configuration=m.LinuxConfiguration(
                disable_password_authentication=True,
                ssh=m.SshConfiguration(
                    public_keys=[
                        m.SshPublicKey(
                            path=f"/home/{user}/.ssh/authorized_keys",
                            key_data=opts["ssh_public_key"],
                        )
                    ]
                ),
            ),
        )
        if opts.get("custom_data"):
            os_profile.custom_data = base64.b64encode(opts["custom_data"].encode()).decode()
        vm = m.VirtualMachine(
            location=opts["location"],
            tags={POOL_TAG: pool.name, CLUSTER_TAG: self.cluster, NAME_TAG: name},
            zones=[opts["zone"]] if opts.get("zone") else None,
        )
        vm.virtual_machine_scale_set = m.SubResource(id=scale_set_id(opts))
        vm.hardware_profile = m.HardwareProfile(vm_size=opts["vm_size"])
        vm.storage_profile = m.StorageProfile(
            image_reference=m.ImageReference(**_image(opts["image"])),
            os_disk=m.OSDisk(create_option="FromImage", delete_option="Delete"),
        )
        vm.os_profile = os_profile
        vm.network_profile = m.NetworkProfile(
            network_api_version="2020-11-01",
            network_interface_configurations=[
                m.VirtualMachineNetworkInterfaceConfiguration(
                    name=f"{name}-nic",
                    properties=m.VirtualMachineNetworkInterfaceConfigurationProperties(
                        primary=True,
                        delete_option="Delete",
                        ip_configurations=[
                            m.VirtualMachineNetworkInterfaceIPConfiguration(
                                name="ipconfig1",
                                properties=m.VirtualMachineNetworkInterfaceIPConfigurationProperties(
                                    subnet=m.SubResource(id=opts["subnet"])
                                ),
                            )
                        ],
                    ),
                )
            ],
        )
        if pool.spot:
            vm.priority = "Spot"
            vm.eviction_policy = "Delete"
            vm.billing_profile = m.BillingProfile(max_price=-1)
        return vm

    def delete_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        if not names:
            return []
        existing = self._vms(pool)
        gone = []
        for name in names:
            if name not in existing:
                continue
            try:
                self.compute.virtual_machines.begin_delete(
                    pool.provider_options["resource_group"], name, polling=False
                )
            except Exception as exc:
                if getattr(exc, "status_code", None) == 404:
                    continue
                raise ProviderError(
                    f"azure: cannot delete node {name} of pool {pool.name}: {_error(exc)}"
                ) from exc
            gone.append(name)
        return gone
