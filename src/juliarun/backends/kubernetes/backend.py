"""The Kubernetes backend: every job is a ``batch/v1`` Job (see :mod:`.manifests`), its status is
diagnosed from the Job, its pods, its events and the nodes (see :mod:`.diagnosis`), and its
output is read from the pods' logs."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from juliarun.backends.base import (
    ClusterStatus,
    CollectResult,
    Component,
    JobStatus,
    NodeReadiness,
    NodeStatus,
)
from juliarun.backends.bundles import job_bundle
from juliarun.backends.kubernetes import diagnosis as dx
from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes import tenants as tn
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.backends.kubernetes.watch import resumable_watch
from juliarun.errors import (
    BackendError,
    ConfigError,
    JobExistsError,
    JobNotFoundError,
    QuotaExceededError,
    SpecError,
    StorageError,
)
from juliarun.logs.base import LogLine, LogStore
from juliarun.metrics.base import MetricStore
from juliarun.specs import JobSpec, StorageSpec, parse_quantity, validate_spec

_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d) ?(.*)$", re.S)
LAST_LINES = 10
QUOTA_TTL = 10.0  # seconds a namespace's ResourceQuotas are reused by the submit check


def parse_log_line(line: str) -> tuple[datetime, str]:
    """A ``timestamps=true`` pod log line as (UTC time, message).

    >>> stamp, text = parse_log_line("2026-06-21T17:21:49.123456789Z hello world!")
    >>> stamp.isoformat(), text
    ('2026-06-21T17:21:49.123456+00:00', 'hello world!')
    """
    m = _LOG_TS.match(line)
    if not m:
        return datetime.now(UTC), line
    frac = (m.group(2) or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    stamp = datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").astimezone(UTC)
    return stamp, m.group(4)


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
        julia: str = "julia",
        home: Path | None = None,
        qps: float = 50.0,
        burst: int = 300,
        kill_grace: float = 10.0,
        poll_interval: float = 0.5,
        create_namespace: bool = True,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.log = logger or logging.getLogger("juliarun.kubernetes")
        self.client = KubeClient(
            api_client, qps=qps, burst=burst, logger=self.log, clock=clock, sleep=sleep
        )
        self.namespace = namespace
        self.node_types = dict(node_types) if node_types is not None else mf.default_node_types()
        self.cluster = cluster
        self.image = image
        self.git_image = git_image
        self.julia = julia
        self.home = home or Path.home() / ".juliarun"
        self.kill_grace = kill_grace
        self.poll_interval = poll_interval
        self.clock = clock
        self.sleep = sleep
        self._where: dict[str, str] = {}  # job name → namespace, when not ``namespace``
        self._cluster_wide: bool | None = None  # may these credentials list jobs everywhere?
        self._quotas: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        if create_namespace:
            self.ensure_namespace()

    # -- paths ------------------------------------------------------------------------------

    def job_namespace(self, job: JobSpec) -> str:
        """Where ``job`` runs: its tenant's namespace (named after the tenant), else the
        backend's."""
        return self.namespace if job.tenant == "default" else job.tenant

    def _ns_of(self, name: str) -> str:
        return self._where.get(name, self.namespace)

    def _jobs(self, name: str | None = None, namespace: str | None = None) -> str:
        ns = namespace or (self._ns_of(name) if name else self.namespace)
        return ns_path(ns, "jobs", name, group="batch/v1")

    def _pods(self, name: str | None = None, namespace: str | None = None) -> str:
        # an Indexed Job's pod is named <job>-<index>-<suffix>: it lives where its job does
        ns = namespace or (self._ns_of(name.rsplit("-", 2)[0]) if name else self.namespace)
        return ns_path(ns, "pods", name)

    def _tenant_jobs(self, name: str | None = None) -> list[dict[str, Any]]:
        """juliarun's jobs in tenant namespaces other than the backend's (each in the
        namespace named by its tenant label), when the credentials may list jobs cluster-wide;
        remembers where each is."""
        if self._cluster_wide is False:
            return []
        selector = mf.selector(name) + f",{mf.TENANT_LABEL}!=default"
        try:
            listing = self.client.get("/apis/batch/v1/jobs", labelSelector=selector)
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            self._cluster_wide = False  # a tenant's credentials: its own namespace only
            return []
        self._cluster_wide = True
        found = []
        for item in listing.get("items") or []:
            meta = item["metadata"]
            ns = meta.get("namespace")
            if ns == self.namespace or (meta.get("labels") or {}).get(mf.TENANT_LABEL) != ns:
                continue
            self._where[meta["name"]] = ns
            found.append(item)
        return found

    def ensure_namespace(self) -> None:
        """Create the namespace (labelled as juliarun's) unless it exists."""
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": {mf.MANAGED_BY: "juliarun"}},
        }
        try:
            self.client.post("/api/v1/namespaces", body)
        except KubeApiError as exc:
            if exc.status == 409:
                return
            if exc.status != 403:
                raise
        try:
            self.client.get_or_none(f"/api/v1/namespaces/{self.namespace}")
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            # a tenant's credentials may not read namespaces: every later call names it, and
            # fails with the apiserver's own reason if it is not theirs
            self.log.debug("namespace %s: not readable with these credentials", self.namespace)

    # -- submit -----------------------------------------------------------------------------

    def _check(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> None:
        problems = [
            ("storage", f"storage {name!r} was not given")
            for name in job.storage
            if name not in storage
        ]
        problems += self._storage_class_problems(
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

    def _storage_class_problems(self, storage: Mapping[str, StorageSpec]) -> list[tuple[str, str]]:
        """``(field, rule)`` for every volume storage whose StorageClass does not exist."""
        problems: list[tuple[str, str]] = []
        existing: list[str] | None = None
        for name, spec in storage.items():
            if spec.kind != "volume" or not spec.storage_class:
                continue
            path = f"/apis/storage.k8s.io/v1/storageclasses/{spec.storage_class}"
            try:
                if self.client.get_or_none(path) is not None:
                    continue
            except KubeApiError as exc:
                if exc.status != 403:
                    raise
                continue  # not readable with these credentials: the PVC stays Pending
            if existing is None:
                listing = self.client.get("/apis/storage.k8s.io/v1/storageclasses")
                existing = sorted(i["metadata"]["name"] for i in listing.get("items") or [])
            problems.append(
                (
                    f"storage.{name}.storage_class",
                    f"StorageClass {spec.storage_class!r} does not exist in this cluster "
                    f"(its classes: {', '.join(existing) or 'none'})",
                )
            )
        return problems

    def ensure_pvc(self, spec: StorageSpec, namespace: str | None = None) -> str:
        """The labelled PersistentVolumeClaim of a ``volume`` storage in ``namespace``
        (default: the backend's), created unless it exists; returns ``pvc:<ns>/<name>``."""
        ns = namespace or self.namespace
        problems = self._storage_class_problems({spec.name: spec})
        if problems:
            raise StorageError(
                f"{problems[0][0]}: {problems[0][1]}",
                hint="use one of the cluster's classes, or create the StorageClass",
            )
        body = mf.pvc_manifest(spec, ns)
        try:
            self.client.post(ns_path(ns, "persistentvolumeclaims"), body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise StorageError(
                    f"storage {spec.name!r}: cannot create PersistentVolumeClaim "
                    f"{mf.pvc_name(spec)} in {ns}: {exc.message}",
                    hint=f"run `kubectl describe pvc {mf.pvc_name(spec)} -n {ns}`",
                ) from exc
        return f"pvc:{ns}/{mf.pvc_name(spec)}"

    def provision_storage(self, spec: StorageSpec) -> str:
        """volume: its PersistentVolumeClaim in the backend's namespace (a StorageClass that
        does not exist is refused, naming the classes that do). host: the directory, made here
        (the test cluster's node is this machine; on other clusters the kubelet creates it,
        hostPath ``DirectoryOrCreate``); ramdisk: nothing to make (a memory-backed emptyDir per
        pod); git: a checkout made here, at the resolved commit (a network URL is cloned again
        by each pod's init container; a local path is mounted read-only from the node)."""
        if spec.kind == "host":
            try:
                Path(spec.path or "").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.log.debug("host storage %s not made here: %s", spec.path, exc)
            return f"hostPath:{spec.path}"
        if spec.kind == "ramdisk":
            return f"emptyDir:Memory:{spec.size or 'unbounded'}"
        if spec.kind == "volume":
            return self.ensure_pvc(spec)
        return str(self._git_checkout(spec)[0])

    def _git_checkout(self, spec: StorageSpec) -> tuple[Path, str]:
        """The checkout of git storage here, and the commit its ref resolved to."""
        from juliarun.backends.local import storage as local_storage

        try:
            with local_storage.git_checkout(spec, self.home) as found:
                return found
        except OSError as exc:
            raise StorageError(f"storage {spec.name!r}: {exc}") from exc

    def prune_storage(self) -> list[str]:
        """Nothing to prune: clones live in each pod's emptyDir, claims are the user's."""
        return []

    def manifest(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> dict[str, Any]:
        """The Job object ``submit`` would create (storage is provisioned: git checkouts, and
        the PersistentVolumeClaims of volumes in the job's namespace)."""
        self._check(job, storage)
        bundle = job_bundle(self.home, job)
        node_paths: dict[str, str] = {}
        git_clones: dict[str, tuple[str, str]] = {}
        for name, spec in storage.items():
            if spec.kind != "git" or name not in job.storage:
                continue
            # The checkout here resolves (and checks) the ref before anything is created; a
            # network URL is then cloned at that commit by the pod's init container (any node),
            # a local path is mounted from the node (the node is this machine).
            checkout, commit = self._git_checkout(spec)
            if mf.is_remote_git(spec.url or ""):
                git_clones[name] = (spec.url or "", commit)
            else:
                node_paths[name] = str(checkout)
        for name in job.storage:
            if storage[name].kind == "volume":
                self.ensure_pvc(storage[name], self.job_namespace(job))
        return mf.job_manifest(
            job,
            storage,
            namespace=self.job_namespace(job),
            image=self.image,
            node_types=self.node_types,
            node_paths=node_paths,
            git_clones=git_clones,
            git_image=self.git_image,
            cluster=self.cluster,
            julia=self.julia,
            kill_grace=self.kill_grace,
            bundle=(str(bundle.path), bundle.root) if bundle is not None else None,
        )

    def job_path(self, storage: str, host_path: Path) -> str:
        """Pods see host storage at ``/mnt/<storage>``."""
        return f"/mnt/{storage}"

    def prewarm(
        self, image: str, *, node_type: str | None = None, timeout: float = 300.0
    ) -> list[NodeReadiness]:
        """A labelled DaemonSet pulls ``image`` onto every node (of ``node_type``); see
        :mod:`juliarun.backends.kubernetes.prewarm`."""
        from juliarun.backends.kubernetes.prewarm import prewarm

        rows = prewarm(self, image, node_type, timeout=timeout)
        return [NodeReadiness(r.node, r.ready, r.detail) for r in rows]

    def bundle_paths_in_use(self) -> list[str]:
        """The package bundle addresses (paths on the node) juliarun's Jobs mount, in the
        backend's namespace and, with cluster-wide credentials, every tenant's."""
        jobs = list(self.client.get(self._jobs(), labelSelector=mf.selector()).get("items") or [])
        jobs += self._tenant_jobs()
        paths = []
        for job in jobs:
            for volume in job["spec"]["template"]["spec"].get("volumes") or []:
                if volume.get("name") == mf.BUNDLE_VOLUME:
                    paths.append(str(volume["hostPath"]["path"]))
        return paths

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
        if namespace != self.namespace:
            self._where[job.name] = namespace
        try:
            created = self.client.post(self._jobs(namespace=namespace), body)
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
        current = self.client.get_or_none(self._jobs(job.name))
        meta = (current or {}).get("metadata", {})
        same = (meta.get("annotations") or {}).get(mf.SPEC_HASH) == job.spec_hash()
        if current is None or not same or meta.get("deletionTimestamp"):
            raise JobExistsError(job.name, self.cluster)
        return self.status(job.name)

    # -- status -----------------------------------------------------------------------------

    def _get_job(self, name: str) -> dict[str, Any]:
        job = self.client.get_or_none(self._jobs(name))
        if job is None:
            job = next(iter(self._tenant_jobs(name)), None)
        if job is None:
            raise JobNotFoundError(name, self.cluster)
        return dict(job)

    def _job_pods(self, name: str) -> list[dict[str, Any]]:
        pods = self.client.get(
            self._pods(namespace=self._ns_of(name)), labelSelector=mf.selector(name)
        )
        return list(pods.get("items") or [])

    def status(self, name: str) -> JobStatus:
        job = self._get_job(name)
        pods = self._job_pods(name)
        done = any(
            c.get("status") == "True" and c.get("type") in {"Complete", "Failed"}
            for c in job.get("status", {}).get("conditions") or []
        )
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        desired = int(job["spec"].get("completions") or 0)
        events: list[dict[str, Any]] = []
        if not done and len(live) < desired:
            uid = job["metadata"].get("uid")
            listing = self.client.get(
                ns_path(self._ns_of(name), "events"),
                fieldSelector=f"involvedObject.kind=Job,involvedObject.name={name}",
            )
            events = [
                e for e in listing.get("items") or [] if e["involvedObject"].get("uid") == uid
            ]
        if not done and any(dx.waiting_to_mount(p) for p in live):
            # Why storage does not mount is said only in the pods' FailedMount events.
            names = {p["metadata"]["name"] for p in live}
            listing = self.client.get(
                ns_path(self._ns_of(name), "events"),
                fieldSelector="involvedObject.kind=Pod,reason=FailedMount",
            )
            events += [
                e for e in listing.get("items") or [] if e["involvedObject"].get("name") in names
            ]
        nodes = None
        if any(
            dx._pending_unscheduled(p)
            or (dx._pending_unassigned(p) and p["spec"].get("nodeSelector"))
            for p in pods
        ):
            nodes = self._nodes()
        report = dx.diagnose(job, pods, events, nodes)
        if report.log_pod:
            report.status.last_lines = self._last_lines(report.log_pod)
        return report.status

    def _nodes(self) -> list[dict[str, Any]] | None:
        try:
            return list(self.client.get("/api/v1/nodes").get("items") or [])
        except KubeApiError as exc:
            if exc.status == 403:  # a tenant may not read nodes: diagnose from messages only
                return None
            raise

    def _last_lines(self, pod: str) -> list[str]:
        for previous in (False, True):
            try:
                text = self.client.request(
                    "GET",
                    f"{self._pods(pod)}/log",
                    query={"container": mf.MAIN, "tailLines": LAST_LINES, "previous": previous},
                    raw=True,
                )
            except KubeApiError:
                continue
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-LAST_LINES:]
        return []

    def jobs(self) -> list[JobSpec]:
        listing = self.client.get(self._jobs(), labelSelector=mf.selector())
        items = sorted(
            [*(listing.get("items") or []), *self._tenant_jobs()],
            key=lambda j: (j["metadata"].get("creationTimestamp", ""), j["metadata"]["name"]),
        )
        out: list[JobSpec] = []
        for item in items:
            raw = (item["metadata"].get("annotations") or {}).get(mf.SPEC)
            if not raw:
                continue
            import json

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
            self.client.delete(self._jobs(name), body)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            if not self._tenant_jobs(name):
                raise JobNotFoundError(name, self.cluster) from exc
            self.client.delete(self._jobs(name), body)  # found in its tenant's namespace
        if force:
            self.client.delete(
                self._pods(namespace=self._ns_of(name)),
                {"gracePeriodSeconds": 0, "propagationPolicy": "Background"},
                labelSelector=mf.selector(name),
            )
        limit = timeout if timeout is not None else (0 if force else self.kill_grace) + 60
        started = self.clock()
        deadline = started + limit
        released = False
        while self.client.get_or_none(self._jobs(name)) is not None:
            if force and not released and self.clock() - started >= FORCE_RELEASE_AFTER:
                self._release_finalizers(name)
                released = True
            if self.clock() >= deadline:
                raise BackendError(
                    f"job {name!r} is still being deleted after {limit:g}s",
                    hint=f"run `kubectl describe job {name} -n {self._ns_of(name)}`",
                )
            self.sleep(min(self.poll_interval, 0.25))
        return True

    def _release_finalizers(self, name: str) -> None:
        """Force: a terminating pod whose Job-tracking finalizer the job controller has not
        removed yet (it lags under load) keeps the Job's foreground deletion waiting; drop the
        finalizers of the job's terminating pods so the deletion completes."""
        namespace = self._ns_of(name)
        pods = self.client.get(self._pods(namespace=namespace), labelSelector=mf.selector(name))
        for pod in pods.get("items", []):
            meta = pod.get("metadata", {})
            if meta.get("deletionTimestamp") and meta.get("finalizers"):
                try:
                    self.client.merge_patch(
                        self._pods(meta["name"], namespace=namespace),
                        {"metadata": {"finalizers": None}},
                    )
                except KubeApiError as exc:
                    if exc.status != 404:
                        raise

    def scale(self, name: str, workers: int) -> JobStatus:
        job = self._get_job(name)
        kind = (job["metadata"].get("labels") or {}).get(mf.KIND_LABEL, "Job")
        if kind != "JuliaParBatchWorkers":
            raise SpecError(kind, [("nworkers", "only JuliaParBatchWorkers jobs can be scaled")])
        if not 0 <= workers <= 1000:
            raise SpecError(kind, [("nworkers", f"must be between 0 and 1000 (got {workers})")])
        current = dx.diagnose(job, []).status
        if current.done:
            raise BackendError(f"job {name!r} has already {current.phase}; it cannot be scaled")
        self.client.merge_patch(self._jobs(name), mf.scale_patch(workers))
        return self.status(name)

    # -- logs -------------------------------------------------------------------------------

    def _read_log(
        self, pod: str, *, lines: int | None = None, since: datetime | None = None
    ) -> list[tuple[datetime, str]]:
        query: dict[str, Any] = {"container": mf.MAIN, "timestamps": True}
        if lines is not None:
            query["tailLines"] = lines
        if since is not None:
            query["sinceTime"] = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            text = self.client.request("GET", f"{self._pods(pod)}/log", query=query, raw=True)
        except KubeApiError as exc:
            if exc.status in {400, 404}:  # not started yet, or gone
                return []
            raise
        return [parse_log_line(ln) for ln in text.splitlines() if ln]

    def _line(
        self, name: str, wid: str, stamp: datetime, message: str, pod: dict[str, Any]
    ) -> LogLine:
        tenant = (pod["metadata"].get("labels") or {}).get(mf.TENANT_LABEL, "default")
        return LogLine(stamp, name, wid, "stdout", message, cluster=self.cluster, tenant=tenant)

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
        self._get_job(name)
        if follow:
            yield from self._follow(name, since, worker, stop or (lambda: False))
            return
        found: list[LogLine] = []
        for pod in sorted(self._job_pods(name), key=lambda p: p["metadata"]["creationTimestamp"]):
            wid = dx.worker_id(name, pod)
            if worker is not None and wid != worker:
                continue
            for stamp, message in self._read_log(pod["metadata"]["name"], lines=lines, since=since):
                found.append(self._line(name, wid, stamp, message, pod))
        found.sort(key=lambda ln: ln.timestamp)
        yield from found[-lines:] if lines else found

    def _follow(
        self,
        name: str,
        since: datetime | None,
        worker: str | None,
        stop: Callable[[], bool],
    ) -> Iterator[LogLine]:
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        stopped = threading.Event()
        streams: dict[tuple[str, int], threading.Thread] = {}
        finished: set[tuple[str, int]] = set()
        open_responses: list[Any] = []

        def pump(key: tuple[str, int], pod: dict[str, Any]) -> None:
            wid = dx.worker_id(name, pod)
            query: dict[str, Any] = {"container": mf.MAIN, "timestamps": True, "follow": True}
            if since is not None:
                query["sinceTime"] = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            try:
                resp = self.client.stream(
                    f"{self._pods(key[0])}/log", query=query, timeout=(10.0, 3600.0)
                )
                open_responses.append(resp)
                for raw in resp.lines():
                    if stopped.is_set():
                        break
                    if raw:
                        stamp, message = parse_log_line(raw)
                        events.put(("line", self._line(name, wid, stamp, message, pod)))
            except (BackendError, OSError) as exc:
                self.log.debug("log stream of %s ended: %s", key[0], exc)
            finally:
                events.put(("end", key))

        def consider(pod: dict[str, Any]) -> None:
            if worker is not None and dx.worker_id(name, pod) != worker:
                return
            cs = dx._main(pod)
            state = cs.get("state") or {}
            if not ("running" in state or "terminated" in state):
                return
            key = (pod["metadata"]["name"], int(cs.get("restartCount") or 0))
            if key in streams:
                return
            thread = threading.Thread(target=pump, args=(key, pod), daemon=True)
            streams[key] = thread
            thread.start()

        def watch_pods() -> None:
            def list_fn() -> Mapping[str, Any]:
                return self.client.get(  # type: ignore[no-any-return]
                    self._pods(namespace=self._ns_of(name)), labelSelector=mf.selector(name)
                )

            def watch_fn(version: str) -> Iterator[str]:
                resp = self.client.stream(
                    self._pods(namespace=self._ns_of(name)),
                    query={
                        "watch": True,
                        "resourceVersion": version,
                        "allowWatchBookmarks": True,
                        "labelSelector": mf.selector(name),
                        "timeoutSeconds": 10,
                    },
                    timeout=(10, 30),
                )
                open_responses.append(resp)
                return resp.lines()

            try:
                for kind, pod in resumable_watch(
                    list_fn, watch_fn, stop=stopped.is_set, sleep=time.sleep
                ):
                    if kind != "DELETED":
                        events.put(("pod", pod))
            except Exception as exc:  # the follow ends on its own poll; say why
                events.put(("watch-error", exc))

        watcher = threading.Thread(target=watch_pods, daemon=True)
        watcher.start()
        next_check = 0.0
        done = False
        try:
            while True:
                try:
                    kind, item = events.get(timeout=self.poll_interval)
                except queue.Empty:
                    kind, item = "tick", None
                if kind == "line":
                    yield item
                    continue
                if kind == "pod":
                    consider(item)
                elif kind == "end":
                    finished.add(item)
                if stop():
                    return
                if not done and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.poll_interval
                    done = self.status(name).done
                    if done:  # streams for pods whose events the watch has not shown yet
                        for pod in self._job_pods(name):
                            consider(pod)
                if done and set(streams) <= finished and events.empty():
                    return
        finally:
            stopped.set()
            for resp in open_responses:
                resp.close()

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
        from juliarun.backends.kubernetes.collector import KubernetesCollector

        self._get_job(name)
        collector = KubernetesCollector(self, name, logs, metrics, on_line=on_line)
        return collector.run(stop=stop)

    # -- the cluster view -------------------------------------------------------------------

    def _health(self) -> list[Component]:
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

    def _all_pods(self, field_selector: str) -> list[dict[str, Any]]:
        try:
            listing = self.client.get("/api/v1/pods", fieldSelector=field_selector)
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            listing = self.client.get(self._pods(), fieldSelector=field_selector)
        return list(listing.get("items") or [])

    def _disk_free(self, node: dict[str, Any]) -> float | None:
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

    def cluster_status(self) -> ClusterStatus:
        components = self._health()
        nodes = list(self.client.get("/api/v1/nodes").get("items") or [])
        pending = self._all_pods("status.phase=Pending")
        waits = [dx.waiting_kind(p, nodes) for p in pending]
        active = self._all_pods("status.phase!=Succeeded,status.phase!=Failed")
        by_node: dict[str, list[dict[str, Any]]] = {}
        for pod in active:
            node_name = pod.get("spec", {}).get("nodeName")
            if node_name:
                by_node.setdefault(node_name, []).append(pod)
        rows = [
            node_status(n, by_node.get(n["metadata"]["name"], []), self._disk_free(n))
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

    def close(self) -> None:
        self.client.close()


def _pct(free: Decimal, total: Decimal) -> int:
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
        for k, v in dx.pod_requests(pod).items():
            used[k] = used.get(k, Decimal(0)) + v

    def free(resource: str) -> int:
        total = alloc.get(resource, Decimal(0))
        return _pct(total - used.get(resource, Decimal(0)), total)

    disk = round(100 * disk_free) if disk_free is not None else free("ephemeral-storage")
    pod_total = alloc.get("pods", Decimal(0))
    labels = node["metadata"].get("labels") or {}
    return NodeStatus(
        name=node["metadata"]["name"],
        ready=dx._true(node, "Ready"),
        cpu=free("cpu"),
        gpu=free(mf.GPU_RESOURCE),
        mem=free("memory"),
        dsk=disk,
        pod=_pct(pod_total - len(pods), pod_total),
        labels={k: v for k, v in labels.items() if k.startswith("juliarun.io/")},
    )


def not_configured(reason: str) -> ConfigError:
    return ConfigError(
        f"the kubernetes backend is not configured: {reason}",
        hint="set JULIARUN_KUBECONFIG (or KUBECONFIG) to a kubeconfig file, e.g. "
        'eval "$(scripts/testenv env)"',
    )
