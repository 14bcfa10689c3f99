"""The supervisor of one job: a detached process on this machine that runs the job's workers
through a worker runtime (local process groups, Docker containers; see
:mod:`juliarun.backends.supervised.runtime`).

The supervisor captures every stdout/stderr line (with a timestamp, the worker id and the
stream) into the log store, ingests the metric lines workers append to their metrics file plus
per-worker cpu/memory samples into the metric store, applies the restart policy with
exponential backoff, follows the desired worker count written by ``scale``, and writes the job's
state for every other process to read.

SIGTERM stops the workers gracefully (SIGTERM, then SIGKILL after the grace period); SIGUSR1
kills them at once.

Scale-down removes idle workers first (see :func:`removal_order`): a worker is busy while its
busy file exists (``JuliaRun.consume`` holds it while a message is in hand). So the indexes that
run are a set, not always ``0..n-1``: a scale-up takes the lowest free indexes again, and a
removed index that comes back is started again under its old worker id.

Run as ``python -m juliarun.backends.supervised.supervisor JOBDIR``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from juliarun.backends.base import JobStatus, WorkerStatus
from juliarun.backends.supervised.jobdir import JobDir, now
from juliarun.backends.supervised.metricsfile import MetricsFile
from juliarun.backends.supervised.runtime import (
    Exit,
    WorkerHandle,
    WorkerLaunch,
    WorkerRuntime,
    WorkerStartError,
    open_runtime,
)
from juliarun.backends.supervised.stores import read_stores
from juliarun.logs import LogLine, LogStore, open_log_store
from juliarun.logs.base import Stream
from juliarun.metrics import MetricStore, Point, open_metric_store
from juliarun.metrics.lineprotocol import (
    IDENTITY_TAGS,
    RESERVED_PREFIX,
    parse_lines,
    rejected_metrics_note,
)

LAST_LINES = 10
MAX_BACKOFF = 30.0
SAMPLE_EVERY = 5.0
# How long a worker killed with SIGKILL gets to be reported gone before the supervisor moves on.
KILL_WAIT = 10.0


def removal_order(workers: Mapping[int, tuple[str, bool]]) -> list[int]:
    """The order in which a scale-down removes workers, given each index's state and whether
    it is busy (handling a message): first those holding nothing (not running: waiting to
    restart, or ended), then the running idle ones, then the busy ones; among equals the
    highest index first.

    >>> removal_order({0: ("running", True), 1: ("running", False), 2: ("running", True)})
    [1, 2, 0]
    >>> removal_order({0: ("running", False), 1: ("restarting", False), 2: ("running", False)})
    [1, 2, 0]
    """

    def rank(index: int) -> tuple[int, int]:
        state, busy = workers[index]
        return (0 if state != "running" else 2 if busy else 1, -index)

    return sorted(workers, key=rank)


@dataclass
class _Worker:
    status: WorkerStatus
    handle: WorkerHandle | None = None
    restart_at: float | None = None
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES))
    metrics: MetricsFile | None = None


class Supervisor:
    """Runs one job described by ``jobdir`` through ``runtime`` until it ends or is stopped."""

    def __init__(
        self,
        jobdir: JobDir,
        logs: LogStore,
        metrics: MetricStore,
        runtime: WorkerRuntime,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        tick: float = 0.1,
    ) -> None:
        self.jobdir = jobdir
        self.job = jobdir.read_job()
        self.logs = logs
        self.metrics = metrics
        self.runtime = runtime
        self.clock = clock
        self.sleep = sleep
        self.tick = tick
        self.spec: dict[str, Any] = self.job["spec"]
        self.workers: dict[int, _Worker] = {}
        # The indexes that should run (the desired count of them); scale changes this set.
        self.active: set[int] = set()
        self.stop_mode: str | None = None
        self.reason: str | None = None
        self.hint: str | None = None
        self.failed_lines: list[str] = []
        self.lines: queue.Queue[LogLine | None] = queue.Queue(maxsize=100_000)
        self.writer = threading.Thread(target=self._write_lines, name="log-writer", daemon=True)
        self._last_state: str = ""
        self._last_sample = 0.0

    # -- control -------------------------------------------------------------------------

    def request_stop(self, mode: str) -> None:
        """``graceful`` (SIGTERM, then SIGKILL after the grace period) or ``force``."""
        if self.stop_mode != "force":
            self.stop_mode = mode

    def desired(self) -> int:
        return int(self.jobdir.read_control().get("workers", self.job["desired_workers"]))

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        self.writer.start()
        phase = "created"
        try:
            while True:
                if self.stop_mode:
                    self._stop_all(self.stop_mode == "force")
                    phase = "failed" if phase not in ("succeeded", "failed") else phase
                    self.reason = self.reason or "deleted"
                    self._flush()
                    self._publish(phase, final=True)
                    return 0
                desired = self.desired()
                self._reconcile(desired)
                self._poll()
                self._ingest_metrics()
                phase = self._phase(desired)
                if phase == "failed":
                    self._stop_all(force=False)
                if phase in ("succeeded", "failed"):
                    # Every line and metric is stored before the job reads as done, so a
                    # `wait` followed by `tail` or `metrics` sees all of them.
                    self._flush()
                    self._publish(phase, final=True)
                    return 0
                self._publish(phase, final=False)
                self.sleep(self.tick)
        finally:
            self._flush()

    def _flush(self) -> None:
        """Store every captured line and metric point, and stop the log writer (idempotent)."""
        self._ingest_metrics()
        self.metrics.flush()
        if self.writer.is_alive():
            self.lines.put(None)
            self.writer.join(timeout=30)

    def _reconcile(self, desired: int) -> None:
        t = self.clock()
        if len(self.active) < desired:
            free = (i for i in itertools.count() if i not in self.active)
            while len(self.active) < desired:
                self.active.add(next(free))
        elif len(self.active) > desired:
            order = removal_order({i: self._activity(i) for i in self.active})
            self.active.difference_update(order[: len(self.active) - desired])
        for index in sorted(self.active):
            w = self.workers.get(index)
            if w is None:
                self._start(index)
            elif w.status.state == "restarting" and w.restart_at is not None and t >= w.restart_at:
                self._start(index, restarts=w.status.restarts + 1)
            elif w.status.state == "removed":
                self._start(index, restarts=w.status.restarts)
        surplus = [
            w
            for index, w in self.workers.items()
            if index not in self.active and w.status.state in ("running", "restarting", "waiting")
        ]
        if surplus:
            self._terminate(surplus, force=False)
            for w in surplus:
                w.status.state = "removed"
                w.status.reason = "scaled down"
                if w.handle is not None:
                    w.handle.discard()

    def _activity(self, index: int) -> tuple[str, bool]:
        """The worker's state and whether it is busy: its busy file exists (checked with
        ``lstat``, never followed or read: the file is the worker's to write)."""
        w = self.workers.get(index)
        if w is None:
            return ("waiting", False)
        busy = w.status.state == "running" and os.path.lexists(self.jobdir.busy_file(w.status.id))
        return (w.status.state, busy)

    def _poll(self) -> None:
        for w in self.workers.values():
            if w.handle is None or w.status.state != "running":
                continue
            ended = w.handle.poll()
            if ended is not None:
                self._exited(w, ended)
        if self.clock() - self._last_sample >= SAMPLE_EVERY:
            self._last_sample = self.clock()
            self._sample()

    def _exited(self, w: _Worker, ended: Exit) -> None:
        s = w.status
        s.exit_code = ended.code
        s.finished_at = now()
        s.pid = None
        if ended.code == 0:
            s.state = "succeeded"
            return
        s.reason = ended.reason
        if self.spec.get("restart") == "OnFailure" and s.restarts < int(
            self.spec.get("backoff_limit", 0)
        ):
            s.state = "restarting"
            w.restart_at = self.clock() + min(2.0**s.restarts, MAX_BACKOFF)
            return
        s.state = "failed"
        if self.reason is None:
            restarts = f" after {s.restarts} restarts" if s.restarts else ""
            self.reason = f"worker {s.id} {s.reason}{restarts}"
            self.failed_lines = list(w.last_lines)
            self.hint = f"see its output with `juliarun tail {self.jobdir.name}`"

    def _phase(self, desired: int) -> str:
        states = [w.status.state for i, w in self.workers.items() if i in self.active]
        if any(s == "failed" for s in states):
            return "failed"
        if desired > 0 and len(states) == desired and all(s == "succeeded" for s in states):
            return "succeeded"
        if any(s in ("running", "restarting", "succeeded") for s in states):
            return "running"
        return "created"

    # -- workers -------------------------------------------------------------------------

    def _start(self, index: int, restarts: int = 0) -> None:
        worker_id = f"{self.jobdir.name}-{index}"
        status = WorkerStatus(id=worker_id, state="running", restarts=restarts, started_at=now())
        w = self.workers.get(index) or _Worker(status=status)
        w.status = status
        w.handle = None
        w.restart_at = None
        self.workers[index] = w
        metrics_file = self.jobdir.metrics_file(worker_id)
        busy_file = self.jobdir.busy_file(worker_id)
        if w.metrics is None:
            w.metrics = MetricsFile(metrics_file, owners=self.runtime.metrics_owners)
        try:
            w.metrics.prepare()
        except OSError as exc:
            status.state = "failed"
            status.finished_at = now()
            status.reason = f"cannot prepare its metrics file: {exc.strerror}"
            self.reason = self.reason or f"worker {worker_id} {status.reason}"
            return
        # An earlier attempt killed with a message in hand left it: the new one holds none.
        with contextlib.suppress(OSError):
            busy_file.unlink(missing_ok=True)
        launch = WorkerLaunch(
            id=worker_id,
            index=index,
            restarts=restarts,
            env={
                **self.job["env"],
                "JULIARUN_JOB": self.jobdir.name,
                "JULIARUN_WORKER": worker_id,
                "JULIARUN_WORKER_INDEX": str(index),
                "JULIARUN_NWORKERS": str(self.desired()),
                "JULIARUN_RESTARTS": str(restarts),
            },
            metrics_file=metrics_file,
            busy_file=busy_file,
        )
        # The worker's reader threads hold its lines until it is published as running: a job
        # whose lines are searchable reads as running, never as still waiting.
        published = threading.Event()
        try:
            w.handle = self.runtime.start(
                launch, lambda stream, line: self._line(w, stream, line, published)
            )
        except WorkerStartError as exc:
            status.state = "failed"
            status.finished_at = now()
            status.reason = exc.reason
            self.reason = self.reason or f"worker {worker_id} {status.reason}"
            return
        finally:
            if w.handle is None:
                published.set()
        status.pid = w.handle.pid
        try:
            self._publish("running", final=False)
        finally:
            published.set()

    def _line(
        self, w: _Worker, stream: Stream, message: str, published: threading.Event | None = None
    ) -> None:
        """Called from a runtime's reader threads with each line a worker prints; waits (a
        bounded time: a line is never dropped) until the worker's start is published."""
        if published is not None:
            published.wait(timeout=10)
        w.last_lines.append(message)
        self.lines.put(
            LogLine(
                timestamp=now(),
                job=self.jobdir.name,
                worker=w.status.id,
                stream=stream,
                message=message,
                cluster=self.job["cluster"],
                tenant=self.spec.get("tenant", "default"),
            )
        )

    def _terminate(self, workers: list[_Worker], force: bool) -> None:
        """Stop running ``workers`` together: SIGTERM (SIGKILL when ``force``), then SIGKILL
        to those still running after the grace period; records how each ended."""
        live = {id(w): w for w in workers if w.handle is not None and w.status.state == "running"}
        for w in live.values():
            assert w.handle is not None
            w.handle.terminate(force=force)
        killed = force
        deadline = self.clock() + (KILL_WAIT if force else float(self.job.get("kill_grace", 10)))
        while live:
            for key, w in list(live.items()):
                assert w.handle is not None
                ended = w.handle.poll()
                if ended is not None:
                    w.status.exit_code = ended.code
                    w.status.finished_at = now()
                    w.status.pid = None
                    del live[key]
            if not live:
                break
            if self.clock() >= deadline:
                if killed:
                    break  # the runtime did not report them gone: leave them to delete
                for w in live.values():
                    assert w.handle is not None
                    w.handle.terminate(force=True)
                killed = True
                deadline = self.clock() + KILL_WAIT
            time.sleep(0.05)

    def _stop_all(self, force: bool) -> None:
        stopping = [
            w
            for w in self.workers.values()
            if w.status.state in ("running", "restarting", "waiting")
        ]
        self._terminate(stopping, force)
        for w in stopping:
            w.status.state = "removed"
            w.status.reason = "stopped"

    # -- outputs -------------------------------------------------------------------------

    def _write_lines(self) -> None:
        batch: list[LogLine] = []
        done = False
        while not done:
            try:
                item = self.lines.get(timeout=0.1)
                if item is None:
                    done = True
                else:
                    batch.append(item)
                while len(batch) < 1000:
                    more = self.lines.get_nowait()
                    if more is None:
                        done = True
                        break
                    batch.append(more)
            except queue.Empty:
                pass
            if batch:
                self._store_lines(batch)
                batch = []

    def _store_lines(self, batch: list[LogLine]) -> None:
        for attempt in range(10):
            try:
                self.logs.write(batch)
                return
            except Exception as exc:  # keep the lines: retry, then report on stderr
                if attempt == 9:
                    print(f"juliarun supervisor: lost {len(batch)} lines: {exc}", file=sys.stderr)
                time.sleep(0.2 * (attempt + 1))

    def _ingest_metrics(self) -> None:
        """Store the metric lines each worker appended (see :mod:`.metricsfile` for how the
        file is read without trusting it). The identity tags (``cluster``, ``tenant``, ``job``,
        ``worker``) are the platform's, whatever a line says; names under ``juliarun.`` are the
        platform's too and refused."""
        for w in self.workers.values():
            if w.metrics is None:
                continue
            data = w.metrics.read()
            notes = w.metrics.take_notes()
            if data:
                points, errors = parse_lines(data.decode("utf-8", errors="replace"), now())
                tags = self._tags(w.status.id)
                kept = [
                    Point(p.name, p.value, p.timestamp, {**p.tags, **tags})
                    for p in points
                    if not p.name.startswith(RESERVED_PREFIX)
                ]
                forged = sum(1 for p in points if set(p.tags) & IDENTITY_TAGS)
                if kept:
                    self.metrics.write(kept)
                note = rejected_metrics_note(errors, len(points) - len(kept))
                if note:
                    notes.append(note)
                if forged:
                    notes.append(
                        f"juliarun: {forged} metric point{'s' * (forged != 1)} set the tags "
                        f"{', '.join(sorted(IDENTITY_TAGS))} themselves: the platform's were kept"
                    )
            for message in notes:
                self.lines.put(
                    LogLine(
                        now(),
                        self.jobdir.name,
                        w.status.id,
                        "stderr",
                        message,
                        self.job["cluster"],
                        self.spec.get("tenant", "default"),
                    )
                )

    def _tags(self, worker_id: str) -> dict[str, str]:
        return {
            "cluster": self.job["cluster"],
            "tenant": self.spec.get("tenant", "default"),
            "job": self.jobdir.name,
            "worker": worker_id,
        }

    def _sample(self) -> None:
        points: list[Point] = []
        t = now()
        for w in self.workers.values():
            if w.handle is None or w.status.state != "running":
                continue
            sample = w.handle.sample()
            if sample is None:
                continue
            tags = self._tags(w.status.id)
            points += [
                Point("juliarun.cpu_seconds", sample.cpu_seconds, t, tags),
                Point("juliarun.memory_bytes", sample.memory_bytes, t, tags),
                Point("juliarun.restarts", float(w.status.restarts), t, tags),
            ]
        if points:
            with contextlib.suppress(Exception):
                self.metrics.write(points)

    def _publish(self, phase: str, *, final: bool) -> None:
        workers = [self.workers[i].status for i in sorted(self.workers)]
        status = JobStatus(
            name=self.jobdir.name,
            kind=self.spec["kind"],
            phase=phase,  # type: ignore[arg-type]
            desired_workers=self.desired(),
            workers=workers,
            reason=self.reason if phase == "failed" else None,
            hint=self.hint if phase == "failed" else None,
            last_lines=self.failed_lines if phase == "failed" else [],
            finished_at=now() if final else None,
        )
        key = repr((phase, status.reason, [(w.state, w.pid, w.restarts) for w in workers]))
        if key == self._last_state and not final:
            return
        self._last_state = key
        me = psutil.Process()
        self.jobdir.write_state(
            status, {"pid": me.pid, "create_time": me.create_time(), "done": final}
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    jobdir = JobDir(Path(args[0]))
    job = jobdir.read_job()
    stores = read_stores(sys.stdin.buffer)
    supervisor = Supervisor(
        jobdir,
        open_log_store(stores["log_store"]),
        open_metric_store(stores["metric_store"]),
        open_runtime(job),
    )
    signal.signal(signal.SIGTERM, lambda *_: supervisor.request_stop("graceful"))
    signal.signal(signal.SIGUSR1, lambda *_: supervisor.request_stop("force"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = datetime.now().isoformat(timespec="seconds")
    print(f"{started} supervising {jobdir.name}", flush=True)
    try:
        return supervisor.run()
    finally:
        supervisor.runtime.close()
        supervisor.logs.close()
        supervisor.metrics.close()


if __name__ == "__main__":
    sys.exit(main())
