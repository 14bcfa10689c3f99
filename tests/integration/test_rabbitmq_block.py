"""The ``RabbitMQ`` block: an existing broker (the test environment's), saved on the Prefect
server with its password as a secret, loaded back as the same ``Queue`` handle
``start_queue`` gives: declare, publish (confirmed), depth, stats from the management API."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from juliarun.blocks import RabbitMQ

pytestmark = [pytest.mark.rabbitmq, pytest.mark.prefect_server]


@pytest.fixture
def saved_name(prefect_api_url: str) -> Iterator[str]:
    name = f"juliarun-test-{uuid.uuid4().hex[:8]}"
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield name
        RabbitMQ.delete(name)


def test_a_saved_rabbitmq_block_gives_a_queue_handle_and_keeps_its_password_secret(
    rabbitmq_endpoints: dict[str, str], amqp_queue: str, saved_name: str, prefect_api_url: str
) -> None:
    parts = urllib.parse.urlsplit(rabbitmq_endpoints["amqp"])
    user, password = parts.username or "", urllib.parse.unquote(parts.password or "")
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.hostname}:{parts.port}"))
    RabbitMQ(
        url=url,
        username=user,
        password=password,
        management_url=rabbitmq_endpoints["management"],
        stomp_port=int(rabbitmq_endpoints["stomp"]),
    ).save(saved_name)
    # the server holds the password as a secret: what it returns for the block is masked
    document = httpx.post(
        f"{prefect_api_url}/block_documents/filter", json={"include_secrets": False}
    )
    document.raise_for_status()
    saved = [d for d in document.json() if d["name"] == saved_name]
    assert len(saved) == 1 and saved[0]["data"]["password"] != password
    block = RabbitMQ.load(saved_name)
    with block.queue() as queue:
        queue.declare(amqp_queue)
        assert queue.publish(amqp_queue, ["a", "b", b"c"]) == 3
        assert queue.depth(amqp_queue) == 3
        deadline = time.monotonic() + 30
        while queue.stats(amqp_queue).ready != 3:  # the management API samples every few s
            assert time.monotonic() < deadline, queue.stats(amqp_queue)
            time.sleep(0.5)
        assert sorted(queue.take(amqp_queue)) == [b"a", b"b", b"c"]
        env = queue.env
        assert env["JULIARUN_QUEUE_PORT"] == rabbitmq_endpoints["stomp"]
        assert (env["JULIARUN_QUEUE_USER"], env["JULIARUN_QUEUE_PASSWORD"]) == (user, password)
