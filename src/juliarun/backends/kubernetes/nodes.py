"""Node operations the cluster autoscaler needs: read the cluster (nodes and live pods), mark a
node for removal (cordon + the scale-down taint, so a restarted autoscaler knows), evict its pods
through the Eviction API (honouring PodDisruptionBudgets), and take the mark back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path

Obj = Mapping[str, Any]
SCALE_DOWN_TAINT = "juliarun.io/scale-down"
"""The taint on a node being drained for removal (effect NoSchedule)."""


def read_state(client: KubeClient) -> tuple[list[Obj], list[Obj]]:
    """Every node, and every pod that is not finished."""
    nodes = list(client.get("/api/v1/nodes").get("items") or [])
    pods = [
        p
        for p in client.get("/api/v1/pods").get("items") or []
        if (p.get("status") or {}).get("phase") not in {"Succeeded", "Failed"}
    ]
    return nodes, pods


def _taints(node: Obj) -> list[dict[str, Any]]:
    return [dict(t) for t in (node.get("spec") or {}).get("taints") or []]


def mark_for_removal(client: KubeClient, name: str) -> None:
    """Cordon ``name`` and put the scale-down taint on it (idempotent)."""
    node = client.get(f"/api/v1/nodes/{name}")
    taints = [t for t in _taints(node) if t.get("key") != SCALE_DOWN_TAINT]
    taints.append({"key": SCALE_DOWN_TAINT, "value": "true", "effect": "NoSchedule"})
    client.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True, "taints": taints}})


def unmark(client: KubeClient, name: str) -> None:
    """Take the removal mark back: no scale-down taint, schedulable again."""
    node = client.get_or_none(f"/api/v1/nodes/{name}")
    if node is None:
        return
    taints = [t for t in _taints(node) if t.get("key") != SCALE_DOWN_TAINT]
    client.merge_patch(
        f"/api/v1/nodes/{name}", {"spec": {"unschedulable": False, "taints": taints or None}}
    )


def evict_pods(client: KubeClient, name: str) -> tuple[int, list[str]]:
    """Evict every pod on node ``name`` but its DaemonSet and mirror pods; returns how many
    evictions were accepted and the pods a disruption budget kept (429)."""
    pods = client.get("/api/v1/pods", fieldSelector=f"spec.nodeName={name}").get("items") or []
    evicted, kept = 0, []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (pod.get("status") or {}).get("phase") in {"Succeeded", "Failed"}:
            continue
        owners = meta.get("ownerReferences") or []
        if any(o.get("kind") == "DaemonSet" for o in owners):
            continue
        if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
            continue
        namespace, pod_name = meta.get("namespace", "default"), meta["name"]
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod_name, "namespace": namespace},
        }
        try:
            client.post(ns_path(namespace, "pods", pod_name) + "/eviction", body)
            evicted += 1
        except KubeApiError as exc:
            if exc.status == 404:
                continue
            if exc.status == 429:  # a PodDisruptionBudget says not now
                kept.append(f"{namespace}/{pod_name}")
                continue
            raise
    return evicted, kept
