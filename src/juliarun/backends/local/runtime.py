"""Workers as local process groups: the local backend's worker runtime.

Each worker is its own process group (so everything it starts is stopped with it), its stdout
and stderr read line by line by two threads, its cpu/memory sampled with psutil.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
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

    def poll(self) -> Exit | None:
        code = self.proc.poll()
        if code is None:
            return None
        # The worker ends with its main process (as a container does): whatever it left
        # running in its process group would hold the output pipes open and outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for reader in self.readers:
            reader.join(timeout=5)
        return Exit.of_code(code)

    def terminate(self, *, force: bool) -> None:
        if self.proc.poll() is None:
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
    """Starts ``runtime.command`` in ``runtime.cwd`` with this machine's environment plus the
    worker's; ``JULIARUN_METRICS_FILE`` is the metrics file itself."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        config = job["runtime"]
        self.command: list[str] = list(config["command"])
        self.cwd: str = config["cwd"]

    def start(self, launch: WorkerLaunch, sink: LineSink) -> ProcessHandle:
        env = {
            **os.environ,
            **launch.env,
            "JULIARUN_METRICS_FILE": str(launch.metrics_file),
        }
        try:
            proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot start {self.command[0]}: {exc.strerror}") from exc
        return ProcessHandle(proc, sink)

    def close(self) -> None:
        return None
