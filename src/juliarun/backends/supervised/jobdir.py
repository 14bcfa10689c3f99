"""A supervised job's directory: its spec, the desired scale, and the supervisor's view of it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from juliarun.backends.base import DiagnosisCategory, JobStatus, WorkerStatus


def now() -> datetime:
    return datetime.now(UTC)


def _dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def worker_to_json(w: WorkerStatus) -> dict[str, Any]:
    data = asdict(w)
    for key in ("started_at", "finished_at"):
        data[key] = data[key].isoformat() if data[key] else None
    return data


def worker_from_json(data: dict[str, Any]) -> WorkerStatus:
    return WorkerStatus(
        id=data["id"],
        state=data["state"],
        pid=data.get("pid"),
        exit_code=data.get("exit_code"),
        restarts=data.get("restarts", 0),
        started_at=_dt(data.get("started_at")),
        finished_at=_dt(data.get("finished_at")),
        reason=data.get("reason"),
    )


class JobDir:
    """``<home>/clusters/<cluster>/jobs/<name>/`` holding job.json (written once at submit, mode
    0600 like every file here; the store configs, credentials included, are never written here:
    the supervisor gets them on its stdin, see :mod:`.stores`),
    control.json (the desired worker count, written by scale), supervisor.json (the supervisor's
    pid, written by submit as soon as it is started) and state.json (written by the job's
    supervisor process)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def job_file(self) -> Path:
        return self.path / "job.json"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    def metrics_file(self, worker_id: str) -> Path:
        return self.path / "metrics" / f"{worker_id}.lp"

    def busy_file(self, worker_id: str) -> Path:
        """Present while the worker handles a message (see ``WorkerLaunch.busy_file``)."""
        return self.path / "metrics" / f"{worker_id}.busy"

    def exists(self) -> bool:
        return self.job_file.exists()

    def _read(self, filename: str) -> dict[str, Any]:
        try:
            data = json.loads((self.path / filename).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):  # damaged (by hand, a full disk): read as empty
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, filename: str, data: dict[str, Any]) -> None:
        """Replace ``filename`` atomically, readable by its owner only (mode 0600)."""
        target = self.path / filename
        tmp = target.with_name(f".{filename}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, target)

    def read_job(self) -> dict[str, Any]:
        return self._read("job.json")

    def write_job(self, data: dict[str, Any]) -> None:
        self._write("job.json", data)

    def read_control(self) -> dict[str, Any]:
        return self._read("control.json")

    def write_control(self, data: dict[str, Any]) -> None:
        self._write("control.json", data)

    def read_launch(self) -> dict[str, Any]:
        return self._read("supervisor.json")

    def write_launch(self, data: dict[str, Any]) -> None:
        self._write("supervisor.json", data)

    def read_state(self) -> dict[str, Any]:
        return self._read("state.json")

    def write_state(self, status: JobStatus, supervisor: dict[str, Any]) -> None:
        self._write(
            "state.json",
            {
                "phase": status.phase,
                "desired_workers": status.desired_workers,
                "workers": [worker_to_json(w) for w in status.workers],
                "reason": status.reason,
                "hint": status.hint,
                "category": status.category,
                "last_lines": status.last_lines,
                "finished_at": status.finished_at.isoformat() if status.finished_at else None,
                "supervisor": supervisor,
            },
        )


def failure_category(status: JobStatus) -> DiagnosisCategory | None:
    """What kind of failure a supervisor's failed state is, from what it records of each
    worker: a worker that failed without an exit code never started, a negative code is the
    signal that killed it; a job that failed with no failed worker was deleted.

    >>> from juliarun.backends.base import WorkerStatus as W
    >>> def failed(*workers: W) -> JobStatus:
    ...     return JobStatus("j", "Batch", "failed", len(workers), list(workers))
    >>> [str(failure_category(failed(W("j-0", "failed", exit_code=c)))) for c in (3, -9, None)]
    ['exit_code', 'killed_by_signal', 'worker_start_failed']
    >>> failure_category(failed(W("j-0", "removed")))
    <DiagnosisCategory.DELETED: 'deleted'>
    """
    if status.phase != "failed":
        return None
    for worker in status.workers:
        if worker.state == "failed":
            if worker.exit_code is None:
                return DiagnosisCategory.WORKER_START_FAILED
            if worker.exit_code < 0:
                return DiagnosisCategory.KILLED_BY_SIGNAL
            return DiagnosisCategory.EXIT_CODE
    return DiagnosisCategory.DELETED


def status_from_files(jobdir: JobDir) -> JobStatus:
    """The job's status as its files tell it (no liveness check); the category of a failure
    is the supervisor's when it recorded one, else :func:`failure_category`."""
    job = jobdir.read_job()
    state = jobdir.read_state()
    control = jobdir.read_control()
    desired = int(control.get("workers", job.get("desired_workers", 1)))
    status = JobStatus(
        name=jobdir.name,
        kind=job.get("spec", {}).get("kind", "?"),
        phase=state.get("phase", "created"),
        desired_workers=desired,
        workers=[worker_from_json(w) for w in state.get("workers", [])],
        reason=state.get("reason"),
        hint=state.get("hint"),
        last_lines=state.get("last_lines", []),
        created_at=_dt(job.get("created_at")),
        finished_at=_dt(state.get("finished_at")),
    )
    recorded = state.get("category")
    status.category = DiagnosisCategory(recorded) if recorded else failure_category(status)
    return status
