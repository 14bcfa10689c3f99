"""Simulated nodes: Node objects on the cluster's own apiserver, annotated so kwok runs them.

kwok (sigs.k8s.io/kwok) plays the kubelet for nodes annotated ``kwok.x-k8s.io/node=fake``:
they become Ready, pods bound to them Running. The scheduler, controllers and apiserver are
the real ones, so everything above the node behaves as on a cloud — which is what the tests
and ``juliarun demo cluster`` need; nothing here pretends to be a cloud API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from juliarun.backends.kubernetes.client import KubeApiError, KubeClient
from juliarun.providers.base import ProviderError
from juliarun.specs import POOL_LABEL, NodePool

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
MANAGED_BY = "app.kubernetes.io/managed-by"
PROVIDER_LABEL = "juliarun.io/provider"


def node_manifest(pool: NodePool, name: str) -> dict[str, Any]:
    """The Node object of ``pool``'s node ``name``, with its allocatable resources."""
    capacity = {
        "cpu": pool.cpu,
        "memory": pool.memory,
        "pods": str(pool.pods),
        "ephemeral-storage": "1Ti",
    }
    if pool.gpu:
        capacity["nvidia.com/gpu"] = str(pool.gpu)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        MANAGED_BY: "juliarun",
        PROVIDER_LABEL: "kwok",
        **pool.node_labels(),
    }
    if pool.spot:
        labels["juliarun.io/spot"] = "true"
    taints = [{"key": t.key, "value": t.value, "effect": t.effect} for t in pool.node_taints()]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "allocatable": capacity,
            "capacity": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "",
                "containerRuntimeVersion": "kwok",
                "kernelVersion": "kwok",
                "kubeProxyVersion": "kwok",
                "kubeletVersion": "kwok",
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "kwok",
                "systemUUID": "",
            },
            "phase": "Running",
        },
    }


class KwokProvider:
    """Creates and deletes kwok-run Node objects through ``client``."""

    kind: ClassVar[str] = "kwok"

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    def nodes(self, pool: NodePool) -> list[str]:
        selector = f"{POOL_LABEL}={pool.name},{PROVIDER_LABEL}=kwok"
        items = self.client.get("/api/v1/nodes", labelSelector=selector).get("items") or []
        return sorted(str(n["metadata"]["name"]) for n in items)

    def create_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        created = []
        for name in names:
            try:
                self.client.post("/api/v1/nodes", node_manifest(pool, name))
            except KubeApiError as exc:
                if exc.status == 409:  # made before a restart: the same node, not a second
                    continue
                raise ProviderError(
                    f"kwok: cannot create node {name} of pool {pool.name}: {exc}",
                    hint="check the cluster's apiserver and that the credentials may create nodes",
                ) from exc
            created.append(name)
        return created

    def delete_nodes(self, pool: NodePool, names: Sequence[str]) -> list[str]:
        deleted = []
        for name in names:
            try:
                self.client.delete(f"/api/v1/nodes/{name}")
            except KubeApiError as exc:
                if exc.status == 404:
                    continue
                raise ProviderError(
                    f"kwok: cannot delete node {name} of pool {pool.name}: {exc}"
                ) from exc
            deleted.append(name)
        return deleted
