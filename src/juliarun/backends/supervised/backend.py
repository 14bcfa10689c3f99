"""What the local and Docker backends share: each job is a detached supervisor process on this
machine (:mod:`juliarun.backends.supervised.supervisor`) whose state lives in a job directory under
``<home>/clusters/<cluster>/jobs/<name>/``, so every Python process on the machine sees the same
jobs. A subclass says how a job's workers run (its worker runtime) and checks a job before
anything is created."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from juliarun._files import private_dir, private_file
from juliarun.backends.base import ClusterStatus, DiagnosisCategory, JobStatus, NodeReadiness
from juliarun.backends.supervised.jobdir import JobDir, now, status_from_files
from juliarun.backends.supervised.stores import stores_json
from juliarun.errors import (
    BackendError,
    JobExistsError,
    JobNotFoundError,
    JuliaRunError,
    SpecError,
)
from juliarun.specs import JobSpec, JuliaParBatchWorkers, StorageSpec, is_job_name, validate_spec


@dataclass
class Plan:
    """How a job will run, worked out at submit: the worker runtime's configuration (with its
    ``kind``), the environment every worker gets, and symlinks to make in the job directory."""

    runtime: dict[str, Any]
    env: dict[str, str]
    links: dict[str, Path] = field(default_factory=dict)


class SupervisedBackend(ABC):
    """A :class:`~juliarun.backends.base.Backend` whose jobs are supervisor processes here."""

    kind: ClassVar[str]

    def __init__(
        self,
        home: Path,
        *,
        cluster: str,
        log_store: Mapping[str, Any] | None = None,
        metric_store: Mapping[str, Any] | None = None,
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
        self.max_workers = max_workers
        self.kill_grace = kill_grace
        self.clock = clock
        self.sleep = sleep
        self.jobs_dir = self.home / "clusters" / cluster / "jobs"

    # -- what a subclass says ------------------------------------------------------------

    @abstractmethod
    def _check(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> None:
        """Refuse a job that cannot run here, before anything is created."""

    @abstractmethod
    def _plan(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> Plan:
        """Provision the job's storage and work out how its workers run (may still refuse it,
        e.g. a missing script; nothing but idempotent storage exists yet)."""

    @abstractmethod
    def _remove_workers(self, jobdir: JobDir, state: Mapping[str, Any]) -> None:
        """After the job's supervisor is gone: make sure none of its workers is left."""

    @abstractmethod
    def provision_storage(self, spec: StorageSpec) -> str: ...

    def prune_storage(self) -> list[str]:
        """Nothing to prune by default: a local checkout is one directory per storage and ref,
        updated in place."""
        return []

    @abstractmethod
    def cluster_status(self) -> ClusterStatus: ...

    def job_path(self, storage: str, host_path: Path) -> str:
        """Containers see host storage at ``/mnt/<storage>``."""
        return f"/mnt/{storage}"

    def bundle_paths_in_use(self) -> list[str]:
        """Every job has a ``job.json`` under ``home`` naming its bundle: nothing else."""
        return []

    @abstractmethod
    def prewarm(
        self, image: str, *, node_type: str | None = None, timeout: float = 300.0
    ) -> list[NodeReadiness]: ...

    def close(self) -> None:
        return None

    # -- helpers -------------------------------------------------------------------------

    def _jobdir(self, name: str) -> JobDir:
        # A job name becomes a path: anything but a DNS label (``/etc``, ``..``) names no job.
        if not is_job_name(name):
            raise JobNotFoundError(name, self.cluster)
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

    def _waiting_and_running(self) -> tuple[int, int]:
        """Workers waiting and running over the unfinished jobs."""
        waiting = running = 0
        for jobdir in self._jobdirs():
            status = self.status(jobdir.name)
            if not status.done:
                waiting += status.waiting
                running += sum(1 for w in status.workers if w.state == "running")
        return waiting, running

    # -- Backend protocol ------------------------------------------------------------------

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
        self._check(job, storage)
        if self._running_workers() + job.desired_workers() > self.max_workers:
            raise BackendError(
                f"the {self.kind} node runs at most {self.max_workers} workers",
                hint=f"wait for jobs to finish, or raise JULIARUN_{self.kind.upper()}_MAX_WORKERS",
            )
        plan = self._plan(job, storage)
        private_dir(self.home)  # 0700: job files, stores and catalogs are this user's only
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        staging = self.jobs_dir / f".{job.name}.{uuid.uuid4().hex[:8]}"
        staging.mkdir(mode=0o700)
        for link, target in plan.links.items():
            (staging / link).parent.mkdir(parents=True, exist_ok=True)
            (staging / link).symlink_to(target)
        JobDir(staging).write_job(
            {
                "spec": job.model_dump(mode="json"),
                "spec_hash": job.spec_hash(),
                "uid": uuid.uuid4().hex,
                "cluster": self.cluster,
                "created_at": now().isoformat(),
                "desired_workers": job.desired_workers(),
                "runtime": plan.runtime,
                "env": plan.env,
                "kill_grace": self.kill_grace,
            }
        )
        JobDir(staging).write_control({"workers": job.desired_workers()})
        try:
            staging.rename(jobdir.path)
        except OSError as exc:  # another process submitted the same name just now
            shutil.rmtree(staging, ignore_errors=True)
            raise JobExistsError(job.name, self.cluster) from exc
        with open(private_file(jobdir.supervisor_log), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "juliarun.backends.supervised.supervisor", str(jobdir.path)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        # The store configs (credentials included) reach the supervisor through its stdin,
        # never a file: nothing a job can read holds them.
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            proc.stdin.write(stores_json(self.log_store, self.metric_store))
        # Recorded at once so a delete that comes before the supervisor's first state write
        # still finds (and stops) it rather than orphaning the workers it is about to start.
        with contextlib.suppress(psutil.Error):
            created = psutil.Process(proc.pid).create_time()
            jobdir.write_launch({"pid": proc.pid, "create_time": created})
        return self.status(job.name)

    def status(self, name: str) -> JobStatus:
        jobdir = self._existing(name)
        status = status_from_files(jobdir)
        state = jobdir.read_state()
        supervisor = self._supervisor(jobdir, state)
        if not status.done and supervisor and not self._supervisor_alive(supervisor):
            # The supervisor writes the final state, then exits: read again now that it is
            # gone, so a job that ended between the two reads is not taken for a crash.
            status = status_from_files(jobdir)
        if not status.done and supervisor and not self._supervisor_alive(supervisor):
            # Its workers die with it (see the runtimes); whatever they started goes too, once:
            # the state is written final, so no later read signals pids that may be reused.
            self._remove_workers(jobdir, state)
            status.phase = "failed"
            status.reason = "the job's supervisor exited unexpectedly; its workers were stopped"
            status.hint = f"see {jobdir.supervisor_log}"
            status.category = DiagnosisCategory.SUPERVISOR_CRASHED
            status.finished_at = now()
            for worker in status.workers:
                if worker.state in ("running", "restarting", "waiting"):
                    worker.state, worker.pid, worker.reason = "failed", None, "supervisor died"
            jobdir.write_state(status, {**supervisor, "done": True})
        elif not supervisor:
            age = (now() - status.created_at).total_seconds() if status.created_at else 0
            if age > 60:
                status.phase = "failed"
                status.reason = "the job's supervisor never started"
                status.hint = f"see {jobdir.supervisor_log}"
                status.category = DiagnosisCategory.SUPERVISOR_NEVER_STARTED
        return status

    def jobs(self) -> list[JobSpec]:
        specs: list[JobSpec] = []
        for jobdir in self._jobdirs():
            try:  # a broken job directory hides that job, never the others
                spec = validate_spec(jobdir.read_job()["spec"])
            except (OSError, ValueError, KeyError, TypeError, JuliaRunError):
                continue
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
            # Alive means that pid with that start time: once it has exited, its pid may be
            # another process's (pids wrap), never to be waited for or killed.
            while self.clock() < deadline and self._supervisor_alive(supervisor):
                self.sleep(0.05)
            if self._supervisor_alive(supervisor):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._remove_workers(jobdir, jobdir.read_state())
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
