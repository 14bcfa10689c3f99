"""The Kubernetes log and metric collector: follows every worker pod of one job and ships its
lines into the log store and its metrics into the metric store, exactly once, until the job ends.

**Lines.** Each pod's ``main`` container log is streamed with ``timestamps=true`` and
``follow=true`` (one stream per pod at a time; new pods are picked up as workers appear, from a
pod listing every ``poll_interval``). Kubernetes merges a container's stdout and stderr into one
log, so every line is stored with stream ``stdout``. A line is identified by (pod, container
restart, timestamp, index among the lines of that timestamp): a pod's log is ordered by time
across its container restarts, so each pod keeps a watermark (the last shipped timestamp and how
many lines of that timestamp were shipped) and a reconnect, which asks again from the watermark's
second (``sinceTime``), skips what it already shipped. A container that restarted while nobody
watched is read once with ``previous=true`` (Kubernetes keeps only the previous container's log).
Another collector of the same job (a second ``juliarun logs collect``, a retried flow) resumes
from the log store: the newest stored line of each worker and the number of lines at its
timestamp form that worker's starting watermark. Metric lines are not in the log store, so each
collector also checkpoints every worker's watermark (log and metric lines alike) after each
shipped batch, in ``$JULIARUN_HOME/collector/<namespace>/<job>.json``; a later collector starts
from the newer of the two, so metric lines printed after a worker's last log line are not
shipped again either.

**Metrics.** A line starting with :data:`METRIC_PREFIX` (``##juliarun-metric ``) is not a log
line: the rest is InfluxDB line protocol (:mod:`juliarun.metrics.lineprotocol`), stored in the
metric store with the job's tags (``cluster``, ``tenant``, ``job``, ``worker``). ``JuliaRun.record``
writes there when ``JULIARUN_METRICS_STDOUT=1`` (set on every pod by the backend). Every
``sample_every`` seconds the kubelet summary API of each node running a worker
(``/api/v1/nodes/<node>/proxy/stats/summary`` through the apiserver) gives per-worker
``juliarun.cpu_seconds`` (cumulative) and ``juliarun.memory_bytes`` (working set), and the pods'
container statuses give ``juliarun.restarts`` — the names the local supervisor records.

**The end.** The collector returns when the job has ended (or is gone, or ``stop()`` is true) and
every pod whose container ran has been read to the end (bounded by ``drain_timeout``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from juliarun.backends.base import CollectResult
from juliarun.backends.kubernetes import diagnosis as dx
from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError
from juliarun.backends.kubernetes.podlogs import parse_log_line, since_time
from juliarun.backends.kubernetes.routes import JobRoutes
from juliarun.errors import BackendError, LineProtocolError
from juliarun.logs.base import LogLine, LogQuery, LogStore
from juliarun.metrics.base import MetricStore, Point
from juliarun.metrics.lineprotocol import RESERVED_PREFIX, parse_line, rejected_metrics_note

METRIC_PREFIX = "##juliarun-metric "
"""A pod's stdout line starting with this is a metric line (InfluxDB line protocol follows)."""

_MICRO = timedelta(microseconds=1)
BATCH = 500


@dataclass
class Watermark:
    """The last shipped timestamp of a pod (or worker) and how many lines of it were seen."""

    stamp: datetime | None = None
    count: int = 0

    def admit(self, stamp: datetime, index: int) -> bool:
        """Whether the ``index``-th line (0-based) of timestamp ``stamp`` is new; advances.

        >>> w = Watermark()
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> [w.admit(t, 0), w.admit(t, 1), w.admit(t, 1), w.admit(t + _MICRO, 0)]
        [True, True, False, True]
        """
        if self.stamp is not None and (
            stamp < self.stamp or (stamp == self.stamp and index < self.count)
        ):
            return False
        if stamp != self.stamp:
            self.stamp, self.count = stamp, 0
        self.count = max(self.count, index + 1)
        return True


def _newer(a: Watermark, b: Watermark | None) -> bool:
    """Whether watermark ``a`` is past ``b`` (``None`` or an empty one: nothing shipped)."""
    if a.stamp is None:
        return False
    if b is None or b.stamp is None:
        return True
    return (a.stamp, a.count) > (b.stamp, b.count)


@dataclass
class _Pod:
    name: str
    worker: str
    tenant: str
    mark: Watermark
    streaming: bool = False
    last: tuple[int, bool] | None = None  # (container restart, previous) of the last stream
    clean: bool = False  # the last stream ended without an error
    done: set[tuple[int, bool]] = field(default_factory=set)  # reads known complete
    run_stamp: datetime | None = None  # the current stream's timestamp and line index in it
    run_index: int = -1
    thread: threading.Thread | None = None


def next_read(pod: _Pod, raw_pod: Mapping[str, Any]) -> tuple[int, bool] | None:
    """The read a pod needs next, as (container restart, previous?), or ``None``. Reading too
    much is harmless (the watermark drops what was shipped); reading too little loses lines.
    Concludes the last stream first: a clean end of a container that has since terminated or
    restarted means it was read to its end."""
    cs = dx.main_container(dict(raw_pod))
    state = cs.get("state") or {}
    restart = int(cs.get("restartCount") or 0)
    if pod.last is not None and pod.clean:
        r, previous = pod.last
        if previous or r < restart or ("terminated" in state and r == restart):
            pod.done.add(pod.last)
    if restart > 0 and not {(restart - 1, False), (restart - 1, True)} & pod.done:
        return (restart - 1, True)  # a container that ran while nobody watched
    if "running" in state or "terminated" in state:
        return None if (restart, False) in pod.done else (restart, False)
    if (cs.get("lastState") or {}).get("terminated") and not {
        (restart, False),
        (restart, True),
    } & pod.done:
        return (restart, True)  # waiting to restart: the one that ended is "previous"
    return None


class KubernetesCollector:
    """Follows the pods of job ``name`` (found through ``routes``) of cluster ``cluster``;
    :meth:`run` ships until the job ends.

    ``on_line`` sees every shipped line (``watch_job`` logs them into the flow run);
    ``clock`` drives the polling. The checkpoint is kept under ``home`` (default
    ``<home>/collector/<namespace>/<job>.json``)."""

    def __init__(
        self,
        routes: JobRoutes,
        name: str,
        logs: LogStore,
        metrics: MetricStore | None = None,
        *,
        cluster: str,
        home: Path,
        poll_interval: float = 0.5,
        on_line: Callable[[LogLine], None] | None = None,
        sample_every: float = 5.0,
        drain_timeout: float = 60.0,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        checkpoint: Path | None = None,
    ) -> None:
        self.routes = routes
        self.client = routes.client
        self.name = name
        self.logs = logs
        self.metrics = metrics
        self.on_line = on_line
        self.poll_interval = poll_interval
        self.sample_every = sample_every
        self.drain_timeout = drain_timeout
        self.log = logger or logging.getLogger("juliarun.kubernetes.collector")
        self.clock = clock
        self.cluster = cluster
        self.pods: dict[str, _Pod] = {}
        self.floors: dict[str, Watermark] = {}
        self.events: queue.Queue[tuple[str, str, Any]] = queue.Queue(maxsize=10_000)
        self.stopped = threading.Event()
        self.result = CollectResult(name)
        self._open: list[Any] = []
        self.checkpoint = checkpoint or (
            Path(home) / "collector" / routes.ns_of(name) / f"{name}.json"
        )
        self.saved: dict[str, Watermark] = self._load_checkpoint()

    # -- resume from the store and the checkpoint ---------------------------------------------

    def _load_checkpoint(self) -> dict[str, Watermark]:
        try:
            data = json.loads(self.checkpoint.read_text())
            return {
                str(w): Watermark(datetime.fromisoformat(str(stamp)), int(count))
                for w, (stamp, count) in data["workers"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable: the store decides
            self.log.warning("ignoring the collector checkpoint %s: %s", self.checkpoint, exc)
            return {}

    def _save_checkpoint(self, workers: set[str]) -> None:
        """Record the watermark of ``workers`` (their lines and points are stored)."""
        changed = False
        for pod in self.pods.values():
            if pod.worker not in workers or pod.mark.stamp is None:
                continue
            mark = Watermark(pod.mark.stamp, pod.mark.count)
            if _newer(mark, self.saved.get(pod.worker)):
                self.saved[pod.worker] = mark
                changed = True
        if not changed:
            return
        body = {
            "job": self.name,
            "workers": {
                w: [m.stamp.isoformat(), m.count]
                for w, m in sorted(self.saved.items())
                if m.stamp is not None
            },
        }
        try:
            self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint.with_name(f".{self.checkpoint.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(body))
            tmp.replace(self.checkpoint)
        except OSError as exc:  # the log store still holds the log lines' watermark
            self.log.warning("collector checkpoint %s not written: %s", self.checkpoint, exc)

    def _floor(self, worker: str) -> Watermark:
        """The worker's newest stored line: where a new collector starts."""
        if worker not in self.floors:
            mark = Watermark()
            q = LogQuery(job=self.name, worker=worker, cluster=self.cluster, limit=1)
            newest = self.logs.query(q)
            if newest:
                stamp = newest[-1].timestamp
                same = LogQuery(
                    job=self.name,
                    worker=worker,
                    cluster=self.cluster,
                    since=stamp,
                    until=stamp + _MICRO,
                )
                mark = Watermark(stamp, self.logs.count(same))
            saved = self.saved.get(worker)
            if saved is not None and _newer(saved, mark):
                mark = Watermark(saved.stamp, saved.count)
            self.floors[worker] = mark
        f = self.floors[worker]
        return Watermark(f.stamp, f.count)

    # -- streams ------------------------------------------------------------------------------

    def _pump(self, pod: _Pod, previous: bool, since: datetime | None) -> None:
        query: dict[str, Any] = {"container": mf.MAIN, "timestamps": True}
        if previous:
            query["previous"] = True
        else:
            query["follow"] = True
        if since is not None:
            query["sinceTime"] = since_time(since)
        ok = False
        try:
            resp = self.client.stream(
                f"{self.routes.pods_path(pod.name)}/log", query=query, timeout=(10.0, 600.0)
            )
            self._open.append(resp)
            try:
                for raw in resp.lines():
                    if self.stopped.is_set():
                        return
                    if raw:
                        self.events.put(("line", pod.name, raw))
            finally:
                resp.close()
            ok = True
        except KubeApiError as exc:
            # gone, or (previous) no earlier container: nothing more to read
            ok = exc.status == 404 or (previous and exc.status == 400)
            self.log.debug("log stream of %s: %s", pod.name, exc)
        except Exception as exc:  # any other failure: read again next poll
            self.log.debug("log stream of %s ended: %s", pod.name, exc)
        finally:
            self.events.put(("end", pod.name, ok))

    def _consider(self, raw_pod: Mapping[str, Any]) -> None:
        meta = raw_pod["metadata"]
        pname = str(meta["name"])
        pod = self.pods.get(pname)
        if pod is None:
            wid = dx.worker_id(self.name, dict(raw_pod))
            labels = meta.get("labels") or {}
            tenant = str(labels.get(mf.TENANT_LABEL, "default"))
            pod = self.pods[pname] = _Pod(pname, wid, tenant, self._floor(wid))
        if pod.streaming:
            return
        read = next_read(pod, raw_pod)
        if read is None:
            return
        self.result.pods.add(pname)
        pod.streaming, pod.last, pod.clean = True, read, False
        pod.run_stamp, pod.run_index = None, -1
        pod.thread = threading.Thread(
            target=self._pump,
            args=(pod, read[1], pod.mark.stamp),
            name=f"collect-{pname}",
            daemon=True,
        )
        pod.thread.start()

    # -- shipping -----------------------------------------------------------------------------

    def _ship(self, batch: list[tuple[str, str]]) -> None:
        lines: list[LogLine] = []
        points: list[Point] = []
        touched: set[str] = set()
        for pname, raw in batch:
            pod = self.pods[pname]
            touched.add(pod.worker)
            stamp, message = parse_log_line(raw)
            if pod.run_stamp == stamp:
                pod.run_index += 1
            else:
                pod.run_stamp, pod.run_index = stamp, 0
            i = pod.run_index
            if not pod.mark.admit(stamp, i):
                self.result.skipped += 1
                continue
            tags = {
                "cluster": self.cluster,
                "tenant": pod.tenant,
                "job": self.name,
                "worker": pod.worker,
            }
            if message.startswith(METRIC_PREFIX):
                try:
                    found = parse_line(message[len(METRIC_PREFIX) :], stamp)
                except LineProtocolError as err:
                    note = rejected_metrics_note([err], 0) or "juliarun: ignored a metric line"
                    lines.append(self._line(pod, stamp, note))  # counts and rules, no content
                    continue
                own = [p for p in found if not p.name.startswith(RESERVED_PREFIX)]
                if len(own) < len(found):
                    said = rejected_metrics_note([], len(found) - len(own))
                    lines.append(self._line(pod, stamp, said or "juliarun: ignored a point"))
                # the platform's identity tags win over the job's own
                points += [Point(p.name, p.value, p.timestamp, {**p.tags, **tags}) for p in own]
                continue
            lines.append(self._line(pod, stamp, message))
        if lines:
            self.result.lines += self.logs.write(lines)
            if self.on_line is not None:
                for line in lines:
                    self.on_line(line)
        if points and self.metrics is not None:
            self.result.metric_points += self.metrics.write(points)
        self._save_checkpoint(touched)

    def _line(self, pod: _Pod, stamp: datetime, message: str) -> LogLine:
        return LogLine(stamp, self.name, pod.worker, "stdout", message, self.cluster, pod.tenant)

    # -- system metrics -----------------------------------------------------------------------

    def sample(self, raw_pods: list[dict[str, Any]]) -> int:
        """One sample of cpu, memory (kubelet summary API) and restarts per worker."""
        if self.metrics is None:
            return 0
        now = datetime.now(UTC)
        points: list[Point] = []
        by_node: dict[str, list[dict[str, Any]]] = {}
        for raw in raw_pods:
            node = raw.get("spec", {}).get("nodeName")
            cs = dx.main_container(raw)
            if node and "running" in (cs.get("state") or {}):
                by_node.setdefault(node, []).append(raw)
                tags = self._tags(raw)
                points.append(
                    Point("juliarun.restarts", float(cs.get("restartCount") or 0), now, tags)
                )
        for node, pods in by_node.items():
            stats = self._summary(node)
            for raw in pods:
                meta = raw["metadata"]
                entry = stats.get((str(meta.get("namespace")), str(meta["name"])))
                if not entry:
                    continue
                tags = self._tags(raw)
                cpu = (entry.get("cpu") or {}).get("usageCoreNanoSeconds")
                mem = (entry.get("memory") or {}).get("workingSetBytes")
                if cpu is not None:
                    points.append(Point("juliarun.cpu_seconds", float(cpu) / 1e9, now, tags))
                if mem is not None:
                    points.append(Point("juliarun.memory_bytes", float(mem), now, tags))
        if points:
            try:
                self.result.system_points += self.metrics.write(points)
            except Exception as exc:  # a sample is best effort
                self.log.debug("system metrics not written: %s", exc)
        return len(points)

    def _tags(self, raw: Mapping[str, Any]) -> dict[str, str]:
        labels = raw["metadata"].get("labels") or {}
        return {
            "cluster": self.cluster,
            "tenant": str(labels.get(mf.TENANT_LABEL, "default")),
            "job": self.name,
            "worker": dx.worker_id(self.name, dict(raw)),
        }

    def _summary(self, node: str) -> dict[tuple[str, str], dict[str, Any]]:
        """The ``main`` container stats of the pods on ``node``, by (namespace, pod name)."""
        try:
            summary = self.client.request(
                "GET", f"/api/v1/nodes/{node}/proxy/stats/summary", timeout=5, retries=0
            )
        except (KubeApiError, BackendError, ValueError) as exc:
            self.log.debug("no kubelet summary from %s: %s", node, exc)
            return {}
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for pod in summary.get("pods") or []:
            ref = pod.get("podRef") or {}
            for c in pod.get("containers") or []:
                if c.get("name") == mf.MAIN:
                    out[(str(ref.get("namespace")), str(ref.get("name")))] = c
        return out

    # -- the loop -----------------------------------------------------------------------------

    def _job_state(self) -> str | None:
        """``None`` while the job runs; ``"succeeded"``/``"failed"``/``"gone"`` once it ended."""
        job = self.client.get_or_none(self.routes.jobs_path(self.name))
        if job is None:
            return "gone"
        for c in job.get("status", {}).get("conditions") or []:
            if c.get("status") == "True" and c.get("type") in {"Complete", "Failed"}:
                return "succeeded" if c["type"] == "Complete" else "failed"
        if job["metadata"].get("deletionTimestamp"):
            return "gone"
        return None

    def _drain_events(self, wait: float) -> None:
        """Ship what the streams read, waiting up to ``wait`` seconds for the first event."""
        batch: list[tuple[str, str]] = []
        deadline = self.clock() + wait
        while True:
            remaining = deadline - self.clock()
            try:
                if remaining > 0 and not batch:
                    kind, pname, item = self.events.get(timeout=remaining)
                else:
                    kind, pname, item = self.events.get_nowait()
            except queue.Empty:
                break
            if kind == "line":
                batch.append((pname, item))
                if len(batch) >= BATCH:
                    self._ship(batch)
                    batch = []
                continue
            if batch:
                self._ship(batch)
                batch = []
            pod = self.pods[pname]
            pod.streaming, pod.clean = False, bool(item)
            if pod.thread is not None:
                pod.thread.join(timeout=1)
        if batch:
            self._ship(batch)

    def _settled(self, raw_pods: list[dict[str, Any]]) -> bool:
        """No stream runs and no pod needs another read."""
        listed = {p["metadata"]["name"]: p for p in raw_pods}
        for pod in self.pods.values():
            if pod.streaming:
                return False
            raw = listed.get(pod.name)
            if raw is not None and next_read(pod, raw) is not None:
                return False
        return True

    def run(self, *, stop: Callable[[], bool] | None = None) -> CollectResult:
        """Collect until the job ends (or ``stop()``); returns what was shipped."""
        stop = stop or (lambda: False)
        ended_at: float | None = None
        last_sample: float | None = None
        try:
            while True:
                state = self._job_state()
                raw_pods = [] if state == "gone" else self.routes.job_pods(self.name)
                for raw in raw_pods:
                    self._consider(raw)
                if state is None and (
                    last_sample is None or self.clock() - last_sample >= self.sample_every
                ):
                    last_sample = self.clock()
                    self.sample(raw_pods)
                self._drain_events(self.poll_interval)
                if stop():
                    self.result.ended = "stopped"
                    return self.result
                if state is None:
                    continue
                if ended_at is None:
                    ended_at = self.clock()
                if self._settled(raw_pods) and self.events.empty():
                    self.result.ended = state
                    return self.result
                if self.clock() - ended_at > self.drain_timeout:
                    self.result.ended = f"{state} (drain timed out)"
                    return self.result
        finally:
            self.stopped.set()
            for resp in self._open:
                resp.close()
            self._drain_events(0)
