"""The pure parts of juliarun.queues: names, URLs, the environment handed to jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from juliarun.errors import QueueError, SpecError
from juliarun.queues import QueueStats
from juliarun.queues.local import LocalBroker, delete_local_broker, start_local_broker
from juliarun.queues.rabbitmq import RabbitMQQueue, mask_url


@pytest.mark.parametrize("name", ["Work", "a_b", "-a", "a-", "", "x" * 41, "a/b", "../up"])
def test_a_bad_broker_name_fails_before_anything_is_created(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError) as err:
        start_local_broker(tmp_path, "local", name)
    assert err.value.errors[0][0] == "name"
    assert repr(name) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_deleting_a_broker_that_never_existed_is_false(tmp_path: Path) -> None:
    assert delete_local_broker(tmp_path, "local", "never") is False


def test_env_quotes_credentials_in_the_url_and_keeps_them_raw_in_the_parts() -> None:
    q = RabbitMQQueue(
        "amqp://us%40er:p%2Fw%3Ad@broker.example:5673/jobs",
        management_url="http://broker.example:15672/",
        stomp_port=61614,
        job_host="10.0.0.7",
    )
    assert q.env == {
        "JULIARUN_QUEUE_URL": "stomp://us%40er:p%2Fw%3Ad@10.0.0.7:61614/jobs",
        "JULIARUN_QUEUE_HOST": "10.0.0.7",
        "JULIARUN_QUEUE_PORT": "61614",
        "JULIARUN_QUEUE_USER": "us@er",
        "JULIARUN_QUEUE_PASSWORD": "p/w:d",
        "JULIARUN_QUEUE_VHOST": "jobs",
    }
    assert (q.host, q.port, q.management_url) == (
        "broker.example",
        5673,
        "http://broker.example:15672",
    )
    assert str(q) == repr(q) == "RabbitMQQueue('amqp://us%40er:***@broker.example:5673/jobs')"
    assert q.masked_url == mask_url(q.url) and "p%2Fw" in q.url


def test_not_an_amqp_url_is_a_queue_error() -> None:
    with pytest.raises(QueueError, match="not an AMQP URL") as err:
        RabbitMQQueue("http://u:secret@h/", management_url="http://h", stomp_port=1)
    assert "secret" not in str(err.value)


def test_backlog_is_ready_plus_unacked() -> None:
    stats = QueueStats("w", ready=3, unacked=4, consumers=2, publish_rate=1.0, deliver_rate=0.5)
    assert stats.backlog == 7


def test_a_broker_started_before_node_names_had_a_hash_keeps_its_node(tmp_path: Path) -> None:
    """Its Mnesia data (durable queues, messages) is kept under the node's name."""
    broker = LocalBroker(tmp_path / "home", "local", "old")
    broker.path.mkdir(parents=True)
    (broker.path / "broker.json").write_text(
        json.dumps({"node": "juliarun-old@localhost", "ports": {"amqp": 1}})
    )
    assert broker.node == "juliarun-old@localhost"
