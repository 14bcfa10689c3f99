"""The local backend, the embedded default: every job is a supervisor process on this machine
running one process group per worker. State lives under ``JULIARUN_HOME`` so every Python
process on the machine sees the same jobs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import psutil

from juliarun.backends.base import (
    ClusterStatus,
    Component,
    JobStatus,
    NodeStatus,
)
from juliarun.backends.local import storage as local_storage
from juliarun.backends.local.state import JobDir, now, status_from_files
from juliarun.errors import BackendError, JobExistsError, JobNotFoundError, SpecError
from juliarun.specs import Batch, JobSpec, JuliaParBatchWorkers, StorageSpec, validate_spec

MNT = "/mnt/"


class LocalBackend:
    """Jobs as process groups on this machine.

    ``/mnt/<name>`` in a job's script, args and command is rewritten to the storage's directory;
    inside the job, ``JULIARUN_MNT`` is a directory with one entry per mounted storage and
    ``JULIARUN_STORAGE_<NAME>`` (upper case, ``-`` as ``_``) the directory of each.
    """

    kind: ClassVar[str] = "local"

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
        self.home = Path(home)
        self.cluster = cluster
        self.log_store = dict(log_store or {"kind": "sqlite", "path": str(self.home / "logs.db")})
        self.metric_store = dict(
            metric_store or {"kind": "sqlite", "path": str(self.home / "metrics.db")}
        )
        self.julia = julia
        self.max_workers = max_workers
        self.kill_grace = kill_grace
        self.clock = clock
        self.sleep = sleep
        self.jobs_dir = self.home / "clusters" / cluster / "jobs"

    # -- helpers -------------------------------------------------------------------------

    def _jobdir(self, name: str) -> JobDir:
        return JobDir(self.jobs_dir / name)

    def _existing(self, name: str) -> JobDir:
        jobdir = self._jobdir(name)
        if not jobdir.exists():
            raise JobNotFoundError(name, self.cluster)
        return jobdir

    @staticmethod
    def _supervisor(jobdir: JobDir, state: Mapping[str, Any]) -> dict[str, Any]:
        """The supervisor's pid and start time: from its state, or (before it has written
        any) from what submit recorded when it started it."""
        return dict(state.get("supervisor") or jobdir.read_launch())

    @staticmethod
    def _supervisor_alive(sup: Mapping[str, Any]) -> bool:
        pid, created = sup.get("pid"), sup.get("create_time")
        if not pid:
            return False
        try:
            proc = psutil.Process(int(pid))
            same = abs(proc.create_time() - float(str(created))) < 1
            return bool(same and proc.status() != psutil.STATUS_ZOMBIE)
        except (psutil.Error, TypeError, ValueError):
            return False

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

    def _running_workers(self) -> int:
        total = 0
        for jobdir in self._jobdirs():
            state = jobdir.read_state()
            if self._supervisor_alive(self._supervisor(jobdir, state)):
                total += sum(1 for w in state.get("workers", []) if w["state"] == "running")
        return total

    def _jobdirs(self) -> list[JobDir]:
        if not self.jobs_dir.exists():
            return []
        dirs = [JobDir(p) for p in self.jobs_dir.iterdir() if p.is_dir()]
        return sorted((d for d in dirs if d.exists()), key=lambda d: d.job_file.stat().st_mtime)

    # -- Backend protocol ------------------------------------------------------------------

    def provision_storage(self, spec: StorageSpec) -> str:
        return str(local_storage.provision(spec, self.home))

    def submit(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> JobStatus:
        missing = [n for n in job.storage if n not in storage]
        if missing:
            raise BackendError(f"storage {missing[0]!r} was not resolved before submit")
        jobdir = self._jobdir(job.name)
        if jobdir.exists():
            existing = jobdir.read_job()
            if existing.get("spec_hash") == job.spec_hash():
                return self.status(job.name)
            raise JobExistsError(job.name, self.cluster)
        self._check_fits(job)
        is_julia = not isinstance(job, Batch)
        if is_julia and shutil.which(self.julia) is None:
            raise BackendError(
                f"julia executable {self.julia!r} not found",
                hint="install it (scripts/testenv up julia) or set JULIARUN_JULIA",
            )
        if self._running_workers() + job.desired_workers() > self.max_workers:
            raise BackendError(
                f"the local node runs at most {self.max_workers} workers",
                hint="wait for jobs to finish, or raise JULIARUN_LOCAL_MAX_WORKERS",
            )
        bundle_env = self._bundle_env(job)
        mounts = {name: Path(self.provision_storage(spec)) for name, spec in storage.items()}
        command = self._command(job, mounts)
        if is_julia and not Path(command[3]).is_file():
            raise SpecError(
                job.kind,
                [("script", f"{job.script!r} does not exist (looked at {command[3]})")],  # type: ignore[attr-defined]
                hint="put the script in the job's storage, e.g. /mnt/<storage>/main.jl",
            )
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        staging = self.jobs_dir / f".{job.name}.{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        mnt_dir = staging / "mnt"
        mnt_dir.mkdir()
        env = dict(job.env)
        env.update(bundle_env)
        for name, path in mounts.items():
            (mnt_dir / name).symlink_to(path)
            env[f"JULIARUN_STORAGE_{name.upper().replace('-', '_')}"] = str(path)
        env["JULIARUN_MNT"] = str(self.jobs_dir / job.name / "mnt")
        env["JULIARUN_CLUSTER"] = self.cluster
        env["JULIARUN_JL"] = str(Path(__file__).resolve().parents[2] / "julia" / "JuliaRun.jl")
        cwd = next(iter(mounts.values()), staging)
        JobDir(staging).write_job(
            {
                "spec": job.model_dump(mode="json"),
                "spec_hash": job.spec_hash(),
                "uid": uuid.uuid4().hex,
                "cluster": self.cluster,
                "created_at": now().isoformat(),
                "desired_workers": job.desired_workers(),
                "command": command,
                "cwd": str(cwd if cwd != staging else self.jobs_dir / job.name),
                "env": env,
                "log_store": self.log_store,
                "metric_store": self.metric_store,
                "kill_grace": self.kill_grace,
            }
        )
        JobDir(staging).write_control({"workers": job.desired_workers()})
        try:
            staging.rename(jobdir.path)
        except OSError as exc:  # another process submitted the same name just now
            shutil.rmtree(staging, ignore_errors=True)
            raise JobExistsError(job.name, self.cluster) from exc
        with open(jobdir.supervisor_log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "juliarun.backends.local.supervisor", str(jobdir.path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        # Recorded at once so a delete that comes before the supervisor's first state write
        # still finds (and stops) it rather than orphaning the workers it is about to start.
        with contextlib.suppress(psutil.Error):
            created = psutil.Process(proc.pid).create_time()
            jobdir.write_launch({"pid": proc.pid, "create_time": created})
        return self.status(job.name)

    def _bundle_env(self, job: JobSpec) -> dict[str, str]:
        if job.pkg_bundle is None:
            return {}
        bundle = self.home / "bundles" / job.pkg_bundle
        if not bundle.is_dir():
            raise SpecError(
                job.kind,
                [("pkg_bundle", f"package bundle {job.pkg_bundle!r} not found in {bundle.parent}")],
                hint="build it first with the build_package_bundle flow",
            )
        return {"JULIA_DEPOT_PATH": f"{bundle / 'depot'}:", "JULIA_PROJECT": str(bundle / "env")}

    def status(self, name: str) -> JobStatus:
        jobdir = self._existing(name)
        status = status_from_files(jobdir)
        state = jobdir.read_state()
        supervisor = self._supervisor(jobdir, state)
        if not status.done and supervisor and not self._supervisor_alive(supervisor):
            status.phase = "failed"
            status.reason = "the job's supervisor exited unexpectedly"
            status.hint = f"see {jobdir.supervisor_log}"
        elif not supervisor:
            age = (now() - status.created_at).total_seconds() if status.created_at else 0
            if age > 60:
                status.phase = "failed"
                status.reason = "the job's supervisor never started"
                status.hint = f"see {jobdir.supervisor_log}"
        return status

    def jobs(self) -> list[JobSpec]:
        specs: list[JobSpec] = []
        for jobdir in self._jobdirs():
            data = jobdir.read_job()
            spec = validate_spec(data["spec"])
            if isinstance(spec, JuliaParBatchWorkers):
                workers = int(jobdir.read_control().get("workers", spec.nworkers))
                spec = spec.model_copy(update={"nworkers": workers})
            specs.append(spec)
        return specs

    def delete(self, name: str, *, force: bool = False) -> bool:
        jobdir = self._existing(name)
        supervisor = self._supervisor(jobdir, jobdir.read_state())
        if self._supervisor_alive(supervisor):
            pid = int(supervisor["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1 if force else signal.SIGTERM)
            deadline = self.clock() + (0 if force else self.kill_grace) + 15
            while self.clock() < deadline and psutil.pid_exists(pid):
                with contextlib.suppress(psutil.Error):
                    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                        break
                self.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for worker in jobdir.read_state().get("workers", []):
            if worker.get("pid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(worker["pid"]), signal.SIGKILL)
        trash = jobdir.path.with_name(f".deleted-{name}-{uuid.uuid4().hex[:8]}")
        jobdir.path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def scale(self, name: str, workers: int) -> JobStatus:
        jobdir = self._existing(name)
        kind = jobdir.read_job()["spec"]["kind"]
        if kind != "JuliaParBatchWorkers":
            raise SpecError(kind, [("nworkers", "only JuliaParBatchWorkers jobs can be scaled")])
        if not 0 <= workers <= 1000:
            raise SpecError(kind, [("nworkers", f"must be between 0 and 1000 (got {workers})")])
        status = self.status(name)
        if status.done:
            raise BackendError(f"job {name!r} has already {status.phase}; it cannot be scaled")
        jobdir.write_control({"workers": workers})
        return self.status(name)

    def cluster_status(self) -> ClusterStatus:
        julia = shutil.which(self.julia)
        components = [
            Component("julia", julia is not None, julia or f"{self.julia} not found"),
            Component("log-store", True, f"{self.log_store['kind']}"),
            Component("metric-store", True, f"{self.metric_store['kind']}"),
        ]
        waiting = running = 0
        for jobdir in self._jobdirs():
            status = self.status(jobdir.name)
            if not status.done:
                waiting += status.waiting
                running += sum(1 for w in status.workers if w.state == "running")
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

    def close(self) -> None:
        return None
