"""The queue seam: a handle on one broker, and what it reports about a queue."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueStats:
    """One queue's state as the broker reports it.

    ``ready`` messages wait for a consumer; ``unacked`` ones are delivered and not yet
    acknowledged; rates are messages per second over the broker's last sampling interval;
    ``redelivered`` counts deliveries of messages delivered before.

    >>> stats = QueueStats("work", 7, 2, consumers=1, publish_rate=0.0, deliver_rate=1.5)
    >>> stats.backlog
    9
    """

    name: str
    ready: int
    unacked: int
    consumers: int
    publish_rate: float
    deliver_rate: float
    redelivered: int = 0
    """Messages the broker has delivered again since the queue was declared (taken back from a
    consumer that went away without acknowledging them)."""

    @property
    def backlog(self) -> int:
        """Messages not yet done: ready plus unacknowledged."""
        return self.ready + self.unacked


Body = str | bytes


class Queue(ABC):
    """A handle on a message broker: declare queues, publish, read depths and statistics.

    ``url`` reaches the broker from this machine (credentials included; its ``repr`` masks the
    password); ``env`` holds what a job needs to reach it from where the job runs; ``name`` is
    the broker's name on its cluster (``start_queue``'s), ``None`` for a broker of its own.
    """

    name: str | None = None

    @property
    @abstractmethod
    def url(self) -> str:
        """The broker's URL from this machine, with credentials."""

    @property
    @abstractmethod
    def env(self) -> dict[str, str]:
        """Variables for a job: ``JULIARUN_QUEUE_URL``, ``_HOST``, ``_PORT``, ``_USER``,
        ``_PASSWORD``, ``_VHOST``."""

    @abstractmethod
    def declare(self, name: str) -> None:
        """Create the durable queue ``name`` (no-op when it exists)."""

    @abstractmethod
    def publish(self, name: str, bodies: Body | Iterable[Body]) -> int:
        """Publish one body or many as persistent messages, each confirmed by the broker;
        returns how many were published."""

    @abstractmethod
    def depth(self, name: str) -> int:
        """Messages ready in ``name`` right now."""

    @abstractmethod
    def stats(self, name: str) -> QueueStats:
        """Ready/unacked/consumers and rates of ``name``."""

    @abstractmethod
    def take(self, name: str, limit: int | None = None) -> list[bytes]:
        """Take (and acknowledge) the messages ready in queue ``name``, at most ``limit``."""

    @abstractmethod
    def purge(self, name: str) -> int:
        """Drop every ready message of ``name``; returns how many were dropped."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (the broker keeps running)."""

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
