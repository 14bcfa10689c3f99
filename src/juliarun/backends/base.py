"""The compute seam: one protocol every execution platform implements, and the shared status
vocabulary (job, worker and cluster status) they report in."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from juliarun.errors import JobTimeoutError
from juliarun.logs.base import LogLine, LogStore
from juliarun.metrics.base import MetricStore
from juliarun.queues.base import Queue
from juliarun.specs import JobSpec, StorageSpec

if TYPE_CHECKING:
    from juliarun.router.objects import KubeRequests

Phase = Literal["created", "running", "succeeded", "failed"]
WorkerState = Literal["waiting", "running", "restarting", "succeeded", "failed", "removed"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed"})


@dataclass
class WorkerStatus:
    """One worker process (a pod, a container, a local process group)."""

    id: str
    state: WorkerState = "waiting"
    pid: int | None = None
    exit_code: int | None = None
    restarts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (or ``None`` while unfinished)."""
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class DiagnosisCategory(enum.StrEnum):
    """What kind of wait or failure a status reason describes: stable names to match on (the
    reason's text is for people and may change). Each backend sets the category with the
    reason; ``None`` where there is no reason (a job that simply runs or succeeded)."""

    # waiting, nothing to fix
    WAITING_FOR_CONTROLLER = "waiting_for_controller"
    """The job controller has not created the job's pods yet."""
    WAITING_FOR_SCHEDULER = "waiting_for_scheduler"
    """A pod is not placed on a node yet."""
    WAITING_FOR_PLACEMENT = "waiting_for_placement"
    """juliarun's placement controller has not placed the job whole yet (its pods are gated):
    the reason says why (no room for all its workers at once, not all created yet)."""
    WAITING_FOR_NODES = "waiting_for_nodes"
    """No matching node has room now; one would once other jobs end (or nodes are added)."""
    NODE_NOT_SCHEDULABLE = "node_not_schedulable"
    """The matching nodes are not ready, cordoned or under pressure for now."""
    # cannot be placed
    NO_SUCH_NODE_TYPE = "no_such_node_type"
    """No node of the job's node type exists."""
    NO_NODE_WITH_LABELS = "no_node_with_labels"
    """No node carries the job's node labels."""
    RESOURCE_MISFIT = "resource_misfit"
    """A worker asks more than any matching node has."""
    UNTOLERATED_TAINT = "untolerated_taint"
    """The matching nodes have a taint the job does not tolerate."""
    UNSCHEDULABLE = "unschedulable"
    """The scheduler cannot place a worker, for a reason not recognised above."""
    # cannot create or start
    QUOTA_EXCEEDED = "quota_exceeded"
    """A ResourceQuota of the job's namespace refuses its pods."""
    POD_CREATE_FAILED = "pod_create_failed"
    """The job controller cannot create pods, for another reason."""
    IMAGE_PULL = "image_pull"
    """An image (the job's, or the git clone image) cannot be pulled."""
    CONTAINER_CREATE_FAILED = "container_create_failed"
    """A worker's container cannot be created or started (its configuration)."""
    WORKER_START_FAILED = "worker_start_failed"
    """A worker process could not be started at all."""
    GIT_CLONE_FAILED = "git_clone_failed"
    """A git storage's clone failed in the worker."""
    MOUNT_FAILED = "mount_failed"
    """Storage cannot be mounted for a worker."""
    STORAGE_MISSING_ON_NODE = "storage_missing_on_node"
    """A path mounted from the node (host storage, local checkout, bundle) is not there."""
    # ran and failed
    CRASH_LOOP = "crash_loop"
    """A worker keeps failing and restarting."""
    OOM_KILLED = "oom_killed"
    """A worker ran out of memory."""
    EXIT_CODE = "exit_code"
    """A worker exited with a non-zero code."""
    KILLED_BY_SIGNAL = "killed_by_signal"
    """A worker was killed by a signal."""
    POD_FAILED = "pod_failed"
    """A worker's pod failed without its container ending (evicted, deadline)."""
    JOB_FAILED = "job_failed"
    """The platform marked the job failed (backoff limit, deadline) with no worker to blame."""
    DELETED = "deleted"
    """The job was deleted before it ended."""
    SUPERVISOR_CRASHED = "supervisor_crashed"
    """The process supervising the job's workers exited unexpectedly."""
    SUPERVISOR_NEVER_STARTED = "supervisor_never_started"
    """The process supervising the job's workers never started."""


@dataclass(frozen=True)
class Diagnosis:
    """Why a job waits or failed, as data: ``category`` to match on, ``summary`` the text a
    status shows as its reason, ``hint`` what to do, ``detail`` the evidence it rests on (the
    scheduler's or kubelet's message, the event) when there is one."""

    category: DiagnosisCategory
    summary: str
    hint: str | None = None
    detail: str | None = None


@dataclass
class JobStatus:
    """Where a job stands. ``str(status)`` reads like the seed: ``created, 1 processes waiting``,
    ``running``, ``succeeded``, ``failed: <reason>``."""

    name: str
    kind: str
    phase: Phase
    desired_workers: int
    workers: list[WorkerStatus] = field(default_factory=list)
    reason: str | None = None
    hint: str | None = None
    last_lines: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    category: DiagnosisCategory | None = None
    """What kind of wait or failure ``reason`` describes (match on this, not on the text)."""

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    @property
    def waiting(self) -> int:
        """Workers not started yet (including those waiting to restart)."""
        started = sum(1 for w in self.workers if w.state != "waiting")
        return max(self.desired_workers - started, 0) + sum(
            1 for w in self.workers if w.state == "restarting"
        )

    def __str__(self) -> str:
        if self.phase == "created":
            return f"created, {max(self.waiting, self.desired_workers)} processes waiting"
        if self.phase == "running":
            running = sum(1 for w in self.workers if w.state == "running")
            if running == self.desired_workers:
                return "running"
            return f"running, {running} of {self.desired_workers} processes running"
        if self.phase == "failed":
            return f"failed: {self.reason or 'unknown reason'}"
        return self.phase

    def __repr__(self) -> str:
        return f"<JobStatus {self.name}: {self}>"

    def describe(self) -> str:
        """A multi-line view: the status, then one line per worker."""
        lines = [f"{self.kind}({self.name}): {self}"]
        if self.reason and self.phase in ("created", "running"):  # why it waits
            lines[0] += f" ({self.reason})"
        for w in self.workers:
            extra = f" exit={w.exit_code}" if w.exit_code is not None else ""
            extra += f" restarts={w.restarts}" if w.restarts else ""
            extra += f" ({w.reason})" if w.reason else ""
            lines.append(f"  {w.id}: {w.state}{extra}")
        if self.hint and self.phase == "failed":
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


@dataclass
class Component:
    """A part of the platform and whether it is healthy."""

    name: str
    healthy: bool
    detail: str = ""


@dataclass
class NodeStatus:
    """Free capacity of one node, in percent of its allocatable resources."""

    name: str
    ready: bool
    cpu: int
    gpu: int
    mem: int
    dsk: int
    pod: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ClusterStatus:
    """The seed's cluster view: components, pods waiting, nodes with free percentages."""

    cluster: str
    kind: str
    endpoint: str
    components: list[Component] = field(default_factory=list)
    waiting_for_scheduler: int = 0
    waiting_for_nodes: int = 0
    resource_misfit: int = 0
    nodes: list[NodeStatus] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(c.healthy for c in self.components) and all(n.ready for n in self.nodes)

    def render(self, verbose: bool = True) -> str:
        lines = [f"Compute cluster: {self.cluster} ({self.kind}) at {self.endpoint}"]
        if not verbose:
            state = "healthy" if self.healthy else "degraded"
            lines.append(f"{state}: {len(self.nodes)} nodes, {len(self.components)} components")
            return "\n".join(lines)
        lines += ["", "Components"]
        for c in self.components:
            mark = "✓" if c.healthy else "✗"
            lines.append(f"{mark} {c.name}" + (f"  ({c.detail})" if c.detail else ""))
        lines += [
            "",
            "Pods waiting",
            f"  for scheduler: {self.waiting_for_scheduler}",
            f"  for free nodes: {self.waiting_for_nodes}",
            f"  resource misfit: {self.resource_misfit}",
            "",
            "Nodes (resource free pct)",
            "  cpu gpu mem dsk pod name",
        ]
        for n in self.nodes:
            mark = "✓" if n.ready else "✗"
            lines.append(f"{mark} {n.cpu:3d} {n.gpu:3d} {n.mem:3d} {n.dsk:3d} {n.pod:3d} {n.name}")
        return "\n".join(lines)

    def table(self) -> list[dict[str, object]]:
        """Nodes as rows (for a Prefect table artifact)."""
        return [
            {
                "node": n.name,
                "ready": n.ready,
                "cpu": n.cpu,
                "gpu": n.gpu,
                "mem": n.mem,
                "dsk": n.dsk,
                "pod": n.pod,
            }
            for n in self.nodes
        ]

    def __str__(self) -> str:
        return self.render(verbose=True)


@dataclass(frozen=True)
class NodeReadiness:
    """Whether one node has an image now (what pre-warming reports per node)."""

    node: str
    ready: bool
    detail: str


@runtime_checkable
class Backend(Protocol):
    """An execution platform: local processes, Docker, or Kubernetes."""

    kind: ClassVar[str]
    cluster: str

    @property
    def home(self) -> Path:
        """Where this cluster's state (jobs, bundles, storage catalog) lives on this machine."""
        ...

    @property
    def image(self) -> str | None:
        """The image jobs that name none run in (``None`` where jobs are not containers)."""
        ...

    def submit(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> JobStatus:
        """Start ``job`` with its storage (by the names the job uses) provisioned and mounted at
        ``/mnt/<name>``. Submitting the same spec
        again is a no-op returning the current status; a different spec under the same name
        raises :class:`~juliarun.errors.JobExistsError`."""
        ...

    def status(self, name: str) -> JobStatus: ...

    def jobs(self) -> list[JobSpec]:
        """The jobs on the cluster, oldest first."""
        ...

    def delete(self, name: str, *, force: bool = False) -> bool:
        """Stop the job's workers (at once when ``force``) and remove the job."""
        ...

    def scale(self, name: str, workers: int) -> JobStatus:
        """Change how many workers a running ``JuliaParBatchWorkers`` job has."""
        ...

    def provision_storage(self, spec: StorageSpec) -> str:
        """Create the storage if needed (idempotent); returns where it lives."""
        ...

    def prune_storage(self) -> list[str]:
        """Remove storage a newer version replaced that no job uses; returns what was removed
        (empty where a backend keeps no versions)."""
        ...

    def cluster_status(self) -> ClusterStatus: ...

    def job_path(self, storage: str, host_path: Path) -> str:
        """Where a job sees ``host_path`` when it is mounted as host storage ``storage``
        (``/mnt/<storage>`` in a container, the directory itself for a local process)."""
        ...

    def prewarm(
        self, image: str, *, node_type: str | None = None, timeout: float = 300.0
    ) -> list[NodeReadiness]:
        """Make ``image`` present on the cluster's nodes (of ``node_type`` when given) before
        jobs need it; one row per node."""
        ...

    def bundle_paths_in_use(self) -> list[str]:
        """Package-bundle paths that jobs on the cluster mount but that no ``job.json`` under
        ``home`` records (Kubernetes Jobs); empty where every job has a ``job.json``."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class LogSource(Protocol):
    """A backend that reads a job's output from the workers themselves (Kubernetes pod logs),
    for backends whose lines are not (yet) shipped into the log store."""

    def logs(
        self,
        name: str,
        *,
        follow: bool = False,
        since: datetime | None = None,
        lines: int | None = None,
        worker: str | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[LogLine]:
        """Lines of every worker interleaved by time (the last ``lines`` only when given);
        ``follow`` keeps yielding until the job ends or ``stop()``."""
        ...


@runtime_checkable
class Placer(Protocol):
    """A backend whose jobs juliarun can place whole itself (Kubernetes, with pods gated until
    a placement controller places them)."""

    def placement_controller(self, *, interval: float = 1.0) -> Any:
        """A placement controller for this cluster (``step()``, ``run()``, ``start()`` /
        ``stop()``)."""
        ...


@runtime_checkable
class QueueHost(Protocol):
    """A backend that runs message-queue brokers as services of the cluster."""

    def start_queue(self, name: str) -> Queue:
        """Start broker ``name`` (or find it running); a handle once it takes messages."""
        ...

    def delete_queue(self, name: str, *, force: bool = False) -> bool:
        """Stop broker ``name`` and remove it (its messages too); whether there was one."""
        ...


@dataclass(frozen=True)
class ServiceEndpoint:
    """Where a job's HTTP service answers, as the router reaches it: the namespace (tenant) whose
    members may use it and the upstream ``http://host:port``."""

    namespace: str
    upstream: str


@runtime_checkable
class ServiceHost(Protocol):
    """A backend whose jobs' HTTP services the router can reach (``juliarun.expose``)."""

    def service_endpoint(self, name: str, port: int, *, timeout: float = 60.0) -> ServiceEndpoint:
        """Where job ``name`` serves ``port`` (waits up to ``timeout`` s for a running worker)."""
        ...


@runtime_checkable
class RouteObjectHost(Protocol):
    """A backend whose exposed services' routes are objects in the job's own namespace, written
    with the context's own credentials, so the cluster's RBAC decides who may expose (Kubernetes:
    see :mod:`juliarun.router.objects`)."""

    def route_writer(self) -> KubeRequests:
        """The apiserver client route objects are written with (the context's own)."""
        ...


@runtime_checkable
class PodAutoscalerHost(Protocol):
    """A backend whose own pod autoscaler can scale a job's workers from a metric juliarun
    serves (Kubernetes: the HorizontalPodAutoscaler and an external-metrics API)."""

    def pod_autoscaler(
        self,
        name: str,
        read: Callable[[], float],
        *,
        target: float,
        minimum: int,
        maximum: int,
        scale_down_window: int = 300,
        interval: float = 1.0,
        on_change: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Attach the cluster's autoscaler to job ``name``; a handle with ``stop()``."""
        ...


@runtime_checkable
class NodeOperator(Protocol):
    """A backend whose nodes the cluster autoscaler can add and remove (Kubernetes)."""

    def cluster_objects(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """Every node and every live pod, as the cluster's API gives them."""
        ...

    def mark_for_removal(self, node: str) -> None:
        """Cordon ``node`` and mark it as being drained for removal."""
        ...

    def unmark(self, node: str) -> None:
        """Take a removal mark back."""
        ...

    def evict_pods(self, node: str) -> tuple[int, list[str]]:
        """Evict the pods of ``node`` (disruption budgets honoured): how many went, and the
        pods kept."""
        ...

    def node_provider(self, kind: str, options: Mapping[str, str]) -> Any:
        """The :class:`~juliarun.providers.base.NodeProvider` of ``kind`` for this cluster."""
        ...


@dataclass
class CollectResult:
    """What one collection of a job's output shipped into the stores."""

    job: str
    lines: int = 0
    metric_points: int = 0
    system_points: int = 0
    skipped: int = 0
    pods: set[str] = field(default_factory=set)
    ended: str = ""


@runtime_checkable
class LogCollector(Protocol):
    """A backend whose workers' output is not shipped by a supervisor (Kubernetes): a collector
    follows the job and ships its lines and metrics into the stores until it ends."""

    def collect(
        self,
        name: str,
        logs: LogStore,
        metrics: MetricStore | None = None,
        *,
        on_line: Callable[[LogLine], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> CollectResult:
        """Ship every line (exactly once, resuming after what the store holds) and metric of
        job ``name`` until it ends or ``stop()``."""
        ...


def wait_for_job(
    backend: Backend,
    name: str,
    *,
    timeout: float | None = None,
    poll_interval: float = 0.5,
    on_poll: Callable[[JobStatus], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobStatus:
    """Poll until the job succeeds or fails; raises :class:`JobTimeoutError` after ``timeout``
    seconds (the job is left running)."""
    deadline = None if timeout is None else clock() + timeout
    while True:
        status = backend.status(name)
        if on_poll is not None:
            on_poll(status)
        if status.done:
            return status
        if deadline is not None and clock() >= deadline:
            raise JobTimeoutError(name, timeout or 0.0, str(status))
        sleep(poll_interval)
