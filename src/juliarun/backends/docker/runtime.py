"""Workers as Docker containers: the Docker backend's worker runtime.

One container per worker attempt, named from the job and worker (``juliarun-<scope>-<job>-<i>``)
and labelled with both. The supervisor applies the restart policy (Docker's own is left off, so
restarts behave as on local); an attempt replaces the previous attempt's container. ``tini``
(``init=True``) is PID 1, so SIGTERM reaches the worker as it does a local process group.
stdout and stderr are two ``docker logs --follow`` streams read line by line; they end when the
container stops, and the exit code (and ``OOMKilled``) then come from the container's state.
The job's metrics directory and ``JuliaRun.jl`` are bind-mounted under ``/opt/juliarun``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import DeviceRequest, Mount

from juliarun.backends.docker.engine import (
    ATTEMPT,
    JOB,
    MANAGED_BY,
    SCOPE,
    UID,
    WORKER,
    EngineConfig,
    Names,
    retry,
)
from juliarun.backends.docker.storage import docker_mount
from juliarun.backends.supervised.runtime import (
    Exit,
    LineSink,
    Sample,
    WorkerLaunch,
    WorkerStartError,
)
from juliarun.logs.base import Stream

IN_CONTAINER = "/opt/juliarun"
METRICS_DIR = f"{IN_CONTAINER}/metrics"
JULIARUN_JL = f"{IN_CONTAINER}/JuliaRun.jl"
# Connections kept to the engine: two log streams per worker, plus the supervisor's calls.
POOL = 512
# How long a worker killed by SIGKILL is watched for the engine to mark it OOMKilled.
OOM_SETTLE = 1.0
_ENGINE_ERRORS = (docker.errors.APIError, requests.exceptions.RequestException)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


class ContainerHandle:
    """One started worker container."""

    def __init__(
        self, client: docker.DockerClient, container_id: str, pid: int | None, sink: LineSink
    ) -> None:
        self.client = client
        self.id = container_id
        self._pid = pid
        self._exit: Exit | None = None
        self._settle_until: float | None = None
        self._killed = False
        self.readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream in ("stdout", "stderr")
        ]
        for reader in self.readers:
            reader.start()

    @property
    def pid(self) -> int | None:
        return self._pid

    def _read(self, stream: Stream, sink: LineSink) -> None:
        pending = b""
        try:
            chunks = self.client.api.logs(
                self.id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                stream=True,
                follow=True,
            )
            for chunk in chunks:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    sink(stream, _text(raw))
        except _ENGINE_ERRORS as exc:
            sink("stderr", f"juliarun: lost the {stream} of container {self.id[:12]}: {exc}")
        if pending:
            sink(stream, _text(pending))

    def poll(self) -> Exit | None:
        if self._exit is not None:
            return self._exit
        if any(reader.is_alive() for reader in self.readers):
            return None  # the log streams end when the container stops
        try:
            state = self.client.api.inspect_container(self.id)["State"]
        except docker.errors.NotFound:
            self._exit = Exit(137, "its container was removed outside juliarun")
            return self._exit
        except _ENGINE_ERRORS:
            return None  # asked again on the next poll
        if state.get("Running") or state.get("Restarting"):
            return None
        code = int(state.get("ExitCode") or 0)
        if code == 137 and not state.get("OOMKilled") and not self._killed:
            # The engine handles the OOM event apart from the exit: a SIGKILLed container may
            # read as not OOMKilled for a moment. Look again for up to OOM_SETTLE seconds.
            if self._settle_until is None:
                self._settle_until = time.monotonic() + OOM_SETTLE
            if time.monotonic() < self._settle_until:
                return None
        if state.get("OOMKilled") and code != 0:
            self._exit = Exit(code, f"OOMKilled (exit code {code})")
        else:
            self._exit = Exit.of_code(code)
        return self._exit

    def terminate(self, *, force: bool) -> None:
        # A container that is gone or already stopped (404, 409) needs nothing; any other
        # failure is left to the supervisor, which forces after the grace period.
        self._killed = self._killed or force
        with contextlib.suppress(*_ENGINE_ERRORS):
            self.client.api.kill(self.id, signal="SIGKILL" if force else "SIGTERM")

    def sample(self) -> Sample | None:
        try:
            stats = self.client.api.stats(self.id, stream=False, one_shot=True)
        except _ENGINE_ERRORS:
            return None
        cpu = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
        memory = stats.get("memory_stats", {})
        usage = memory.get("usage")
        if cpu is None or usage is None:
            return None
        # As `docker stats` reports it: page cache that can be dropped is not counted.
        detail = memory.get("stats", {})
        inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        return Sample(cpu_seconds=cpu / 1e9, memory_bytes=float(max(usage - inactive, 0)))

    def discard(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(self.id, force=True, v=True)


class DockerRuntime:
    """Starts each worker as a container from the ``runtime`` mapping the Docker backend wrote
    to the job's ``job.json``."""

    # A container creates files as its own user (root, or the image's USER) and only inside the
    # bind-mounted metrics directory; a hard link out of a mount is impossible, a symbolic link
    # is never followed, so the owner is not what keeps the host safe here.
    metrics_owners: frozenset[int] | None = None

    def __init__(self, job: Mapping[str, Any]) -> None:
        self.config: dict[str, Any] = dict(job["runtime"])
        self.uid: str = job["uid"]
        self.names = Names(self.config["scope"])
        self.client = EngineConfig.from_json(self.config["engine"]).connect(pool=POOL)

    def _options(self, launch: WorkerLaunch) -> dict[str, Any]:
        c = self.config
        mounts = [docker_mount(m) for m in c["mounts"]]
        mounts += [
            Mount(METRICS_DIR, str(launch.metrics_file.parent), type="bind"),
            Mount(JULIARUN_JL, c["julia_jl"], type="bind", read_only=True),
        ]
        gpus = int(c.get("gpus", 0))
        return {
            "image": c["image"],
            "command": c["command"],
            "name": self.names.container(launch.id),
            "hostname": launch.id[:63].rstrip("-"),
            "labels": {
                **c["labels"],
                UID: self.uid,
                WORKER: launch.id,
                ATTEMPT: str(launch.restarts),
            },
            "environment": {
                **launch.env,
                "JULIARUN_METRICS_FILE": f"{METRICS_DIR}/{launch.metrics_file.name}",
                **(
                    {"JULIARUN_BUSY_FILE": f"{METRICS_DIR}/{launch.busy_file.name}"}
                    if launch.busy_file is not None
                    else {}
                ),
            },
            "working_dir": c.get("working_dir"),
            "mounts": mounts,
            "nano_cpus": int(c["nano_cpus"]),
            "mem_limit": int(c["mem_limit"]),
            "memswap_limit": int(c["mem_limit"]),  # no swap, as on Kubernetes
            "device_requests": [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
            if gpus
            else None,
            "init": True,
            "detach": True,
        }

    def _create(self, options: dict[str, Any], attempt: str) -> Container:
        """Create the container; a name conflict with a container of this job is resolved:
        this very attempt (a create that answered late) is success, an earlier attempt or a
        leftover of a deleted job of the same name is replaced."""
        name = options["name"]
        for _ in range(3):
            try:
                created: Container = retry(
                    lambda: self.client.containers.create(**options), sleep=time.sleep
                )
                return created
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise WorkerStartError(
                        f"cannot create container {name}: {exc.explanation or exc}"
                    ) from exc
            try:
                existing: Container = self.client.containers.get(name)
            except docker.errors.NotFound:
                continue  # removed meanwhile: create again
            labels = existing.labels
            if (labels.get(UID), labels.get(ATTEMPT), existing.status) == (
                self.uid,
                attempt,
                "created",
            ):
                return existing
            job = options["labels"][JOB]
            if (labels.get(MANAGED_BY), labels.get(SCOPE), labels.get(JOB)) != (
                "juliarun",
                self.names.scope,
                job,
            ):
                raise WorkerStartError(
                    f"cannot create container {name}: the name is taken by a container "
                    "juliarun does not manage",
                    hint=f"remove it (docker rm -f {name})",
                )
            with contextlib.suppress(docker.errors.NotFound):
                existing.remove(force=True, v=True)
        raise WorkerStartError(f"cannot create container {name}: its name stays taken")

    def start(self, launch: WorkerLaunch, sink: LineSink) -> ContainerHandle:
        options = self._options(launch)
        container = self._create(options, str(launch.restarts))
        try:
            retry(container.start, sleep=time.sleep)
            container.reload()
        except docker.errors.APIError as exc:
            raise WorkerStartError(
                f"cannot start {options['command'][0]}: {exc.explanation or exc}"
            ) from exc
        pid = container.attrs.get("State", {}).get("Pid") or None
        return ContainerHandle(self.client, container.id, pid, sink)

    def close(self) -> None:
        self.client.close()
