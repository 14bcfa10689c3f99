"""Smoke test: the real RabbitMQ broker takes messages and hands them back, in order."""

from __future__ import annotations

import json

import pika
import pytest

pytestmark = pytest.mark.rabbitmq


def test_publish_then_consume(amqp_url: str, amqp_queue: str) -> None:
    messages = [{"task": i, "status": "done"} for i in range(5)]
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue=amqp_queue, durable=False)
        for message in messages:
            channel.basic_publish(
                exchange="",
                routing_key=amqp_queue,
                body=json.dumps(message).encode(),
                properties=pika.BasicProperties(content_type="application/json"),
                mandatory=True,
            )
        assert channel.queue_declare(queue=amqp_queue, passive=True).method.message_count == 5

        received = []
        for method, properties, body in channel.consume(amqp_queue, inactivity_timeout=5):
            assert method is not None, "timed out waiting for a message"
            assert properties.content_type == "application/json"
            received.append(json.loads(body))
            channel.basic_ack(method.delivery_tag)
            if len(received) == len(messages):
                break
        channel.cancel()
        assert received == messages
        assert channel.queue_declare(queue=amqp_queue, passive=True).method.message_count == 0
    finally:
        connection.close()
