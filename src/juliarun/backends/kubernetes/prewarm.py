"""Pre-warm Kubernetes nodes: a labelled DaemonSet whose pods pull an image and sleep.

A pod Ready on a node means the node has the image. The DaemonSet is removed when every
matching node has it, and also on timeout (the nodes still without it are then named, with
what their pod waits for, e.g. ``ErrImagePull``). Simulated (kwok) nodes mark pods Ready
without pulling anything: their rows say so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.errors import BackendError, SpecError

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
# Taints DaemonSet pods tolerate on their own (the DaemonSet controller adds them).
_DAEMON_TOLERATED = "node.kubernetes.io/"


@dataclass(frozen=True)
class NodeReadiness:
    """Whether one node has the image now."""

    node: str
    ready: bool
    detail: str


def _tolerates(taint: Mapping[str, Any], rule: mf.NodeTypeRule | None) -> bool:
    if taint.get("effect") == "PreferNoSchedule" or taint["key"].startswith(_DAEMON_TOLERATED):
        return True
    for tol in rule.tolerations if rule is not None else []:
        if tol.key != taint["key"] or (tol.effect and tol.effect != taint.get("effect")):
            continue
        if tol.operator == "Exists" or tol.value == taint.get("value"):
            return True
    return False


def matching_nodes(
    nodes: list[dict[str, Any]], rule: mf.NodeTypeRule | None
) -> list[dict[str, Any]]:
    """The nodes a DaemonSet with ``rule``'s nodeSelector and tolerations runs a pod on."""
    wanted = dict(rule.labels) if rule is not None else {}
    found = []
    for node in nodes:
        labels = node["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            continue
        if all(_tolerates(t, rule) for t in node.get("spec", {}).get("taints") or []):
            found.append(node)
    return found


class PrewarmTarget(Protocol):
    """What pre-warming needs of a cluster (a :class:`KubernetesBackend` is one): its client,
    the namespace the DaemonSet runs in, its node-type map, and the clock and sleep it waits
    with."""

    client: KubeClient
    namespace: str
    node_types: dict[str, mf.NodeTypeRule]
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    poll_interval: float


def _pod_detail(pod: Mapping[str, Any]) -> tuple[bool, str]:
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if ready:
        return True, ""
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            message = str(waiting.get("message") or "").strip()
            return False, f"{waiting['reason']}: {message}" if message else waiting["reason"]
    return False, f"pod {status.get('phase', 'Pending')}"


def prewarm(
    backend: PrewarmTarget,
    image: str,
    node_type: str | None = None,
    *,
    timeout: float = 300.0,
) -> list[NodeReadiness]:
    """Pull ``image`` onto every node (of ``node_type`` when given) with a DaemonSet in the
    backend's namespace; one row per node. Raises :class:`BackendError` naming the nodes that
    do not have it after ``timeout`` seconds (the DaemonSet is removed either way)."""
    rule = None
    if node_type is not None:
        rule = backend.node_types.get(node_type)
        if rule is None:
            raise SpecError(
                "prewarm_image",
                [
                    (
                        "node_type",
                        f"{node_type!r} is not in this cluster's node-type map "
                        f"({', '.join(sorted(backend.node_types)) or 'empty'})",
                    )
                ],
            )
    client = backend.client
    nodes = matching_nodes(list(client.get("/api/v1/nodes").get("items") or []), rule)
    if not nodes:
        raise BackendError(
            f"no node {'of type ' + repr(node_type) + ' ' if node_type else ''}to pre-warm "
            f"{image} on",
            hint="check the node-type map's labels and the nodes' taints",
        )
    key = hashlib.sha256(f"{image}\0{node_type or ''}".encode()).hexdigest()[:12]
    name = f"prewarm-{key}"
    path = ns_path(backend.namespace, "daemonsets", group="apps/v1")
    try:
        client.post(path, mf.prewarm_daemonset(image, name, backend.namespace, rule))
    except KubeApiError as exc:
        if exc.status != 409:  # 409: left by an interrupted pre-warm of the same image
            raise
    kwok = {
        n["metadata"]["name"]
        for n in nodes
        if (n["metadata"].get("annotations") or {}).get(KWOK_ANNOTATION)
    }
    wanted = sorted(n["metadata"]["name"] for n in nodes)
    details: dict[str, tuple[bool, str]] = {}
    deadline = backend.clock() + timeout
    try:
        while True:
            pods = client.get(
                ns_path(backend.namespace, "pods"),
                labelSelector=f"{mf.MANAGED_BY}=juliarun,{mf.PREWARM_LABEL}={name}",
            )
            details = {}
            for pod in pods.get("items") or []:
                node = str((pod.get("spec") or {}).get("nodeName") or "")
                if node in wanted and not pod["metadata"].get("deletionTimestamp"):
                    details[node] = _pod_detail(pod)
            if all(details.get(n, (False, ""))[0] for n in wanted):
                break
            if backend.clock() >= deadline:
                break
            backend.sleep(backend.poll_interval)
    finally:
        try:
            client.delete(f"{path}/{name}", propagationPolicy="Background")
        except KubeApiError as exc:
            if exc.status != 404:
                raise
    rows = []
    for node in wanted:
        ready, detail = details.get(node, (False, "no pod scheduled yet"))
        if ready:
            detail = (
                f"kwok node: pod Ready without pulling {image} (simulated)"
                if node in kwok
                else f"{image} is on the node"
            )
        rows.append(NodeReadiness(node, ready, detail))
    failed = [r for r in rows if not r.ready]
    if failed:
        raise BackendError(
            f"pre-warming {image}: {len(failed)} of {len(rows)} nodes do not have it after "
            f"{timeout:g}s: " + "; ".join(f"{r.node} ({r.detail})" for r in failed),
            hint="check the image name and the nodes' registry access "
            f"(`kubectl get events -n {backend.namespace}`)",
        )
    return rows
