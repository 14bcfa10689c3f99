"""The cluster view: control-plane health, how pending pods wait, and each node's free
percentages (disk from the kubelet's filesystem stats where a kubelet answers)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from juliarun.backends.base import ClusterStatus, Component, NodeStatus
from juliarun.backends.kubernetes import diagnosis as dx
from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.errors import BackendError
from juliarun.scaling.placement import k8s_requests
from juliarun.specs import parse_quantity


def percent(free: Decimal, total: Decimal) -> int:
    """``free`` in percent of ``total``, within 0..100 (0 when there is no total).

    >>> percent(Decimal(1), Decimal(4)), percent(Decimal(5), Decimal(4)), percent(Decimal(1), 0)
    (25, 100, 0)
    """
    if total <= 0:
        return 0
    return max(0, min(100, round(100 * free / total)))


def node_status(
    node: Mapping[str, Any], pods: list[dict[str, Any]], disk_free: float | None = None
) -> NodeStatus:
    """Free percentages of one node: allocatable minus the requests of the pods on it (disk
    from the kubelet's filesystem stats when known, else from ephemeral-storage requests)."""
    alloc = {
        k: parse_quantity(str(v)) for k, v in (node["status"].get("allocatable") or {}).items()
    }
    used: dict[str, Decimal] = {}
    for pod in pods:
        for k, v in k8s_requests(pod).items():
            used[k] = used.get(k, Decimal(0)) + v

    def free(resource: str) -> int:
        total = alloc.get(resource, Decimal(0))
        return percent(total - used.get(resource, Decimal(0)), total)

    disk = round(100 * disk_free) if disk_free is not None else free("ephemeral-storage")
    pod_total = alloc.get("pods", Decimal(0))
    labels = node["metadata"].get("labels") or {}
    return NodeStatus(
        name=node["metadata"]["name"],
        ready=dx.condition_true(node, "Ready"),
        cpu=free("cpu"),
        gpu=free(mf.GPU_RESOURCE),
        mem=free("memory"),
        dsk=disk,
        pod=percent(pod_total - len(pods), pod_total),
        labels={k: v for k, v in labels.items() if k.startswith("juliarun.io/")},
    )


class ClusterView:
    """Reads the cluster's state as :class:`ClusterStatus` (pods of ``namespace`` only when the
    credentials may not list pods cluster-wide)."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        cluster: str,
        kind: str = "kubernetes",
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.cluster = cluster
        self.kind = kind
        self.log = logger or logging.getLogger("juliarun.kubernetes")

    def health(self) -> list[Component]:
        """The apiserver (live, ready), etcd, and the scheduler and controller-manager where
        ``componentstatuses`` still answers."""
        components: list[Component] = []
        for check in ("livez", "readyz"):
            try:
                text = self.client.request(
                    "GET", f"/{check}", query={"verbose": True}, raw=True, timeout=5, retries=0
                )
                ok = True
            except KubeApiError as exc:
                text, ok = str(exc.body or exc.message), False
            except BackendError as exc:
                return [Component("apiserver", False, exc.message)]
            failed = re.findall(r"\[-\](\S+)", text)
            detail = "ok" if ok else "failing: " + ", ".join(failed)
            if check == "livez":
                components.append(Component("apiserver", ok, f"/livez {detail}"))
            else:
                etcd = "[-]etcd" not in text
                components.append(Component("etcd", etcd, "/readyz etcd check"))
                components.append(Component("apiserver-ready", ok, f"/readyz {detail}"))
        try:  # deprecated, but the only view of scheduler and controller-manager health
            for item in self.client.get("/api/v1/componentstatuses").get("items") or []:
                cname = item["metadata"]["name"]
                if cname.startswith("etcd"):
                    continue
                cond: dict[str, Any] = next(iter(item.get("conditions") or []), {})
                components.append(
                    Component(
                        cname,
                        cond.get("status") == "True",
                        str(cond.get("message") or cond.get("error") or ""),
                    )
                )
        except (KubeApiError, BackendError) as exc:
            self.log.debug("componentstatuses unavailable: %s", exc)
        return components

    def all_pods(self, field_selector: str) -> list[dict[str, Any]]:
        """The pods matching ``field_selector`` everywhere (else in ``namespace``)."""
        try:
            listing = self.client.get("/api/v1/pods", fieldSelector=field_selector)
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            listing = self.client.get(ns_path(self.namespace, "pods"), fieldSelector=field_selector)
        return list(listing.get("items") or [])

    def disk_free(self, node: Mapping[str, Any]) -> float | None:
        """Free fraction of the node's filesystem from the kubelet summary API (via the
        apiserver proxy), when the node has a reachable kubelet."""
        if (node["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node"):
            return None  # simulated: no kubelet to ask
        try:
            summary = self.client.request(
                "GET",
                f"/api/v1/nodes/{node['metadata']['name']}/proxy/stats/summary",
                timeout=3,
                retries=0,
            )
        except (KubeApiError, BackendError, ValueError):
            return None
        fs = (summary.get("node") or {}).get("fs") or {}
        if fs.get("capacityBytes"):
            return float(fs.get("availableBytes", 0)) / float(fs["capacityBytes"])
        return None

    def status(self) -> ClusterStatus:
        """Components, pods waiting (for the scheduler, for free nodes, misfits) and nodes."""
        components = self.health()
        nodes = list(self.client.get("/api/v1/nodes").get("items") or [])
        pending = self.all_pods("status.phase=Pending")
        waits = [dx.waiting_kind(p, nodes) for p in pending]
        active = self.all_pods("status.phase!=Succeeded,status.phase!=Failed")
        by_node: dict[str, list[dict[str, Any]]] = {}
        for pod in active:
            node_name = pod.get("spec", {}).get("nodeName")
            if node_name:
                by_node.setdefault(node_name, []).append(pod)
        rows = [
            node_status(n, by_node.get(n["metadata"]["name"], []), self.disk_free(n))
            for n in sorted(nodes, key=lambda n: n["metadata"]["name"])
        ]
        return ClusterStatus(
            cluster=self.cluster,
            kind=self.kind,
            endpoint=f"{self.client.host} (namespace {self.namespace})",
            components=components,
            waiting_for_scheduler=waits.count("scheduler"),
            waiting_for_nodes=waits.count("nodes"),
            resource_misfit=waits.count("misfit"),
            nodes=rows,
        )
