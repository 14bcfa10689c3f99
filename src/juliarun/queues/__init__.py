"""Message queues for worker jobs: a broker handle (``Queue``) and its implementations.

``rabbitmq`` talks to a RabbitMQ broker (AMQP for publishing, the management API for
statistics); ``local`` runs a dedicated ``rabbitmq-server`` for the local backend. Julia workers
reach the broker with ``JuliaRun.consume`` / ``JuliaRun.publish`` (STOMP) using ``Queue.env``.
"""

from juliarun.queues.base import Queue, QueueStats

__all__ = ["Queue", "QueueStats"]
