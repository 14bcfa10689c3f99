"""The local backend, the embedded default: every job is a supervisor process on this machine
running one process group per worker. State lives under ``JULIARUN_HOME`` so every Python
process on the machine sees the same jobs."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import psutil

from juliarun.backends.base import (
    ClusterStatus,
    Component,
    NodeReadiness,
    NodeStatus,
    ServiceEndpoint,
)
from juliarun.backends.bundles import job_bundle
from juliarun.backends.local import storage as local_storage
from juliarun.backends.local.runtime import kill_worker_group
from juliarun.backends.supervised.backend import Plan, SupervisedBackend
from juliarun.backends.supervised.jobdir import JobDir
from juliarun.errors import BackendError, JobNotFoundError, SpecError
from juliarun.queues.base import Queue
from juliarun.specs import Batch, JobSpec, StorageSpec

MNT = "/mnt/"
JULIARUN_JL = Path(__file__).resolve().parents[2] / "julia" / "JuliaRun.jl"


class LocalBackend(SupervisedBackend):
    """Jobs as process groups on this machine.

    ``/mnt/<name>`` in a job's script, args and command is rewritten to the storage's directory;
    inside the job, ``JULIARUN_MNT`` is a directory with one entry per mounted storage and
    ``JULIARUN_STORAGE_<NAME>`` (upper case, ``-`` as ``_``) the directory of each.
    """

    kind: ClassVar[str] = "local"
    image: str | None = None  # jobs are processes, not containers

    def __init__(
        self,
        home: Path,
        *,
        cluster: str = "local",
        log_store: Mapping[str, Any] | None = None,
        metric_store: Mapping[str, Any] | None = None,
        julia: str = "julia",
        max_workers: int = 64,
        kill_grace: float = 10.0,
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
        self.julia = julia

    # -- helpers -------------------------------------------------------------------------

    def _command(self, job: JobSpec, mounts: Mapping[str, Path]) -> list[str]:
        def rewrite(arg: str) -> str:
            for name, path in mounts.items():
                prefix = f"{MNT}{name}"
                if arg == prefix or arg.startswith(prefix + "/"):
                    return str(path) + arg[len(prefix) :]
            return arg

        if isinstance(job, Batch):
            return [rewrite(a) for a in job.command]
        script = rewrite(job.script)  # type: ignore[attr-defined]
        args = [rewrite(a) for a in job.args]  # type: ignore[attr-defined]
        return [self.julia, "--startup-file=no", "--color=no", script, *args]

    def _check_fits(self, job: JobSpec) -> None:
        cores = os.cpu_count() or 1
        total = psutil.virtual_memory().total
        res = job.resources
        problems = []
        if res.cpu_cores > cores:
            problems.append(("resources.cpu", f"asks {res.cpu} but this machine has {cores} cores"))
        if res.memory_bytes > total:
            problems.append(
                ("resources.memory", f"asks {res.memory} but this machine has {total >> 20}Mi")
            )
        if res.gpu:
            problems.append(("resources.gpu", "the local backend has no GPUs"))
        if problems:
            raise SpecError(
                job.kind, problems, hint="lower the request, or submit to a larger cluster"
            )

    def _check(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> None:
        self._check_fits(job)

        if not isinstance(job, Batch) and shutil.which(self.julia) is None:
            raise BackendError(
                f"julia executable {self.julia!r} not found",
                hint="install Julia, or set JULIARUN_JULIA to its julia executable",
            )

    def start_queue(self, name: str) -> Queue:
        """A dedicated ``rabbitmq-server`` of this cluster on this machine (own node name,
        ports, data directory and generated credentials)."""
        from juliarun.queues.local import start_local_broker

        return start_local_broker(self.home, self.cluster, name)

    def delete_queue(self, name: str, *, force: bool = False) -> bool:
        from juliarun.queues.local import delete_local_broker

        return delete_local_broker(self.home, self.cluster, name, force=force)

    def job_path(self, storage: str, host_path: Path) -> str:
        """A local job sees the directory itself."""
        return str(host_path)

    def prewarm(
        self, image: str, *, node_type: str | None = None, timeout: float = 300.0
    ) -> list[NodeReadiness]:
        """Nothing to pull: local jobs run as processes.

        >>> LocalBackend(Path("/tmp/juliarun-doctest")).prewarm("julia:1.5")[0].detail
        'local jobs run as processes: no image to pull'
        """
        return [NodeReadiness("local", True, "local jobs run as processes: no image to pull")]

    def _plan(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> Plan:
        bundle_env = self._bundle_env(job)
        mounts = {name: Path(self.provision_storage(spec)) for name, spec in storage.items()}
        command = self._command(job, mounts)
        if not isinstance(job, Batch) and not Path(command[3]).is_file():
            raise SpecError(
                job.kind,
                [("script", f"{job.script!r} does not exist (looked at {command[3]})")],  # type: ignore[attr-defined]
                hint="put the script in the job's storage, e.g. /mnt/<storage>/main.jl",
            )
        final = self.jobs_dir / job.name
        env = dict(job.env)
        env.update(bundle_env)
        for name, path in mounts.items():
            env[f"JULIARUN_STORAGE_{name.upper().replace('-', '_')}"] = str(path)
        env["JULIARUN_MNT"] = str(final / "mnt")
        env["JULIARUN_CLUSTER"] = self.cluster
        env["JULIARUN_JL"] = str(JULIARUN_JL)
        cwd = next(iter(mounts.values()), final)
        return Plan(
            runtime={"kind": "process", "command": command, "cwd": str(cwd)},
            env=env,
            links={f"mnt/{name}": path for name, path in mounts.items()},
        )

    def _remove_workers(self, jobdir: JobDir, state: Mapping[str, Any]) -> None:
        for worker in state.get("workers", []):
            if worker.get("pid"):
                kill_worker_group(int(worker["pid"]), str(worker.get("id")))

    # -- Backend protocol ------------------------------------------------------------------

    def provision_storage(self, spec: StorageSpec) -> str:
        return str(local_storage.provision(spec, self.home))

    def _bundle_env(self, job: JobSpec) -> dict[str, str]:
        bundle = job_bundle(self.home, job)
        return {} if bundle is None else bundle.env()

    def service_endpoint(self, name: str, port: int, *, timeout: float = 60.0) -> ServiceEndpoint:
        """Local workers are processes of this machine: the service is on loopback."""
        spec = next((j for j in self.jobs() if j.name == name), None)
        if spec is None:
            raise JobNotFoundError(name, self.cluster)
        return ServiceEndpoint(spec.tenant, f"http://127.0.0.1:{port}")

    def cluster_status(self) -> ClusterStatus:
        julia = shutil.which(self.julia)
        components = [
            Component("julia", julia is not None, julia or f"{self.julia} not found"),
            Component("log-store", True, f"{self.log_store['kind']}"),
            Component("metric-store", True, f"{self.metric_store['kind']}"),
        ]
        waiting, running = self._waiting_and_running()
        cores = os.cpu_count() or 1
        load = os.getloadavg()[0]
        mem = psutil.virtual_memory()
        self.home.mkdir(parents=True, exist_ok=True)
        disk = psutil.disk_usage(str(self.home))
        node = NodeStatus(
            name=os.uname().nodename,
            ready=julia is not None,
            cpu=max(0, round(100 * (1 - min(load / cores, 1.0)))),
            gpu=0,
            mem=round(100 * mem.available / mem.total),
            dsk=round(100 - disk.percent),
            pod=max(0, round(100 * (1 - running / self.max_workers))),
        )
        return ClusterStatus(
            cluster=self.cluster,
            kind=self.kind,
            endpoint=f"file://{self.home}",
            components=components,
            waiting_for_scheduler=waiting,
            nodes=[node],
        )
