"""The worker-runtime seam: how one worker of a supervised job runs (a local process group, a
Docker container). The :class:`~juliarun.backends.supervised.supervisor.Supervisor` owns
everything else (restart policy, scale, phase, state, logs, metrics); a runtime only starts,
watches and stops.

A runtime is chosen by the ``kind`` of the ``runtime`` mapping in the job's ``job.json``:

>>> sorted(RUNTIMES)
['docker', 'process']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from juliarun.errors import BackendError, JuliaRunError
from juliarun.logs.base import Stream

# Called by a runtime's reader threads with each line a worker prints (without its newline).
LineSink = Callable[[Stream, str], None]


@dataclass(frozen=True)
class WorkerLaunch:
    """What the supervisor asks a runtime to start: one attempt of one worker."""

    id: str
    """The worker id, ``<job>-<index>``."""
    index: int
    restarts: int
    env: Mapping[str, str]
    """The job's environment plus ``JULIARUN_*`` for this worker (no ``JULIARUN_METRICS_FILE``:
    each runtime names ``metrics_file`` as its worker sees it)."""
    metrics_file: Path
    """The file on this machine the supervisor ingests metric lines from."""
    busy_file: Path | None = None
    """Beside ``metrics_file``: the file a worker holds while it handles a message
    (``JuliaRun.consume`` creates it before the handler and removes it after the ack); each
    runtime names it as its worker sees it in ``JULIARUN_BUSY_FILE``. The supervisor only
    checks whether it exists, to remove idle workers first on scale-down."""


@dataclass(frozen=True)
class Exit:
    """How a worker ended: its exit code and the reason as a status reads it.

    >>> Exit.of_code(3), Exit.of_code(-9).reason
    (Exit(code=3, reason='exit code 3'), 'killed by signal 9')
    """

    code: int
    reason: str

    @classmethod
    def of_code(cls, code: int) -> Exit:
        """The usual reason for ``code`` (negative: the signal that killed a process)."""
        return cls(code, f"killed by signal {-code}" if code < 0 else f"exit code {code}")


@dataclass(frozen=True)
class Sample:
    """One system-metric sample of a running worker."""

    cpu_seconds: float
    memory_bytes: float


class WorkerStartError(JuliaRunError):
    """A worker could not be started; ``reason`` reads like ``cannot start julia: ...``."""

    def __init__(self, reason: str, *, hint: str | None = None) -> None:
        self.reason = reason
        super().__init__(reason, hint=hint)


class WorkerHandle(Protocol):
    """One running attempt of a worker."""

    @property
    def pid(self) -> int | None:
        """The worker's process id on its host, as :class:`WorkerStatus` shows it."""
        ...

    def poll(self) -> Exit | None:
        """The exit once the worker has ended *and* all its output has reached the sink;
        ``None`` while it runs. Never blocks for long."""
        ...

    def terminate(self, *, force: bool) -> None:
        """Ask the worker to stop: SIGTERM, or SIGKILL at once when ``force``. Returns at
        once; the supervisor polls for the exit and forces after its grace period."""
        ...

    def sample(self) -> Sample | None:
        """CPU and memory use now (``None`` when not measurable)."""
        ...

    def discard(self) -> None:
        """Release what the ended worker still holds (a container is removed)."""
        ...


class WorkerRuntime(Protocol):
    """Starts workers of one job; built from the job's ``job.json`` by :func:`open_runtime`."""

    metrics_owners: frozenset[int] | None
    """The user ids a worker's metrics file may belong to (``None``: any, where a worker can
    create files only inside its own metrics directory, as a container in its bind mount)."""

    def start(self, launch: WorkerLaunch, sink: LineSink) -> WorkerHandle:
        """Start ``launch``; its stdout and stderr reach ``sink`` line by line. Raises
        :class:`WorkerStartError` when it cannot start."""
        ...

    def close(self) -> None: ...


# Runtime kinds and the ``module:factory`` building each (imported only when used, so the local
# backend never imports the Docker SDK). A factory takes the job's ``job.json`` mapping.
RUNTIMES: dict[str, str] = {
    "process": "juliarun.backends.local.runtime:ProcessRuntime",
    "docker": "juliarun.backends.docker.runtime:DockerRuntime",
}


def open_runtime(job: Mapping[str, Any]) -> WorkerRuntime:
    """The runtime ``job["runtime"]["kind"]`` names, built for ``job``."""
    kind = str(job.get("runtime", {}).get("kind", ""))
    target = RUNTIMES.get(kind)
    if target is None:
        raise BackendError(
            f"unknown worker runtime {kind!r} (known: {', '.join(sorted(RUNTIMES))})",
            hint="the job was written by another version of juliarun; delete and resubmit it",
        )
    module, _, factory = target.partition(":")
    runtime: WorkerRuntime = getattr(importlib.import_module(module), factory)(job)
    return runtime
