"""Workers as local process groups: the local backend's worker runtime.

Each worker is its own process group (so everything it starts is stopped with it), its stdout
and stderr read line by line by two threads, its cpu/memory sampled with psutil.

A worker gets only the environment it needs, never the submitter's whole environment (which
may hold store tokens and cloud credentials): the variables of :data:`INHERITED` from this
machine, then the job's own (the spec's ``env`` and the ``JULIARUN_*``/``JULIA_*`` variables
the platform sets).

>>> sorted(worker_env({"PATH": "/bin", "JULIARUN_INFLUX_TOKEN": "t", "LC_ALL": "C"}, {"A": "1"}))
['A', 'LC_ALL', 'PATH']

A worker is killed (``SIGKILL``) when its supervisor dies, however it dies: a worker never
runs on unwatched, its output lost, while the cluster reads as free.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any

import psutil

from juliarun.backends.supervised.runtime import (
    Exit,
    LineSink,
    Sample,
    WorkerLaunch,
    WorkerStartError,
)
from juliarun.logs.base import Stream

INHERITED = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "SHELL"}
)
"""Variables a worker takes from this machine's environment (plus every ``LC_*``)."""

_PR_SET_PDEATHSIG = 1


def worker_env(machine: Mapping[str, str], job: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: the allowed part of ``machine``'s, then the job's."""
    env = {k: v for k, v in machine.items() if k in INHERITED or k.startswith("LC_")}
    env.update(job)
    return env


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when this process dies (and
    exiting at once if it died already); resolved here, so the child only makes two calls."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(137)

    return preexec


def kill_worker_group(pid: int, worker_id: str) -> bool:
    """SIGKILL the process group of worker ``worker_id`` whose leader had ``pid``, when it is
    still that worker's: a pid from a state file may have been given to another process since
    (pids wrap at 32768 on many machines), and that process must never be signalled. Once the
    leader is gone its group is signalled only while other members keep the group id in use
    (the kernel gives no new process a pid that is still a group's id). Returns whether a
    signal was sent."""
    try:
        leader = psutil.Process(pid)
        if leader.environ().get("JULIARUN_WORKER") != worker_id:
            return False  # the pid is another process's now
    except psutil.NoSuchProcess:
        pass  # the leader is gone: only its orphans can still hold the group id
    except psutil.Error:
        return False  # not ours to read, so not ours to kill
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class ProcessHandle:
    """One worker process group."""

    def __init__(self, proc: subprocess.Popen[bytes], sink: LineSink) -> None:
        self.proc = proc
        self.readers = [
            threading.Thread(target=_read, args=(proc.stdout, "stdout", sink), daemon=True),
            threading.Thread(target=_read, args=(proc.stderr, "stderr", sink), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _running(self) -> bool:
        """Whether the main process still runs, asked without reaping it: until it is reaped
        its pid (its group's id) is given to no other process, so signalling the group is
        safe."""
        if self.proc.returncode is not None:
            return False
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # not waitable here: let Popen tell
            return self.proc.poll() is None

    def poll(self) -> Exit | None:
        if self._running():
            return None
        if self.proc.returncode is None:
            # The worker ends with its main process (as a container does): whatever it left
            # running in its process group would hold the output pipes open and outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        for reader in self.readers:
            reader.join(timeout=5)
        return Exit.of_code(code)

    def terminate(self, *, force: bool) -> None:
        if self._running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL if force else signal.SIGTERM)

    def sample(self) -> Sample | None:
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
            cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
            rss = sum(p.memory_info().rss for p in procs)
        except psutil.Error:
            return None
        return Sample(cpu_seconds=cpu, memory_bytes=float(rss))

    def discard(self) -> None:
        return None


def _read(pipe: IO[bytes] | None, stream: Stream, sink: LineSink) -> None:
    if pipe is None:
        return
    for raw in iter(pipe.readline, b""):
        sink(stream, raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    pipe.close()


class ProcessRuntime:
    """Starts ``runtime.command`` in ``runtime.cwd`` with the worker's environment (see
    :func:`worker_env`); ``JULIARUN_METRICS_FILE`` and ``JULIARUN_BUSY_FILE`` are the files
    themselves."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        config = job["runtime"]
        self.command: list[str] = list(config["command"])
        self.cwd: str = config["cwd"]
        # The worker runs as this user: its metrics file must be this user's.
        self.metrics_owners: frozenset[int] | None = frozenset({os.getuid()})
        self._preexec = _die_with_parent()

    def start(self, launch: WorkerLaunch, sink: LineSink) -> ProcessHandle:
        files = {"JULIARUN_METRICS_FILE": str(launch.metrics_file)}
        if launch.busy_file is not None:
            files["JULIARUN_BUSY_FILE"] = str(launch.busy_file)
        env = worker_env(os.environ, {**launch.env, **files})
        try:
            proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=self._preexec,  # noqa: PLW1509 - two async-signal-safe calls
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot start {self.command[0]}: {exc.strerror}") from exc
        return ProcessHandle(proc, sink)

    def close(self) -> None:
        return None
