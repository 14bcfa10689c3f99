"""The Docker backend: every job is a supervisor process on this machine (as on local) whose
workers are containers on one Docker engine, with the job's cpu/memory limits, its storage at
``/mnt/<name>`` and juliarun's labels. State lives under ``JULIARUN_HOME`` like local jobs, so
every Python process on the machine sees the same jobs."""

from __future__ import annotations

import contextlib
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import docker
import docker.errors
import requests

from juliarun.backends.base import (
    ClusterStatus,
    Component,
    NodeReadiness,
    NodeStatus,
    ServiceEndpoint,
)
from juliarun.backends.bundles import job_bundle
from juliarun.backends.docker import storage as docker_storage
from juliarun.backends.docker.engine import (
    CLUSTER,
    JOB,
    MANAGED_BY,
    SCOPE,
    TENANT,
    EngineConfig,
    Names,
    RegistryAuth,
    ensure_image,
    gpu_runtimes,
    image_registry,
    root_cause,
    scope,
)
from juliarun.backends.docker.queues import DockerQueues
from juliarun.backends.docker.runtime import JULIARUN_JL
from juliarun.backends.local.backend import JULIARUN_JL as JULIARUN_JL_HOST
from juliarun.backends.supervised.backend import Plan, SupervisedBackend
from juliarun.backends.supervised.jobdir import JobDir
from juliarun.errors import BackendError, ConfigError, JobNotFoundError, SpecError
from juliarun.queues.base import Queue
from juliarun.queues.image import BrokerImage, ensure_broker_image
from juliarun.specs import Batch, JobSpec, StorageSpec

DEFAULT_IMAGE = "julia:1.10"


class DockerBackend(SupervisedBackend):
    """Jobs as containers on a Docker engine on this machine.

    A job's script, args and command are used as they are (``/mnt/<name>`` is where its
    storage is mounted). Inside a worker, ``JULIARUN_MNT`` is ``/mnt`` and
    ``JULIARUN_STORAGE_<NAME>`` is ``/mnt/<name>``; the working directory is the first
    storage. ``labels`` are added to every container (e.g. to clean up by label).
    """

    kind: ClassVar[str] = "docker"

    def __init__(
        self,
        home: Path,
        *,
        cluster: str = "docker",
        engine: EngineConfig | None = None,
        image: str = DEFAULT_IMAGE,
        registry_auth: RegistryAuth | None = None,
        labels: Mapping[str, str] | None = None,
        log_store: Mapping[str, Any] | None = None,
        metric_store: Mapping[str, Any] | None = None,
        max_workers: int = 64,
        kill_grace: float = 10.0,
        broker_image: BrokerImage | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            home,
            cluster=cluster,
            log_store=log_store,
            metric_store=metric_store,
            max_workers=max_workers,
            kill_grace=kill_grace,
            clock=clock,
            sleep=sleep,
        )
        self.engine = engine or EngineConfig()
        self.image = image
        self.registry_auth = registry_auth
        self.labels = dict(labels or {})
        self.names = Names(scope(self.home.resolve(), cluster))
        self._client: docker.DockerClient | None = None
        self.broker_image = broker_image or BrokerImage()
        self.queues = DockerQueues(
            lambda: self.client,
            self.names,
            self.home,
            cluster,
            lambda: ensure_broker_image(self.broker_image, self.client),
            clock=clock,
            sleep=sleep,
        )

    def start_queue(self, name: str) -> Queue:
        """A container of juliarun's broker image on this engine (see
        :mod:`juliarun.backends.docker.queues`); the image is built once if missing."""
        return self.queues.start(name)

    def delete_queue(self, name: str, *, force: bool = False) -> bool:
        return self.queues.delete(name, force=force)

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = self.engine.connect()
        return self._client

    def _info(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = self.client.info()
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise BackendError(
                f"the Docker engine at {self.engine.endpoint} does not answer: {exc}",
                hint="start the Docker engine, or set DOCKER_HOST to where it listens",
            ) from exc
        return info

    # -- checks and plan -------------------------------------------------------------------

    def _check(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> None:
        info = self._info()
        cores, total = int(info.get("NCPU", 1)), int(info.get("MemTotal", 0))
        res = job.resources
        problems = []
        if res.cpu_cores > cores:
            problems.append(("resources.cpu", f"asks {res.cpu} but the engine has {cores} cpus"))
        if total and res.memory_bytes > total:
            problems.append(
                ("resources.memory", f"asks {res.memory} but the engine has {total >> 20}Mi")
            )
        if res.gpu and not gpu_runtimes(info):
            runtimes = ", ".join(sorted(info.get("Runtimes", {}))) or "none"
            problems.append(
                (
                    "resources.gpu",
                    f"the Docker engine at {self.engine.endpoint} has no GPU runtime "
                    f"(its runtimes: {runtimes})",
                )
            )
        if problems:
            raise SpecError(
                job.kind,
                problems,
                hint="lower the request, or submit to a cluster that has it (GPUs on Docker "
                "need the NVIDIA Container Toolkit on the engine's host)",
            )
        ensure_image(
            self.client,
            job.image or self.image,
            kind=job.kind,
            auth=self.registry_auth,
            default=job.image is None,
        )

    def _command(self, job: JobSpec) -> list[str]:
        if isinstance(job, Batch):
            return list(job.command)
        script: str = job.script  # type: ignore[attr-defined]
        args: list[str] = job.args  # type: ignore[attr-defined]
        return ["julia", "--startup-file=no", "--color=no", script, *args]

    def _plan(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> Plan:
        image = job.image or self.image
        mounts = []
        trees: dict[str, docker_storage.GitVolume] = {}  # git storage by the name it is used as
        for name, spec in storage.items():
            if spec.kind == "git":
                trees[name] = self._git_volume(spec, image, kind=job.kind)
                source = trees[name].name
            else:
                source = self.provision_storage(spec)
            mounts.append(docker_storage.mount_for(name, spec, source))
        mounts += self._bundle_mounts(job)
        command = self._command(job)
        if not isinstance(job, Batch):
            missing = _missing_script(command[3], mounts, trees)
            if missing:
                raise SpecError(
                    job.kind,
                    [("script", f"{command[3]!r} does not exist ({missing})")],
                    hint="put the script in the job's storage, e.g. /mnt/<storage>/main.jl",
                )
        env = dict(job.env)
        bundle = job_bundle(self.home, job)
        if bundle is not None:
            env.update(bundle.env())
        for name in storage:
            env[f"JULIARUN_STORAGE_{name.upper().replace('-', '_')}"] = f"/mnt/{name}"
        env["JULIARUN_MNT"] = "/mnt"
        env["JULIARUN_CLUSTER"] = self.cluster
        env["JULIARUN_JL"] = JULIARUN_JL
        labels = {
            **self.labels,
            MANAGED_BY: "juliarun",
            JOB: job.name,
            TENANT: job.tenant,
            CLUSTER: self.cluster,
            SCOPE: self.names.scope,
        }
        runtime = {
            "kind": "docker",
            "engine": self.engine.to_json(),
            "scope": self.names.scope,
            "image": image,
            "command": command,
            "working_dir": f"/mnt/{next(iter(storage))}" if storage else None,
            "mounts": mounts,
            "labels": labels,  # the runtime adds the job's uid, the worker and the attempt
            "nano_cpus": int(job.resources.cpu_cores * 1e9),
            "mem_limit": job.resources.memory_bytes,
            "gpus": job.resources.gpu,
            "julia_jl": str(JULIARUN_JL_HOST),
        }
        return Plan(runtime=runtime, env=env)

    def _bundle_mounts(self, job: JobSpec) -> list[dict[str, Any]]:
        """The job's bundle address, read-only at the root it was compiled for."""
        bundle = job_bundle(self.home, job)
        if bundle is None:
            return []
        return [
            {
                "type": "bind",
                "target": bundle.root,
                "source": str(bundle.path),
                "read_only": True,
                "tmpfs_size": None,
            }
        ]

    def _remove_workers(self, jobdir: JobDir, state: Mapping[str, Any]) -> None:
        try:
            containers = self.client.containers.list(
                all=True, filters=self.names.job_selector(jobdir.name)
            )
        except docker.errors.APIError as exc:
            raise BackendError(
                f"cannot list the containers of job {jobdir.name!r}: {exc}",
                hint=f"remove them by hand: docker rm -f $(docker ps -aq --filter "
                f"label={JOB}={jobdir.name} --filter label={SCOPE}={self.names.scope})",
            ) from exc
        for container in containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)

    # -- Backend protocol ------------------------------------------------------------------

    def provision_storage(self, spec: StorageSpec) -> str:
        """Create the storage if needed (idempotent); returns the volume's name for ``volume``
        and ``git`` storage (a git volume is filled with the backend's default image as the
        helper's: a job fills it with its own, see :mod:`~juliarun.backends.docker.storage`)."""
        if spec.kind == "volume":
            volume = f"juliarun-{self.names.scope}-{spec.name}"
            return docker_storage.provision_volume(self.client, spec, volume, self._labels())
        if spec.kind == "git":
            return self._git_volume(spec, self.image, kind="StorageSpec").name
        return docker_storage.provision(spec, self.home)

    def prewarm(
        self, image: str, *, node_type: str | None = None, timeout: float = 300.0
    ) -> list[NodeReadiness]:
        """The engine (this cluster's one node) pulls ``image`` with the cluster's registry
        credentials; :class:`SpecError` naming ``image`` when it cannot be pulled."""
        node = str(self.client.info().get("Name", "docker"))
        try:
            self.client.images.get(image)
            return [NodeReadiness(node, True, f"{image} is present already")]
        except docker.errors.ImageNotFound:
            pass
        ensure_image(self.client, image, kind="prewarm", auth=self.registry_auth, default=False)
        return [NodeReadiness(node, True, f"pulled {image}")]

    def prune_storage(self) -> list[str]:
        """Remove git storage volumes a newer commit replaced that no container uses; returns
        their names (see :func:`~juliarun.backends.docker.storage.prune_git_volumes`)."""
        return docker_storage.prune_git_volumes(self.client, self.names.scope)

    def _labels(self) -> dict[str, str]:
        """The labels of juliarun's volumes (and helper containers) on the engine."""
        return {
            **self.labels,
            MANAGED_BY: "juliarun",
            CLUSTER: self.cluster,
            SCOPE: self.names.scope,
        }

    def _git_volume(self, spec: StorageSpec, image: str, *, kind: str) -> docker_storage.GitVolume:
        """The volume of git storage ``spec`` at its ref's commit, filled with a helper of
        ``image`` (pulled if missing; an image that cannot be pulled is a ``SpecError`` of
        ``kind`` naming it)."""
        return docker_storage.provision_git(
            self.client,
            spec,
            self.home,
            scope=self.names.scope,
            labels=self._labels(),
            image=image,
            ensure_image=lambda: ensure_image(
                self.client,
                image,
                kind=kind,
                auth=self.registry_auth,
                default=image == self.image,
            ),
        )

    def service_endpoint(self, name: str, port: int, *, timeout: float = 60.0) -> ServiceEndpoint:
        """The address of the job's worker 0 on the engine's network (reached from this machine,
        where the router runs as a local process)."""
        spec = next((j for j in self.jobs() if j.name == name), None)
        if spec is None:
            raise JobNotFoundError(name, self.cluster)
        deadline = self.clock() + timeout
        while True:
            try:
                container = self.client.containers.get(self.names.container(f"{name}-0"))
                container.reload()
            except docker.errors.NotFound:
                container = None
            if container is not None and container.status == "running":
                networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
                ip = next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), "")
                if ip:
                    return ServiceEndpoint(spec.tenant, f"http://{ip}:{port}")
            if self.clock() >= deadline:
                raise BackendError(
                    f"job {name!r} has no running worker with an address after {timeout} s",
                    hint=f"juliarun.status(ctx, {name!r}, verbose=True) says why",
                )
            self.sleep(0.2)

    def cluster_status(self) -> ClusterStatus:
        components: list[Component] = []
        try:
            client = self.client
            version = client.version()
            info = client.info()
            components.append(
                Component(
                    "docker-engine",
                    True,
                    f"{version.get('Version', '?')} (API {version.get('ApiVersion', '?')})",
                )
            )
        except (
            docker.errors.DockerException,
            requests.exceptions.RequestException,
            ConfigError,
        ) as exc:
            info = {}
            reason = exc.message if isinstance(exc, ConfigError) else root_cause(exc)
            components.append(Component("docker-engine", False, reason))
        registry = image_registry(self.image)
        reachable, detail = _registry_reachable(registry)
        components += [
            Component(f"registry {registry}", reachable, detail),
            Component("log-store", True, f"{self.log_store['kind']}"),
            Component("metric-store", True, f"{self.metric_store['kind']}"),
        ]
        waiting, running = self._waiting_and_running()
        nodes = [self._node(info, running)] if info else []
        return ClusterStatus(
            cluster=self.cluster,
            kind=self.kind,
            endpoint=self.engine.endpoint,
            components=components,
            waiting_for_scheduler=waiting,
            nodes=nodes,
        )

    def _node(self, info: Mapping[str, Any], running: int) -> NodeStatus:
        """The engine's host: free cpu and memory after the limits of running containers."""
        cores, total = int(info.get("NCPU", 1)), int(info.get("MemTotal", 1))
        cpu_used = mem_used = 0.0
        with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
            for container in self.client.containers.list():
                host = container.attrs.get("HostConfig", {})
                cpu_used += (host.get("NanoCpus") or 0) / 1e9
                mem_used += host.get("Memory") or 0
        root = Path(str(info.get("DockerRootDir", "")))
        disk = shutil.disk_usage(root if root.is_dir() else self.home.anchor)
        return NodeStatus(
            name=str(info.get("Name", "docker")),
            ready=True,
            cpu=max(0, round(100 * (1 - min(cpu_used / cores, 1.0)))),
            gpu=0,
            mem=max(0, round(100 * (1 - min(mem_used / total, 1.0)))),
            dsk=round(100 * disk.free / disk.total),
            pod=max(0, round(100 * (1 - running / self.max_workers))),
            labels={"juliarun.io/gpu-runtimes": ",".join(gpu_runtimes(info)) or "none"},
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _missing_script(
    script: str, mounts: list[dict[str, Any]], trees: Mapping[str, docker_storage.GitVolume]
) -> str | None:
    """Where ``script`` was looked for when it is known not to exist (``None``: it exists, or
    it lies where nothing can be checked from here, e.g. in the image or on a volume)."""
    path = docker_storage.host_path(script, mounts)
    if path is not None:
        return None if path.is_file() else f"looked at {path}"
    for name, tree in trees.items():
        prefix = f"{docker_storage.MNT}/{name}/"
        if script.startswith(prefix) and not tree.has_file(script.removeprefix(prefix)):
            return f"not in commit {tree.commit[:12]} of git storage {name!r}"
    return None


def _registry_reachable(registry: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether ``registry`` answers its ``/v2/`` endpoint (401 counts: it wants a login)."""
    host = "registry-1.docker.io" if registry == "docker.io" else registry
    last = ""
    for scheme in ("https", "http"):
        try:
            with urllib.request.urlopen(f"{scheme}://{host}/v2/", timeout=timeout) as resp:
                return True, f"{scheme}://{host} answered {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return True, f"{scheme}://{host} answered 401 (login required)"
            last = f"{scheme}://{host} answered {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = f"{scheme}://{host}: {getattr(exc, 'reason', exc)}"
    return False, last
