"""The Kubernetes backend: every job is a ``batch/v1`` Job (see :mod:`.manifests`), its status is
diagnosed from the Job, its pods, its events and the nodes (see :mod:`.diagnosis`), and its
output is read from the pods' logs.

:class:`KubernetesBackend` runs the job lifecycle (submit, status, list, delete, scale) and is
the one face of the parts it is made of: :mod:`.routes` (which namespace a job lives in),
:mod:`.volumes` (storage), :mod:`.evidence` (what a status is diagnosed from), :mod:`.podlogs`
(pod output), :mod:`.clusterview` (health and nodes) and :mod:`.collector` (shipping output into
the stores)."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from juliarun.backends.base import (
    ClusterStatus,
    CollectResult,
    JobStatus,
    NodeReadiness,
    ServiceEndpoint,
)
from juliarun.backends.bundles import job_bundle
from juliarun.backends.kubernetes import diagnosis as dx
from juliarun.backends.kubernetes import drain, nodes
from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes import tenants as tn
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.backends.kubernetes.clusterview import ClusterView
from juliarun.backends.kubernetes.collector import KubernetesCollector
from juliarun.backends.kubernetes.evidence import JobInspector
from juliarun.backends.kubernetes.placement import PlacementController
from juliarun.backends.kubernetes.podautoscaler import (
    MetricsHost,
    PodAutoscalerAttachment,
    attach_pod_autoscaler,
)
from juliarun.backends.kubernetes.podlogs import PodLogs
from juliarun.backends.kubernetes.prewarm import prewarm
from juliarun.backends.kubernetes.queues import KubernetesQueues
from juliarun.backends.kubernetes.routes import JobRoutes
from juliarun.backends.kubernetes.volumes import Volumes, bundle_paths
from juliarun.errors import (
    BackendError,
    ConfigError,
    JobExistsError,
    JobNotFoundError,
    QuotaExceededError,
    SpecError,
)
from juliarun.logs.base import LogLine, LogStore
from juliarun.metrics.base import MetricStore
from juliarun.queues.base import Queue
from juliarun.queues.image import BrokerImage, ensure_broker_image
from juliarun.specs import JobSpec, StorageSpec, validate_spec

QUOTA_TTL = 10.0  # seconds a namespace's ResourceQuotas are reused by the submit check
# Seconds a forced delete waits before releasing the finalizers of terminating pods.
FORCE_RELEASE_AFTER = 5.0


class KubernetesBackend:
    """Jobs as Kubernetes Jobs in one namespace, and tenants' jobs in their own.

    A job whose ``tenant`` is not ``"default"`` runs in the namespace named after its tenant
    (made by :func:`~juliarun.backends.kubernetes.tenants.ensure_tenant`); status, list,
    delete and scale find it there when the credentials may list jobs cluster-wide (a
    tenant's own credentials see only their namespace: the backend's).

    ``api_client`` is a ``kubernetes.client.ApiClient`` with its own configuration (see
    :func:`juliarun.backends.kubernetes.connect`); ``node_types`` maps ``gpu`` / ``spot`` /
    ``highmem`` / ``highcpu`` to node labels and tolerations (defaults:
    :func:`~juliarun.backends.kubernetes.manifests.default_node_types`). ``clock`` and ``sleep``
    drive every wait (delete, retries, the rate limit)."""

    kind: ClassVar[str] = "kubernetes"

    def __init__(
        self,
        api_client: Any,
        namespace: str = "juliarun",
        node_types: Mapping[str, mf.NodeTypeRule] | None = None,
        *,
        cluster: str = "kubernetes",
        image: str = "julia:1.5.3",
        git_image: str = mf.DEFAULT_GIT_IMAGE,
        gate_pods: bool = False,
        julia: str = "julia",
        home: Path | None = None,
        qps: float = 50.0,
        burst: int = 300,
        kill_grace: float = 10.0,
        poll_interval: float = 0.5,
        create_namespace: bool = True,
        broker_image: BrokerImage | None = None,
        drain_timeout: float = 120.0,
        unauthorized_hint: str | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.log = logger or logging.getLogger("juliarun.kubernetes")
        self.client = KubeClient(
            api_client,
            qps=qps,
            burst=burst,
            unauthorized_hint=unauthorized_hint,
            logger=self.log,
            clock=clock,
            sleep=sleep,
        )
        self.namespace = namespace
        self.node_types = dict(node_types) if node_types is not None else mf.default_node_types()
        self.cluster = cluster
        self.image = image
        self.git_image = git_image
        self.gate_pods = gate_pods  # pods wait gated for juliarun's placement controller
        self.julia = julia
        self.home = home or Path.home() / ".juliarun"
        self.kill_grace = kill_grace
        self.poll_interval = poll_interval
        self.clock = clock
        self.sleep = sleep
        self.routes = JobRoutes(self.client, namespace, cluster=cluster, logger=self.log)
        self.volumes = Volumes(self.client, namespace, self.home, logger=self.log)
        self.pod_logs = PodLogs(
            self.routes, cluster=cluster, poll_interval=poll_interval, logger=self.log
        )
        self.inspector = JobInspector(self.routes, self.pod_logs)
        self.view = ClusterView(
            self.client, namespace, cluster=cluster, kind=self.kind, logger=self.log
        )
        self._quotas: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self.broker_image = broker_image or BrokerImage()
        self.drain_timeout = drain_timeout
        self.queues = KubernetesQueues(
            self.client,
            namespace,
            lambda: ensure_broker_image(self.broker_image),
            clock=clock,
            sleep=sleep,
        )
        self._metrics_host: MetricsHost | None = None
        if create_namespace:
            self.ensure_namespace()

    # -- namespaces and storage (see .routes, .volumes) -------------------------------------

    def job_namespace(self, job: JobSpec) -> str:
        """Where ``job`` runs: its tenant's namespace (named after the tenant), else the
        backend's."""
        return self.routes.job_namespace(job)

    def ensure_namespace(self) -> None:
        """Create the namespace (labelled as juliarun's) unless it exists."""
        self.routes.ensure_namespace()

    def ensure_pvc(self, spec: StorageSpec, namespace: str | None = None) -> str:
        """The labelled PersistentVolumeClaim of a ``volume`` storage in ``namespace``
        (default: the backend's), created unless it exists; returns ``pvc:<ns>/<name>``."""
        return self.volumes.ensure_pvc(spec, namespace)

    def provision_storage(self, spec: StorageSpec) -> str:
        """See :meth:`.volumes.Volumes.provision`."""
        return self.volumes.provision(spec)

    def prune_storage(self) -> list[str]:
        """Nothing to prune: clones live in each pod's emptyDir, claims are the user's."""
        return []

    def bundle_paths_in_use(self) -> list[str]:
        """The package bundle addresses (paths on the node) juliarun's Jobs mount, in the
        backend's namespace and, with cluster-wide credentials, every tenant's."""
        return bundle_paths(self.routes.all_jobs())

    # -- submit -----------------------------------------------------------------------------

    def _check(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> None:
        problems = [
            ("storage", f"storage {name!r} was not given")
            for name in job.storage
            if name not in storage
        ]
        problems += self.volumes.storage_class_problems(
            {name: storage[name] for name in job.storage if name in storage}
        )
        node_type = job.resources.node_type
        if node_type and node_type not in self.node_types:
            problems.append(
                (
                    "resources.node_type",
                    f"{node_type!r} is not in this cluster's node-type map "
                    f"({', '.join(sorted(self.node_types)) or 'empty'})",
                )
            )
        if problems:
            raise SpecError(job.kind, problems, hint="fix the job or the cluster's node types")

    def manifest(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> dict[str, Any]:
        """The Job object ``submit`` would create (storage is provisioned: git checkouts, and
        the PersistentVolumeClaims of volumes in the job's namespace)."""
        self._check(job, storage)
        bundle = job_bundle(self.home, job)
        git = self.volumes.git_sources(job, storage)
        for name in job.storage:
            if storage[name].kind == "volume":
                self.ensure_pvc(storage[name], self.job_namespace(job))
        return mf.job_manifest(
            job,
            storage,
            namespace=self.job_namespace(job),
            image=self.image,
            node_types=self.node_types,
            node_paths=git.node_paths,
            git_clones=git.clones,
            git_image=self.git_image,
            cluster=self.cluster,
            julia=self.julia,
            kill_grace=self.kill_grace,
            bundle=(str(bundle.path), bundle.root) if bundle is not None else None,
            gated=self.gate_pods,
        )

    def placement_controller(self, *, interval: float = 1.0) -> PlacementController:
        """The controller that places this cluster's gated jobs whole (see
        :mod:`juliarun.backends.kubernetes.placement`); it needs credentials that may list pods,
        nodes and jobs cluster-wide and patch pods and jobs."""
        return PlacementController(self.client, interval=interval)

    # -- nodes (the cluster autoscaler's) ----------------------------------------------------

    def cluster_objects(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        return nodes.read_state(self.client)

    def mark_for_removal(self, node: str) -> None:
        nodes.mark_for_removal(self.client, node)

    def unmark(self, node: str) -> None:
        nodes.unmark(self.client, node)

    def evict_pods(self, node: str) -> tuple[int, list[str]]:
        return nodes.evict_pods(self.client, node)

    def node_provider(self, kind: str, options: Mapping[str, str]) -> Any:
        """kwok nodes on this cluster's apiserver; cloud providers by their own credentials."""
        from juliarun.providers import provider_for

        return provider_for(kind, options, kube=self.client, cluster=self.cluster)

    def job_path(self, storage: str, host_path: Path) -> str:
        """Pods see host storage at ``/mnt/<storage>``."""
        return f"/mnt/{storage}"

    def prewarm(
        self, image: str, *, node_type: str | None = None, timeout: float = 300.0
    ) -> list[NodeReadiness]:
        """A labelled DaemonSet pulls ``image`` onto every node (of ``node_type``); see
        :mod:`juliarun.backends.kubernetes.prewarm`."""
        rows = prewarm(self, image, node_type, timeout=timeout)
        return [NodeReadiness(r.node, r.ready, r.detail) for r in rows]

    def _check_quota(self, job: JobSpec, body: Mapping[str, Any], namespace: str) -> None:
        """Refuse, before anything is created, a job that alone exceeds a hard limit of a
        ResourceQuota of its namespace (its requests times workers, its pods, one more Job)."""
        now = self.clock()
        cached = self._quotas.get(namespace)
        if cached is None or now - cached[0] > QUOTA_TTL:
            try:
                listing = self.client.get(ns_path(namespace, "resourcequotas"))
                cached = (now, list(listing.get("items") or []))
            except KubeApiError as exc:
                if exc.status not in {403, 404}:
                    raise
                cached = (now, [])  # unreadable: the apiserver still enforces the quota
            self._quotas[namespace] = cached
        needs = tn.job_needs(body)
        for quota in cached[1]:
            problems = tn.quota_problems(needs, quota)
            if problems:
                raise QuotaExceededError(job.name, namespace, quota["metadata"]["name"], problems)

    def submit(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> JobStatus:
        body = self.manifest(job, storage)
        namespace = self.job_namespace(job)
        self._check_quota(job, body, namespace)
        self.routes.remember(job.name, namespace)
        try:
            created = self.client.post(self.routes.jobs_path(namespace=namespace), body)
        except KubeApiError as exc:
            if exc.status == 409:
                return self._existing(job)
            message = str(exc.body.get("message", ""))
            if exc.status == 403 and "exceeded quota" in message:
                quota = re.search(r"exceeded quota: ([^,\s]+)", message)
                raise QuotaExceededError(
                    job.name,
                    namespace,
                    quota.group(1) if quota else "?",
                    [],
                    detail=message,
                ) from exc
            if exc.status == 422:
                raise SpecError(
                    job.kind,
                    [("(kubernetes)", str(exc.body.get("message", exc)))],
                    hint="the apiserver rejected the Job; nothing was created",
                ) from exc
            raise
        return dx.diagnose(created, []).status

    def _existing(self, job: JobSpec) -> JobStatus:
        """A create met 409: the same spec (by hash) is success; anything else is not ours."""
        current = self.client.get_or_none(self.routes.jobs_path(job.name))
        meta = (current or {}).get("metadata", {})
        same = (meta.get("annotations") or {}).get(mf.SPEC_HASH) == job.spec_hash()
        if current is None or not same or meta.get("deletionTimestamp"):
            raise JobExistsError(job.name, self.cluster)
        return self.status(job.name)

    # -- status and listing -----------------------------------------------------------------

    def status(self, name: str) -> JobStatus:
        return self.inspector.status(name)

    def jobs(self) -> list[JobSpec]:
        items = sorted(
            self.routes.all_jobs(),
            key=lambda j: (j["metadata"].get("creationTimestamp", ""), j["metadata"]["name"]),
        )
        out: list[JobSpec] = []
        for item in items:
            raw = (item["metadata"].get("annotations") or {}).get(mf.SPEC)
            if not raw:
                continue
            data = json.loads(raw)
            if data.get("kind") == "JuliaParBatchWorkers":
                data["nworkers"] = int(item["spec"].get("completions") or 0)
            try:
                out.append(validate_spec(data))
            except SpecError:
                self.log.warning("job %s: unreadable spec annotation", item["metadata"]["name"])
        return out

    # -- delete / scale ---------------------------------------------------------------------

    def delete(self, name: str, *, force: bool = False, timeout: float | None = None) -> bool:
        """Delete the Job in the foreground (its pods first, then the Job) and wait until it
        is gone; ``force`` kills the pods at once (grace period 0)."""
        body: dict[str, Any] = {"propagationPolicy": "Foreground"}
        if force:
            body["gracePeriodSeconds"] = 0
        try:
            self.client.delete(self.routes.jobs_path(name), body)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            if not self.routes.tenant_jobs(name):
                raise JobNotFoundError(name, self.cluster) from exc
            self.client.delete(self.routes.jobs_path(name), body)  # in its tenant's namespace
        if force:
            self.client.delete(
                self.routes.pods_path(namespace=self.routes.ns_of(name)),
                {"gracePeriodSeconds": 0, "propagationPolicy": "Background"},
                labelSelector=mf.selector(name),
            )
        limit = timeout if timeout is not None else (0 if force else self.kill_grace) + 60
        started = self.clock()
        deadline = started + limit
        released = False
        while self.client.get_or_none(self.routes.jobs_path(name)) is not None:
            if force and not released and self.clock() - started >= FORCE_RELEASE_AFTER:
                self._release_finalizers(name)
                released = True
            if self.clock() >= deadline:
                raise BackendError(
                    f"job {name!r} is still being deleted after {limit:g}s",
                    hint=f"run `kubectl describe job {name} -n {self.routes.ns_of(name)}`",
                )
            self.sleep(min(self.poll_interval, 0.25))
        return True

    def _release_finalizers(self, name: str) -> None:
        """Force: a terminating pod whose Job-tracking finalizer the job controller has not
        removed yet (it lags under load) keeps the Job's foreground deletion waiting; drop the
        finalizers of the job's terminating pods so the deletion completes."""
        for pod in self.routes.job_pods(name):
            meta = pod.get("metadata", {})
            if meta.get("deletionTimestamp") and meta.get("finalizers"):
                try:
                    self.client.merge_patch(
                        self.routes.pods_path(meta["name"], namespace=self.routes.ns_of(name)),
                        {"metadata": {"finalizers": None}},
                    )
                except KubeApiError as exc:
                    if exc.status != 404:
                        raise

    def scale(self, name: str, workers: int) -> JobStatus:
        job = self.routes.get_job(name)
        kind = (job["metadata"].get("labels") or {}).get(mf.KIND_LABEL, "Job")
        if kind != "JuliaParBatchWorkers":
            raise SpecError(kind, [("nworkers", "only JuliaParBatchWorkers jobs can be scaled")])
        if not 0 <= workers <= 1000:
            raise SpecError(kind, [("nworkers", f"must be between 0 and 1000 (got {workers})")])
        current = dx.diagnose(job, []).status
        if current.done:
            raise BackendError(f"job {name!r} has already {current.phase}; it cannot be scaled")
        current_count = int(job["spec"].get("completions") or 0)
        path = self.routes.jobs_path(name)
        # Indexes a drain finished (a scaler stopped between the drain and the new count) are
        # completed: drop them first, so the count means running workers again.
        floor = drain.completed_floor((job.get("status") or {}).get("completedIndexes"))
        if floor is not None and 0 < floor < current_count and workers > floor:
            self.client.merge_patch(path, mf.scale_patch(floor))
        if 0 < workers < current_count:
            drain.drain(
                self.client.api_client,
                self.routes.ns_of(name),
                lambda: self.routes.job_pods(name),
                workers,
                timeout=self.drain_timeout,
                log=self.log,
                clock=self.clock,
                sleep=self.sleep,
            )
        self.client.merge_patch(path, mf.scale_patch(workers))
        return self.status(name)

    # -- queues (see .queues) ---------------------------------------------------------------

    def start_queue(self, name: str) -> Queue:
        """A RabbitMQ pod, Service and Secret in the backend's namespace (see
        :mod:`juliarun.backends.kubernetes.queues`); the broker image is built once if the
        registry does not have it."""
        return self.queues.start(name)

    def delete_queue(self, name: str, *, force: bool = False) -> bool:
        return self.queues.delete(name, force=force)

    # -- the Kubernetes HPA option (see .podautoscaler) -------------------------------------

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
    ) -> PodAutoscalerAttachment:
        """Let the cluster's HorizontalPodAutoscaler scale job ``name``'s workers from
        ``read`` (served as an external metric; see :mod:`.podautoscaler`)."""
        job = self.routes.get_job(name)
        kind = (job["metadata"].get("labels") or {}).get(mf.KIND_LABEL, "Job")
        if kind != "JuliaParBatchWorkers":
            raise SpecError(kind, [("workers", "only JuliaParBatchWorkers jobs can be scaled")])
        if self._metrics_host is None:
            self._metrics_host = MetricsHost(
                self.client, self.namespace, clock=self.clock, sleep=self.sleep
            )
        return attach_pod_autoscaler(
            self.client,
            self._metrics_host,
            job["metadata"]["namespace"],
            name,
            read=read,
            workers=lambda: self.status(name).desired_workers,
            scale=lambda n: self.scale(name, n),
            target=target,
            minimum=minimum,
            maximum=maximum,
            scale_down_window=scale_down_window,
            interval=interval,
            on_change=on_change,
            clock=self.clock,
            sleep=self.sleep,
        )

    # -- output (see .podlogs, .collector) ---------------------------------------------------

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
        """The job's output read from its pods, every worker interleaved by time, as
        :class:`~juliarun.logs.LogLine` with the worker id (``<job>-<index>``). ``follow``
        keeps yielding new lines (from workers started later too) until the job ends or
        ``stop()``. (Kubernetes merges stdout and stderr; lines are reported as stdout.)"""
        self.routes.get_job(name)
        if follow:
            yield from self.pod_logs.follow(
                name,
                since=since,
                worker=worker,
                stop=stop or (lambda: False),
                done=lambda job: self.status(job).done,
            )
            return
        yield from self.pod_logs.lines(name, since=since, lines=lines, worker=worker)

    def collect(
        self,
        name: str,
        logs: LogStore,
        metrics: MetricStore | None = None,
        *,
        on_line: Callable[[LogLine], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> CollectResult:
        """Ship the job's pod logs (and metric lines, and kubelet cpu/memory samples) into the
        stores until it ends; see :mod:`juliarun.backends.kubernetes.collector`."""
        self.routes.get_job(name)
        collector = KubernetesCollector(
            self.routes,
            name,
            logs,
            metrics,
            cluster=self.cluster,
            home=self.home,
            poll_interval=self.poll_interval,
            on_line=on_line,
        )
        return collector.run(stop=stop)

    # -- the cluster view (see .clusterview) -------------------------------------------------

    def service_endpoint(self, name: str, port: int, *, timeout: float = 60.0) -> ServiceEndpoint:
        """The pod IP of the job's first running worker (the router reaches pods directly:
        no Service object, no kube-proxy in between)."""
        self.routes.get_job(name)  # JobNotFoundError, and learns the namespace
        deadline = self.clock() + timeout
        while True:
            running = sorted(
                (
                    p
                    for p in self.routes.job_pods(name)
                    if (p.get("status") or {}).get("podIP")
                    and (p.get("status") or {}).get("phase") == "Running"
                ),
                key=lambda p: p["metadata"]["name"],
            )
            if running:
                ip = running[0]["status"]["podIP"]
                return ServiceEndpoint(self.routes.ns_of(name), f"http://{ip}:{port}")
            if self.clock() >= deadline:
                raise BackendError(
                    f"job {name!r} has no running worker to serve port {port} after {timeout} s",
                    hint=f"juliarun.status(ctx, {name!r}, verbose=True) says why",
                )
            self.sleep(self.poll_interval)

    def route_writer(self) -> KubeClient:
        """The context's own client: route objects are written as the caller (RBAC decides)."""
        return self.client

    def cluster_status(self) -> ClusterStatus:
        return self.view.status()

    def close(self) -> None:
        if self._metrics_host is not None:
            self._metrics_host.close()
        self.client.close()


def not_configured(reason: str) -> ConfigError:
    return ConfigError(
        f"the kubernetes backend is not configured: {reason}",
        hint="set JULIARUN_KUBECONFIG (or KUBECONFIG) to the cluster's kubeconfig file",
    )
