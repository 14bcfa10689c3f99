"""AWS nodes: one EC2 instance per node, launched through an EC2 Fleet of type ``instant``
from the pool's launch template (on-demand, or spot for a ``spot`` pool), tagged with the
node's name, its pool and the cluster.

A node's name is its instance's ``Name`` tag (and ``juliarun.io/node-name``); the launch
template's user data is expected to start the kubelet with ``--hostname-override`` set to that
tag, so the Kubernetes Node and the instance carry one name. Creates are idempotent: a node
whose tagged instance is pending or running is not launched again (the tags are applied with
the launch, so an instance that exists is always found), and each launch carries a client token
derived from the cluster and node name, so a retried request does not launch twice either.

Pool ``provider_options``: ``launch_template`` (required), ``region``, ``subnet`` (a subnet id
overriding the template's), ``instance_type`` (overriding the template's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

from juliarun.providers.base import ProviderError
from juliarun.specs import POOL_LABEL, NodePool

NAME_TAG = "juliarun.io/node-name"
CLUSTER_TAG = "juliarun.io/cluster"
LIVE_STATES = ["pending", "running"]


def client_token(cluster: str, name: str) -> str:
    """The idempotency token of launching node ``name`` of ``cluster`` (at most 64 chars)."""
    return hashlib.sha256(f"{cluster}\0{name}".encode()).hexdigest()[:64]


class AwsProvider:
    """Launches and terminates the instances of node pools through ``ec2`` (a boto3 EC2
    client)."""

    kind: ClassVar[str] = "aws"

    def __init__(self, ec2: Any, *, cluster: str) -> None:
        self.ec2 = ec2
        self.cluster = cluster

    @classmethod
    def connect(
        cls, *, cluster: str, region: str | None = None, endpoint_url: str | None = None
    ) -> AwsProvider:
        """A provider with a boto3 client of its own (credentials from the usual AWS chain)."""
        import boto3

        return cls(
            boto3.client("ec2", region_name=region, endpoint_url=endpoint_url), cluster=cluster
        )

    def _instances(self, pool: NodePool, names: Sequence[str] | None = None) -> dict[str, str]:
        """Live instances of the pool: node name → instance id."""
        filters = [
            {"Name": f"tag:{POOL_LABEL}", "Values": [pool.name]},
            {"Name": f"tag:{CLUSTER_TAG}", "Values": [self.cluster]},
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ]
        if names is not None:
            filters.append({"Name": f"tag:{NAME_TAG}", "Values": list(names)})
        found: dict[str, str] = {}
        try:
            pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
            for page in pages:
                for reservation in page.get("Reservations", []):
                    for instance in reservation.get("Instances", []):
                        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                        if NAME_TAG in tags:
                            found[tags[NAME_TAG]] = instance["InstanceId"]
        except Exception as exc:  # botocore's errors: the API said no, or is unreachable
            raise ProviderError(
                f"aws: cannot list the instances of pool {pool.name}: {exc}",
                hint="check the AWS credentials, region and endpoint",
            ) from exc
        return found

    def nodes(self, pool: NodePool) -> list[str]:
        return sorted(self._instances(pool))

    def create_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        template = pool.provider_options.get("launch_template")
        if not template:
            raise ProviderError(
                f"aws: pool {pool.name} names no launch template",
                hint="set provider_options={'launch_template': '<name>'} on the pool",
            )
        existing = self._instances(pool, names) if names else {}
        created = []
        for name in names:
            if name in existing:
                continue
            self._launch(pool, template, name)
            created.append(name)
        return created

    def _launch(self, pool: NodePool, template: str, name: str) -> None:
        tags = [
            {"Key": "Name", "Value": name},
            {"Key": NAME_TAG, "Value": name},
            {"Key": POOL_LABEL, "Value": pool.name},
            {"Key": CLUSTER_TAG, "Value": self.cluster},
        ]
        override: dict[str, str] = {}
        if "instance_type" in pool.provider_options:
            override["InstanceType"] = pool.provider_options["instance_type"]
        if "subnet" in pool.provider_options:
            override["SubnetId"] = pool.provider_options["subnet"]
        config: dict[str, Any] = {
            "LaunchTemplateSpecification": {"LaunchTemplateName": template, "Version": "$Latest"}
        }
        if override:
            config["Overrides"] = [override]
        try:
            answer = self.ec2.create_fleet(
                Type="instant",
                ClientToken=client_token(self.cluster, name),
                TargetCapacitySpecification={
                    "TotalTargetCapacity": 1,
                    "DefaultTargetCapacityType": "spot" if pool.spot else "on-demand",
                },
                LaunchTemplateConfigs=[config],
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )
        except Exception as exc:
            raise ProviderError(
                f"aws: cannot launch node {name} of pool {pool.name}: {exc}",
                hint="check the launch template, the quotas and the credentials",
            ) from exc
        launched = [i for entry in answer.get("Instances", []) for i in entry["InstanceIds"]]
        if not launched:
            errors = "; ".join(e.get("ErrorMessage", "") for e in answer.get("Errors", []))
            raise ProviderError(
                f"aws: no instance launched for node {name} of pool {pool.name}: "
                f"{errors or 'no capacity'}",
                hint="try another instance type or zone, or an on-demand pool",
            )

    def delete_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        existing = self._instances(pool, names) if names else {}
        gone = [name for name in names if name in existing]
        if not gone:
            return []
        try:
            self.ec2.terminate_instances(InstanceIds=[existing[name] for name in gone])
        except Exception as exc:
            raise ProviderError(
                f"aws: cannot terminate nodes {', '.join(gone)} of pool {pool.name}: {exc}"
            ) from exc
        return gone
