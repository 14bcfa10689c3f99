"""A job's output read from its pods' logs: the last lines of a failed pod, every worker's lines
interleaved by time, and a follow that streams each pod (workers started later too) until the
job ends."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from juliarun.backends.kubernetes import diagnosis as dx
from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError
from juliarun.backends.kubernetes.routes import JobRoutes
from juliarun.backends.kubernetes.watch import resumable_watch
from juliarun.errors import BackendError
from juliarun.logs.base import LogLine

_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d) ?(.*)$", re.S)
LAST_LINES = 10


def parse_log_line(line: str) -> tuple[datetime, str]:
    """A ``timestamps=true`` pod log line as (UTC time, message).

    >>> stamp, text = parse_log_line("2026-06-21T17:21:49.123456789Z hello world!")
    >>> stamp.isoformat(), text
    ('2026-06-21T17:21:49.123456+00:00', 'hello world!')
    """
    m = _LOG_TS.match(line)
    if not m:
        return datetime.now(UTC), line
    frac = (m.group(2) or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    stamp = datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").astimezone(UTC)
    return stamp, m.group(4)


def since_time(since: datetime) -> str:
    """``since`` as a log request's ``sinceTime`` (whole seconds, UTC)."""
    return since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodLogs:
    """Reads the ``main`` container logs of jobs' pods, found through ``routes``."""

    def __init__(
        self,
        routes: JobRoutes,
        *,
        cluster: str,
        poll_interval: float = 0.5,
        logger: logging.Logger | None = None,
    ) -> None:
        self.routes = routes
        self.client = routes.client
        self.cluster = cluster
        self.poll_interval = poll_interval
        self.log = logger or logging.getLogger("juliarun.kubernetes")

    def read(
        self, pod: str, *, lines: int | None = None, since: datetime | None = None
    ) -> list[tuple[datetime, str]]:
        """The timestamped lines of one pod (the last ``lines`` / those from ``since``)."""
        query: dict[str, Any] = {"container": mf.MAIN, "timestamps": True}
        if lines is not None:
            query["tailLines"] = lines
        if since is not None:
            query["sinceTime"] = since_time(since)
        try:
            text = self.client.request(
                "GET", f"{self.routes.pods_path(pod)}/log", query=query, raw=True
            )
        except KubeApiError as exc:
            if exc.status in {400, 404}:  # not started yet, or gone
                return []
            raise
        return [parse_log_line(ln) for ln in text.splitlines() if ln]

    def last_lines(self, pod: str) -> list[str]:
        """The last :data:`LAST_LINES` non-blank lines of a pod (of its previous container
        when the current one printed nothing)."""
        for previous in (False, True):
            try:
                text = self.client.request(
                    "GET",
                    f"{self.routes.pods_path(pod)}/log",
                    query={"container": mf.MAIN, "tailLines": LAST_LINES, "previous": previous},
                    raw=True,
                )
            except KubeApiError:
                continue
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-LAST_LINES:]
        return []

    def line(
        self, name: str, wid: str, stamp: datetime, message: str, pod: Mapping[str, Any]
    ) -> LogLine:
        """One line of worker ``wid`` of job ``name`` as a :class:`LogLine`."""
        tenant = (pod["metadata"].get("labels") or {}).get(mf.TENANT_LABEL, "default")
        return LogLine(stamp, name, wid, "stdout", message, cluster=self.cluster, tenant=tenant)

    def lines(
        self,
        name: str,
        *,
        since: datetime | None = None,
        lines: int | None = None,
        worker: str | None = None,
    ) -> list[LogLine]:
        """The job's lines now, every worker interleaved by time (the last ``lines`` only)."""
        found: list[LogLine] = []
        pods = sorted(self.routes.job_pods(name), key=lambda p: p["metadata"]["creationTimestamp"])
        for pod in pods:
            wid = dx.worker_id(name, pod)
            if worker is not None and wid != worker:
                continue
            for stamp, message in self.read(pod["metadata"]["name"], lines=lines, since=since):
                found.append(self.line(name, wid, stamp, message, pod))
        found.sort(key=lambda ln: ln.timestamp)
        return found[-lines:] if lines else found

    def follow(
        self,
        name: str,
        *,
        since: datetime | None,
        worker: str | None,
        stop: Callable[[], bool],
        done: Callable[[str], bool],
    ) -> Iterator[LogLine]:
        """The job's lines as its pods print them, from a stream per pod (each container
        restart again) that a pod watch starts, until ``done(name)`` and every stream ended,
        or ``stop()``."""
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        stopped = threading.Event()
        streams: dict[tuple[str, int], threading.Thread] = {}
        finished: set[tuple[str, int]] = set()
        open_responses: list[Any] = []
        namespace = self.routes.ns_of(name)

        def pump(key: tuple[str, int], pod: dict[str, Any]) -> None:
            wid = dx.worker_id(name, pod)
            query: dict[str, Any] = {"container": mf.MAIN, "timestamps": True, "follow": True}
            if since is not None:
                query["sinceTime"] = since_time(since)
            try:
                resp = self.client.stream(
                    f"{self.routes.pods_path(key[0])}/log", query=query, timeout=(10.0, 3600.0)
                )
                open_responses.append(resp)
                for raw in resp.lines():
                    if stopped.is_set():
                        break
                    if raw:
                        stamp, message = parse_log_line(raw)
                        events.put(("line", self.line(name, wid, stamp, message, pod)))
            except (BackendError, OSError) as exc:
                self.log.debug("log stream of %s ended: %s", key[0], exc)
            finally:
                events.put(("end", key))

        def consider(pod: dict[str, Any]) -> None:
            if worker is not None and dx.worker_id(name, pod) != worker:
                return
            cs = dx.main_container(pod)
            state = cs.get("state") or {}
            if not ("running" in state or "terminated" in state):
                return
            key = (pod["metadata"]["name"], int(cs.get("restartCount") or 0))
            if key in streams:
                return
            thread = threading.Thread(target=pump, args=(key, pod), daemon=True)
            streams[key] = thread
            thread.start()

        def watch_pods() -> None:
            def list_fn() -> Mapping[str, Any]:
                return self.client.get(  # type: ignore[no-any-return]
                    self.routes.pods_path(namespace=namespace), labelSelector=mf.selector(name)
                )

            def watch_fn(version: str) -> Iterator[str]:
                resp = self.client.stream(
                    self.routes.pods_path(namespace=namespace),
                    query={
                        "watch": True,
                        "resourceVersion": version,
                        "allowWatchBookmarks": True,
                        "labelSelector": mf.selector(name),
                        "timeoutSeconds": 10,
                    },
                    timeout=(10, 30),
                )
                open_responses.append(resp)
                return resp.lines()

            try:
                for kind, pod in resumable_watch(
                    list_fn, watch_fn, stop=stopped.is_set, sleep=time.sleep
                ):
                    if kind != "DELETED":
                        events.put(("pod", pod))
            except Exception as exc:  # the follow ends on its own poll; say why
                events.put(("watch-error", exc))

        watcher = threading.Thread(target=watch_pods, daemon=True)
        watcher.start()
        next_check = 0.0
        ended = False
        try:
            while True:
                try:
                    kind, item = events.get(timeout=self.poll_interval)
                except queue.Empty:
                    kind, item = "tick", None
                if kind == "line":
                    yield item
                    continue
                if kind == "pod":
                    consider(item)
                elif kind == "end":
                    finished.add(item)
                if stop():
                    return
                if not ended and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.poll_interval
                    ended = done(name)
                    if ended:  # streams for pods whose events the watch has not shown yet
                        for pod in self.routes.job_pods(name):
                            consider(pod)
                if ended and set(streams) <= finished and events.empty():
                    return
        finally:
            stopped.set()
            for resp in open_responses:
                resp.close()
