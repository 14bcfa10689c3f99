"""What a job's diagnosis is made from, read from the apiserver: the Job, its pods, the events
that explain a wait (the Job's ``FailedCreate``, the pods' ``FailedMount``) and the nodes (only
when a pod waits for one), and, for a failed worker, its last log lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from juliarun.backends.base import JobStatus
from juliarun.backends.kubernetes import diagnosis as dx
from juliarun.backends.kubernetes.client import KubeApiError, ns_path
from juliarun.backends.kubernetes.podlogs import PodLogs
from juliarun.backends.kubernetes.routes import JobRoutes


@dataclass
class Evidence:
    """The objects :func:`~juliarun.backends.kubernetes.diagnosis.diagnose` reads."""

    job: dict[str, Any]
    pods: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] | None = None


class JobInspector:
    """Reads the evidence of a job (through ``routes``) and diagnoses its status."""

    def __init__(self, routes: JobRoutes, pod_logs: PodLogs) -> None:
        self.routes = routes
        self.client = routes.client
        self.pod_logs = pod_logs

    def evidence(self, name: str) -> Evidence:
        """The Job, its pods, and the events and nodes that explain why it waits."""
        job = self.routes.get_job(name)
        pods = self.routes.job_pods(name)
        found = Evidence(job, pods)
        done = any(
            c.get("status") == "True" and c.get("type") in {"Complete", "Failed"}
            for c in job.get("status", {}).get("conditions") or []
        )
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        desired = int(job["spec"].get("completions") or 0)
        events_path = ns_path(self.routes.ns_of(name), "events")
        if not done and len(live) < desired:
            uid = job["metadata"].get("uid")
            listing = self.client.get(
                events_path, fieldSelector=f"involvedObject.kind=Job,involvedObject.name={name}"
            )
            found.events = [
                e for e in listing.get("items") or [] if e["involvedObject"].get("uid") == uid
            ]
        if not done and any(dx.waiting_to_mount(p) for p in live):
            # Why storage does not mount is said only in the pods' FailedMount events.
            names = {p["metadata"]["name"] for p in live}
            listing = self.client.get(
                events_path, fieldSelector="involvedObject.kind=Pod,reason=FailedMount"
            )
            found.events += [
                e for e in listing.get("items") or [] if e["involvedObject"].get("name") in names
            ]
        if any(
            dx.pending_unscheduled(p)
            or (dx.pending_unassigned(p) and p["spec"].get("nodeSelector"))
            for p in pods
        ):
            found.nodes = self.nodes()
        return found

    def nodes(self) -> list[dict[str, Any]] | None:
        """Every node, or ``None`` when the credentials may not read nodes (a tenant's: the
        diagnosis then goes by the scheduler's messages only)."""
        try:
            return list(self.client.get("/api/v1/nodes").get("items") or [])
        except KubeApiError as exc:
            if exc.status == 403:
                return None
            raise

    def status(self, name: str) -> JobStatus:
        """The diagnosed status of job ``name``, with the last lines of the pod whose output
        explains a failure."""
        found = self.evidence(name)
        report = dx.diagnose(found.job, found.pods, found.events, found.nodes)
        if report.log_pod:
            report.status.last_lines = self.pod_logs.last_lines(report.log_pod)
        return report.status
