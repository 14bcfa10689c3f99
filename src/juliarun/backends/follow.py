"""Follow a job's lines until it ends: the one implementation behind ``api.tail(follow=True)``,
the ``watch_job`` task and the package-bundle builder job.

Where the lines come from depends on what the backend offers, not on its kind:

- a :class:`~juliarun.backends.base.LogCollector` (Kubernetes), when ``collect`` is on, ships
  every worker's lines into the log store (exactly once) and hands each to ``on_line``;
- a :class:`~juliarun.backends.base.LogSource` (Kubernetes pod logs), when not collecting,
  reads them from the workers themselves (``tail`` does not write to the store);
- otherwise a supervisor already ships them (local, Docker): they are followed in the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from juliarun.backends.base import (
    Backend,
    CollectResult,
    JobStatus,
    LogCollector,
    LogSource,
)
from juliarun.errors import JobTimeoutError
from juliarun.logs.base import LogLine, LogQuery, LogStore, Stream
from juliarun.metrics.base import MetricStore


@dataclass
class Followed:
    """How following a job ended: its final status, the lines handed on, and what a collector
    shipped (``None`` where a supervisor ships)."""

    status: JobStatus
    lines: int
    collected: CollectResult | None = None
    timeout: float | None = None

    def raise_if_running(self) -> JobStatus:
        """The final status; :class:`JobTimeoutError` when the job had not ended."""
        if not self.status.done:
            raise JobTimeoutError(self.status.name, self.timeout or 0.0, str(self.status))
        return self.status


def stored_lines(
    backend: Backend,
    name: str | None,
    *,
    worker: str | None = None,
    stream: Stream | None = None,
    lines: int | None = None,
    created_at: datetime | None = None,
) -> LogQuery:
    """The log-store query for job ``name``'s lines (every job's when ``None``) on
    ``backend``'s cluster: only those written since the job was created (``created_at``, else
    read from its status: an older job of the same name is not this one), the last ``lines``
    of them when given."""
    since = created_at or (backend.status(name).created_at if name is not None else None)
    return LogQuery(
        job=name, worker=worker, stream=stream, cluster=backend.cluster, since=since, limit=lines
    )


def follow_job(
    backend: Backend,
    name: str,
    logs: LogStore,
    *,
    on_line: Callable[[LogLine], None],
    on_status: Callable[[JobStatus], None] | None = None,
    metrics: MetricStore | None = None,
    collect: bool = True,
    worker: str | None = None,
    stream: Stream | None = None,
    lines: int | None = None,
    timeout: float | None = None,
    poll_interval: float = 0.5,
    created_at: datetime | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Followed:
    """Hand every line of job ``name`` (of ``worker`` / ``stream`` when given; the last
    ``lines`` of those already written, then new ones) to ``on_line`` until the job ends, or
    for at most ``timeout`` seconds (the job is left running, and the status returned is not
    ``done``: :meth:`Followed.raise_if_running` turns that into :class:`JobTimeoutError`).
    ``on_status`` sees the job's status as it is polled (at most every ``poll_interval``).
    ``created_at`` is the job's creation time when the caller has it (the status its submit
    returned): lines followed in the store start there, without reading the status first."""
    deadline = None if timeout is None else clock() + timeout
    count = 0
    polled_at: float | None = None

    def past_deadline() -> bool:
        return deadline is not None and clock() >= deadline

    def poll() -> JobStatus:
        nonlocal polled_at
        polled_at = clock()
        current = backend.status(name)
        if on_status is not None:
            on_status(current)
        return current

    def watching() -> bool:
        """The stop condition of a collector or a log source: the deadline, with the status
        polled for ``on_status`` on the way."""
        if on_status is not None and (polled_at is None or clock() - polled_at >= poll_interval):
            poll()
        return past_deadline()

    def wanted(line: LogLine) -> bool:
        return (worker is None or line.worker == worker) and (
            stream is None or line.stream == stream
        )

    def hand_on(line: LogLine) -> None:
        nonlocal count
        if wanted(line):
            count += 1
            on_line(line)

    collected: CollectResult | None = None
    final: JobStatus | None = None
    if collect and isinstance(backend, LogCollector):
        collected = backend.collect(name, logs, metrics, on_line=hand_on, stop=watching)
    elif isinstance(backend, LogSource):
        for line in backend.logs(name, follow=True, lines=lines, worker=worker, stop=watching):
            hand_on(line)
    else:
        query = stored_lines(
            backend, name, worker=worker, stream=stream, lines=lines, created_at=created_at
        )

        def stop() -> bool:
            nonlocal final
            current = poll()
            if current.done:
                final = current
                return True
            return past_deadline()

        for line in logs.follow(query, stop=stop, poll_interval=poll_interval):
            hand_on(line)
    if final is None:
        final = poll()
    return Followed(final, count, collected, timeout)
