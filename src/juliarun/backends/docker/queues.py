"""Queue brokers as containers of the Docker backend's engine: one container of juliarun's broker
image (:mod:`juliarun.queues.image`) per queue, named ``juliarun-<scope>-queue-<name>`` and
labelled like the backend's workers plus ``juliarun.io/queue=<name>``.

The user and a password generated at the first start are kept in
``<home>/clusters/<cluster>/queues/<name>/credentials.json`` (readable by the owner only) and
given to the container in its environment. This machine reaches the broker through ports
published on loopback (``Queue.url``); worker containers, on the engine's default bridge like
the broker, through the broker's address there (``Queue.env``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from juliarun.backends.docker.engine import MANAGED_BY, SCOPE, Names
from juliarun.errors import QueueError
from juliarun.queues.image import AMQP_PORT, MANAGEMENT_PORT, STOMP_PORT
from juliarun.queues.local import broker_dir, check_name
from juliarun.queues.rabbitmq import RabbitMQQueue

QUEUE_LABEL = "juliarun.io/queue"
USER = "juliarun"
_ERRORS = (docker.errors.APIError, requests.exceptions.RequestException)


class DockerQueues:
    """Start, find and delete the queue brokers of one juliarun home and cluster on an engine."""

    def __init__(
        self,
        client: Callable[[], docker.DockerClient],
        names: Names,
        home: Path,
        cluster: str,
        image: Callable[[], str],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.names = names
        self.home = home
        self.cluster = cluster
        self.image = image
        self.clock = clock
        self.sleep = sleep

    def container_name(self, name: str) -> str:
        return f"juliarun-{self.names.scope}-queue-{name}"

    def _credentials(self, name: str) -> dict[str, str]:
        path = broker_dir(self.home, self.cluster, name) / "credentials.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"user": USER, "password": secrets.token_urlsafe(24)}, f)
        data: dict[str, str] = json.loads(path.read_text())
        return data

    def _container(self, name: str) -> Any:
        try:
            return self.client().containers.get(self.container_name(name))
        except docker.errors.NotFound:
            return None
        except _ERRORS as exc:
            raise QueueError(f"the Docker engine cannot look up queue {name!r}: {exc}") from exc

    def start(self, name: str, *, timeout: float = 180.0) -> RabbitMQQueue:
        """Run the broker container unless it runs; a handle once it takes messages."""
        check_name(name)
        creds = self._credentials(name)
        container = self._container(name)
        try:
            if container is None:
                container = self.client().containers.run(
                    self.image(),
                    name=self.container_name(name),
                    detach=True,
                    labels={
                        MANAGED_BY: "juliarun",
                        SCOPE: self.names.scope,
                        QUEUE_LABEL: name,
                    },
                    environment={
                        "JULIARUN_QUEUE_USER": creds["user"],
                        "JULIARUN_QUEUE_PASSWORD": creds["password"],
                    },
                    ports={
                        f"{port}/tcp": ("127.0.0.1", None)
                        for port in (AMQP_PORT, STOMP_PORT, MANAGEMENT_PORT)
                    },
                    restart_policy={"Name": "unless-stopped"},
                    mem_limit="1g",
                )
            elif container.status != "running":
                container.start()
        except _ERRORS as exc:
            raise QueueError(
                f"cannot start the broker container of queue {name!r}: {exc}",
                hint="is the Docker engine up? is JULIARUN_BASE_IMAGE a Debian image?",
            ) from exc
        return self._wait(name, timeout)

    def find(self, name: str) -> RabbitMQQueue | None:
        """The handle of the queue's broker container (``None`` when it is not running)."""
        container = self._container(name)
        if container is None or container.status != "running":
            return None
        settings = container.attrs.get("NetworkSettings") or {}
        ip = ((settings.get("Networks") or {}).get("bridge") or {}).get("IPAddress")
        ports = settings.get("Ports") or {}

        def published(port: int) -> int | None:
            bound = ports.get(f"{port}/tcp") or []
            return int(bound[0]["HostPort"]) if bound else None

        amqp, management = published(AMQP_PORT), published(MANAGEMENT_PORT)
        if not ip or amqp is None or management is None:
            return None
        creds = self._credentials(name)
        quote = urllib.parse.quote
        auth = f"{quote(creds['user'], safe='')}:{quote(creds['password'], safe='')}"
        return RabbitMQQueue(
            f"amqp://{auth}@127.0.0.1:{amqp}/%2F",
            management_url=f"http://127.0.0.1:{management}",
            stomp_port=STOMP_PORT,
            job_host=ip,
            name=name,
        )

    def _wait(self, name: str, timeout: float) -> RabbitMQQueue:
        deadline = self.clock() + timeout
        last = "the container has no address yet"
        while True:
            queue = self.find(name)
            if queue is not None:
                try:
                    queue._api("/api/overview")
                    queue._open()
                    return queue
                except QueueError as exc:
                    last = str(exc)
                    queue.close()
            else:
                container = self._container(name)
                if container is None or container.status in ("exited", "dead"):
                    logs = ""
                    if container is not None:
                        with contextlib.suppress(*_ERRORS):
                            logs = container.logs(tail=15).decode(errors="replace")
                    raise QueueError(
                        f"the broker container of queue {name!r} is not running:\n{logs}",
                        hint=f"docker logs {self.container_name(name)}",
                    )
            if self.clock() > deadline:
                raise QueueError(
                    f"the broker of queue {name!r} was not ready after {timeout:g}s: {last}",
                    hint=f"docker logs {self.container_name(name)}",
                )
            self.sleep(0.5)

    def delete(self, name: str, *, force: bool = False) -> bool:
        """Remove the broker container (stopped first unless ``force``) and its credentials."""
        check_name(name)
        container = self._container(name)
        found = container is not None
        if container is not None:
            try:
                if not force:
                    container.stop(timeout=30)
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except _ERRORS as exc:
                raise QueueError(f"cannot remove the broker of queue {name!r}: {exc}") from exc
        path = broker_dir(self.home, self.cluster, name)
        if path.exists():
            (path / "credentials.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.rmdir()
            found = True
        return found
