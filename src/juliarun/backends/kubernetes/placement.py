"""The co-locating scheduler's driver: juliarun's jobs are created with the scheduling gate
``juliarun.io/placement`` (a ``KubernetesCluster`` with ``placement="juliarun"``); this
controller plans each job whole with the one placement model
(:func:`juliarun.scaling.placement.place_gang`, by the job's ``placement`` policy), writes the
chosen node into each pod's required node affinity (allowed while a pod is gated) and removes
the gate. The real kube-scheduler then binds each pod to its one allowed node, so nothing races
it; a job that cannot start whole keeps all its pods gated, and the Job's annotation
``juliarun.io/placement`` says why (``juliarun status`` shows it).

Jobs are placed oldest first; what one job takes in a pass is not offered to the next.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.errors import ConfigError
from juliarun.scaling.placement import Node, Pod, Resources, bind, get_policy, place_gang

Obj = Mapping[str, Any]
PLACEMENT_ANNOTATION = mf.PLACEMENT_ANNOTATION
"""On a Job: ``placed on <nodes>`` or ``waiting: <reason>``."""

log = logging.getLogger("juliarun.placement")


@dataclass(frozen=True)
class PlacementDecision:
    """What one pass decided for one job: placed (on ``nodes``) or waiting (``reason``)."""

    namespace: str
    job: str
    placed: bool
    nodes: tuple[str, ...] = ()
    reason: str = ""

    def __str__(self) -> str:
        where = ", ".join(self.nodes)
        what = f"placed on {where}" if self.placed else f"waiting: {self.reason}"
        return f"{self.namespace}/{self.job}: {what}"


def _gated(pod: Obj) -> bool:
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(g.get("name") == mf.PLACEMENT_GATE for g in gates)


def _created(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


def _policy(job: Obj) -> str:
    spec = (job.get("metadata") or {}).get("annotations", {}).get(mf.SPEC)
    try:
        return str(json.loads(spec).get("placement") or "pack") if spec else "pack"
    except ValueError:
        return "pack"


def _where_bound(pod: Pod) -> Pod:
    """A pod placed but not bound yet counts on the one node its affinity allows (so the next
    pass does not offer that room again)."""
    allowed = pod.node_names
    if pod.node is None and not pod.gated and allowed is not None and len(allowed) == 1:
        return dataclasses.replace(pod, node=next(iter(allowed)))
    return pod


def node_affinity_patch(node: str) -> dict[str, Any]:
    """The pod patch that pins a gated pod to ``node`` and removes every gate (a pod of
    juliarun's carries only juliarun's)."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {
        "spec": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
                }
            },
            "schedulingGates": [],
        }
    }


@dataclass
class PlacementController:
    """Places gated juliarun jobs whole. ``step()`` is one pass over the cluster (returns a
    decision per job that has gated pods); ``start()`` runs passes every ``interval`` seconds
    in the background."""

    client: KubeClient
    interval: float = 1.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    on_decision: Callable[[PlacementDecision], None] | None = None
    decisions: list[PlacementDecision] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    # -- reading the cluster ---------------------------------------------------------------

    def _state(self) -> tuple[list[Obj], list[Obj], dict[tuple[str, str], Obj]]:
        pods = [
            p
            for p in self.client.get("/api/v1/pods").get("items") or []
            if (p.get("status") or {}).get("phase") not in {"Succeeded", "Failed"}
        ]
        nodes = list(self.client.get("/api/v1/nodes").get("items") or [])
        jobs = {
            (j["metadata"]["namespace"], j["metadata"]["name"]): j
            for j in self.client.get("/apis/batch/v1/jobs", labelSelector=mf.selector()).get(
                "items"
            )
            or []
        }
        return pods, nodes, jobs

    # -- one pass ----------------------------------------------------------------------------

    def step(self) -> list[PlacementDecision]:
        raw_pods, raw_nodes, jobs = self._state()
        pods = [Pod.from_k8s(p) for p in raw_pods]
        nodes = bind([Node.from_k8s(n) for n in raw_nodes], [_where_bound(p) for p in pods])
        free: dict[str, Resources] = {n.name: n.free for n in nodes}
        waiting: dict[tuple[str, str], list[tuple[Obj, Pod]]] = {}
        started: dict[tuple[str, str], int] = {}
        for raw, pod in zip(raw_pods, pods, strict=True):
            key = (pod.namespace, pod.job or "")
            if pod.job is None or key not in jobs:
                continue
            if _gated(raw) and pod.node is None:
                waiting.setdefault(key, []).append((raw, pod))
            else:
                started[key] = started.get(key, 0) + 1
        out = []
        order = sorted(waiting, key=lambda k: (_created(jobs[k]), k))
        for key in order:
            decision = self._place(jobs[key], waiting[key], started.get(key, 0), nodes, free)
            out.append(decision)
            self._record(jobs[key], decision)
        return out

    def _place(
        self,
        job: Obj,
        gated: Sequence[tuple[Obj, Pod]],
        started: int,
        nodes: Sequence[Node],
        free: dict[str, Resources],
    ) -> PlacementDecision:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        want = int((job.get("spec") or {}).get("parallelism") or 0) - started
        if len(gated) < want:  # the job controller has not made every worker's pod yet
            return PlacementDecision(
                namespace, name, False, reason=f"{len(gated)} of {want} workers created"
            )
        try:
            policy = get_policy(_policy(job))
        except ConfigError as exc:
            return PlacementDecision(namespace, name, False, reason=str(exc))
        plan = place_gang([p for _, p in gated], nodes, policy, free=free)
        if not plan.placed:
            return PlacementDecision(namespace, name, False, reason=plan.reason)
        for raw, pod in gated:
            node = plan.assignment[pod.key]
            patch = node_affinity_patch(node)
            version = (raw.get("metadata") or {}).get("resourceVersion")
            if version:  # only the pod as read: a pod changed since is not placed blindly
                patch["metadata"] = {"resourceVersion": version}
            try:
                self.client.merge_patch(ns_path(namespace, "pods", raw["metadata"]["name"]), patch)
            except KubeApiError as exc:
                if exc.status in {409, 422}:
                    # changed since this pass read it (placed by another controller, say): what
                    # the pass planned is stale; the next pass starts from what is there
                    return PlacementDecision(
                        namespace,
                        name,
                        False,
                        reason=f"pod {pod.name} changed while being placed ({exc.status}); "
                        "placing again on the next pass",
                    )
                if exc.status != 404:  # a pod deleted meanwhile: its job makes another
                    raise
            free[node] = free[node] - pod.requests
        return PlacementDecision(namespace, name, True, nodes=tuple(plan.nodes))

    def _record(self, job: Obj, decision: PlacementDecision) -> None:
        """A decision that changes what the Job says: on the Job (for ``status``), in the log,
        in ``decisions`` and to ``on_decision`` (a job that still waits for the same reason is
        not said again)."""
        text = str(decision).split(": ", 1)[1]
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        if annotations.get(PLACEMENT_ANNOTATION) == text:
            return
        try:
            self.client.merge_patch(
                ns_path(decision.namespace, "jobs", decision.job, group="batch/v1"),
                {"metadata": {"annotations": {PLACEMENT_ANNOTATION: text}}},
            )
        except KubeApiError as exc:
            if exc.status != 404:
                raise
        log.info("placement: %s", decision)
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Place until :meth:`stop` (a pass that fails is logged and the next one tried)."""
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("placement pass failed; trying again")
            self._stop.wait(self.interval)

    def start(self) -> PlacementController:
        """Run in a background thread; returns self (call :meth:`stop`)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="juliarun-placement", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
