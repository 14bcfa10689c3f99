"""A RabbitMQ broker as a ``Queue``: AMQP 0-9-1 (pika) to declare, publish and purge, the
management HTTP API for statistics, and STOMP endpoints handed to Julia jobs.

Queues are durable, without arguments: exactly what RabbitMQ's STOMP plugin declares for a
``/queue/<name>`` destination, so a Julia worker and ``declare`` may come in either order.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

from juliarun.errors import QueueError
from juliarun.queues.base import Body, Queue, QueueStats

# pika ships no type information: its objects are Any here.
Channel = Any


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``.

    >>> mask_url("amqp://jr:s3cret@127.0.0.1:5672/%2F")
    'amqp://jr:***@127.0.0.1:5672/%2F'
    >>> mask_url("amqp://127.0.0.1:5672/%2F")
    'amqp://127.0.0.1:5672/%2F'
    """
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _encode_bodies(bodies: Body | Iterable[Body]) -> Iterable[bytes]:
    if isinstance(bodies, str | bytes):
        bodies = [bodies]
    for body in bodies:
        if isinstance(body, str):
            yield body.encode()
        elif isinstance(body, bytes):
            yield body
        else:
            raise QueueError(
                f"a message body must be str or bytes, not {type(body).__name__}",
                hint="encode the message yourself (e.g. json.dumps) before publishing",
            )


class RabbitMQQueue(Queue):
    """A RabbitMQ broker.

    ``amqp_url`` (``amqp://user:password@host:port/vhost``) is used from this machine; the
    management API at ``management_url`` takes the same credentials. ``stomp_port`` and
    ``job_host`` (default: the AMQP host) are what jobs get in ``env``. The AMQP connection is
    opened on first use and reopened after a failure; one handle is for one thread at a time
    (``stats`` is safe from any thread).

    >>> q = RabbitMQQueue("amqp://jr:pw@127.0.0.1:5672/%2F",
    ...                   management_url="http://127.0.0.1:15672", stomp_port=61613)
    >>> q
    RabbitMQQueue('amqp://jr:***@127.0.0.1:5672/%2F')
    >>> q.env["JULIARUN_QUEUE_PORT"], q.env["JULIARUN_QUEUE_VHOST"]
    ('61613', '/')
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        management_url: str,
        stomp_port: int,
        job_host: str | None = None,
        timeout: float = 10.0,
        name: str | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(amqp_url)
        if parts.scheme != "amqp" or not parts.hostname:
            raise QueueError(
                f"not an AMQP URL: {mask_url(amqp_url)!r}",
                hint="use amqp://user:password@host:port/vhost",
            )
        self._url = amqp_url
        self.name = name  # the broker's name on its cluster (None: a broker of its own)
        self.host = parts.hostname
        self.port = parts.port or 5672
        self.user = urllib.parse.unquote(parts.username or "guest")
        self._password = urllib.parse.unquote(parts.password or "guest")
        self.vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.management_url = management_url.rstrip("/")
        self.stomp_port = stomp_port
        self.job_host = job_host or self.host
        self.timeout = timeout
        self._connection: Any = None
        self._channel: Channel | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_url(self._url)!r})"

    __str__ = __repr__

    @property
    def url(self) -> str:
        return self._url

    @property
    def masked_url(self) -> str:
        """``url`` with the password masked, for logs."""
        return mask_url(self._url)

    @property
    def env(self) -> dict[str, str]:
        quote = urllib.parse.quote
        stomp = (
            f"stomp://{quote(self.user, safe='')}:{quote(self._password, safe='')}"
            f"@{self.job_host}:{self.stomp_port}/{quote(self.vhost, safe='')}"
        )
        return {
            "JULIARUN_QUEUE_URL": stomp,
            "JULIARUN_QUEUE_HOST": self.job_host,
            "JULIARUN_QUEUE_PORT": str(self.stomp_port),
            "JULIARUN_QUEUE_USER": self.user,
            "JULIARUN_QUEUE_PASSWORD": self._password,
            "JULIARUN_QUEUE_VHOST": self.vhost,
        }

    # -- AMQP ---------------------------------------------------------------------------

    def _open(self) -> Channel:
        import pika  # type: ignore[import-untyped]
        import pika.exceptions  # type: ignore[import-untyped]

        if self._connection is not None and self._connection.is_open:
            try:  # a broker that went away since the last call shows up here
                self._connection.process_data_events(time_limit=0)
            except pika.exceptions.AMQPError:
                self._connection = None
                self._channel = None
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is None or not self._connection.is_open:
            params = pika.ConnectionParameters(
                host=self.host,
                port=self.port,
                virtual_host=self.vhost,
                credentials=pika.PlainCredentials(self.user, self._password),
                socket_timeout=self.timeout,
                blocked_connection_timeout=self.timeout,
                connection_attempts=1,
            )
            try:
                self._connection = pika.BlockingConnection(params)
            except pika.exceptions.AMQPError as exc:
                raise QueueError(
                    f"cannot connect to RabbitMQ at {self.host}:{self.port}: {exc!r}",
                    hint="is the broker running? (juliarun.start_queue starts one)",
                ) from exc
        channel = self._connection.channel()
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def _call(self, what: str, name: str, action: Any, *, retry: bool = True) -> Any:
        import pika.exceptions

        with self._lock:
            for attempt in (1, 2):
                channel = self._open()
                try:
                    return action(channel)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self._channel = None
                    if exc.reply_code == 404:
                        raise QueueError(
                            f"queue {name!r} does not exist on {self.masked_url}",
                            hint=f"declare it first: queue.declare({name!r})",
                        ) from exc
                    raise QueueError(f"{what} {name!r}: the broker said {exc!r}") from exc
                except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                    raise QueueError(
                        f"{what} {name!r}: the broker did not take the message ({exc!r})",
                        hint=f"declare the queue first: queue.declare({name!r})",
                    ) from exc
                except pika.exceptions.AMQPConnectionError as exc:
                    # A broker restarted since the last call: reconnect once.
                    self._connection = None
                    self._channel = None
                    if attempt == 2 or not retry:
                        raise QueueError(
                            f"{what} {name!r}: connection to {self.host}:{self.port} lost ({exc!r})"
                        ) from exc
        raise AssertionError("unreachable")

    def declare(self, name: str) -> None:
        self._call("declare", name, lambda ch: ch.queue_declare(queue=name, durable=True))

    def publish(self, name: str, bodies: Body | Iterable[Body]) -> int:
        import pika

        properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

        def send(channel: Channel) -> int:
            count = 0
            for body in _encode_bodies(bodies):
                channel.basic_publish(
                    exchange="", routing_key=name, body=body, properties=properties, mandatory=True
                )
                count += 1
            return count

        # Not retried: messages confirmed before a lost connection must not be sent twice.
        return int(self._call("publish to", name, send, retry=False))

    def depth(self, name: str) -> int:
        result = self._call("depth of", name, lambda ch: ch.queue_declare(queue=name, passive=True))
        return int(result.method.message_count)

    def take(self, name: str, limit: int | None = None) -> list[bytes]:
        def get(channel: Channel) -> list[bytes]:
            bodies: list[bytes] = []
            while limit is None or len(bodies) < limit:
                method, _, body = channel.basic_get(queue=name, auto_ack=False)
                if method is None:
                    break
                bodies.append(bytes(body))
                channel.basic_ack(method.delivery_tag)
            return bodies

        return list(self._call("take from", name, get, retry=False))

    def purge(self, name: str) -> int:
        result = self._call("purge", name, lambda ch: ch.queue_purge(queue=name))
        return int(result.method.message_count)

    def delete_queue(self, name: str) -> None:
        """Delete the queue ``name`` and its messages (no-op when it does not exist)."""
        self._call("delete", name, lambda ch: ch.queue_delete(queue=name))

    def close(self) -> None:
        import pika.exceptions

        with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
            if connection is not None and connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()

    # -- management API -----------------------------------------------------------------

    def _api(self, path: str) -> Any:
        token = base64.b64encode(f"{self.user}:{self._password}".encode()).decode()
        request = urllib.request.Request(
            self.management_url + path, headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise QueueError(
                f"RabbitMQ management API {self.management_url}{path}: HTTP {exc.code}",
                hint="the management plugin must be enabled and the user tagged management",
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise QueueError(
                f"RabbitMQ management API at {self.management_url} did not answer: {exc}",
                hint="is the broker running with the rabbitmq_management plugin?",
            ) from exc

    def stats(self, name: str) -> QueueStats:
        quote = urllib.parse.quote
        data = self._api(f"/api/queues/{quote(self.vhost, safe='')}/{quote(name, safe='')}")
        if data is None:
            raise QueueError(
                f"queue {name!r} does not exist on {self.masked_url}",
                hint=f"declare it first: queue.declare({name!r})",
            )
        rates = data.get("message_stats") or {}

        def rate(key: str) -> float:
            return float((rates.get(key) or {}).get("rate", 0.0))

        return QueueStats(
            name=name,
            ready=int(data.get("messages_ready") or 0),
            unacked=int(data.get("messages_unacknowledged") or 0),
            consumers=int(data.get("consumers") or 0),
            publish_rate=rate("publish_details"),
            deliver_rate=rate("deliver_get_details"),
            redelivered=int(rates.get("redeliver") or 0),
        )
