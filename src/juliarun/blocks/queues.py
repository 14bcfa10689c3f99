"""The ``RabbitMQ`` block: an existing broker (one juliarun did not start) as the same
:class:`~juliarun.queues.base.Queue` handle ``start_queue`` gives.

The URL carries no credentials: the user and password are fields of their own, the password a
``SecretStr`` (masked in the UI, stored encrypted), unwrapped only when the handle connects.

>>> block = RabbitMQ(url="amqp://mq.example:5672/%2F", username="jr", password="s3cret")
>>> block.password
SecretStr('**********')
>>> queue = block.queue()
>>> queue, queue.management_url, queue.env["JULIARUN_QUEUE_HOST"]
(RabbitMQQueue('amqp://jr:***@mq.example:5672/%2F'), 'http://mq.example:15672', 'mq.example')
>>> RabbitMQ(url="amqp://jr:pw@mq.example/%2F", username="jr", password="pw")
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for RabbitMQ
url
  Value error, must not hold credentials: give them as username and password ...
"""

from __future__ import annotations

import urllib.parse

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from juliarun.blocks.stores import DOCS
from juliarun.queues.rabbitmq import RabbitMQQueue

RABBITMQ_LOGO = "https://www.rabbitmq.com/img/rabbitmq-logo.svg"


class RabbitMQ(Block):
    """An existing RabbitMQ broker (with the management and STOMP plugins) for worker jobs."""

    _block_type_name = "juliarun RabbitMQ"
    _block_type_slug = "juliarun-rabbitmq"
    _logo_url = RABBITMQ_LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]
    _description = "A RabbitMQ broker juliarun's worker jobs consume from and publish to."

    url: str = Field(
        description="AMQP URL without credentials, amqp://host:port/vhost (vhost %2F for /)."
    )
    username: str = Field(min_length=1, description="The broker user.")
    password: SecretStr = Field(description="The broker user's password.")
    management_url: str | None = Field(
        None,
        description="The management API (default http://<host>:15672); the user needs the "
        "management tag.",
    )
    stomp_port: int = Field(61613, ge=1, le=65535, description="The STOMP port jobs use.")
    job_host: str | None = Field(
        None, description="The broker's address as jobs see it (default: the URL's host)."
    )

    @field_validator("url")
    @classmethod
    def _amqp(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme != "amqp" or not parts.hostname:
            raise ValueError("must be amqp://host:port/vhost")
        if parts.username or parts.password:
            raise ValueError(
                "must not hold credentials: give them as username and password (the password "
                "is kept secret)"
            )
        return value

    def queue(self) -> RabbitMQQueue:
        """The broker as a :class:`~juliarun.queues.base.Queue` handle (``declare``,
        ``publish``, ``depth``, ``stats``, ``env`` for jobs)."""
        parts = urllib.parse.urlsplit(self.url)
        quote = urllib.parse.quote
        auth = f"{quote(self.username, safe='')}:{quote(self.password.get_secret_value(), safe='')}"
        netloc = f"{auth}@{parts.netloc}"
        return RabbitMQQueue(
            urllib.parse.urlunsplit(parts._replace(netloc=netloc)),
            management_url=self.management_url or f"http://{parts.hostname}:15672",
            stomp_port=self.stomp_port,
            job_host=self.job_host,
        )
