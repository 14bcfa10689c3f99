"""The queue broker's image: Debian's ``rabbitmq-server`` with the STOMP and management plugins
enabled, built by juliarun's own image builder (:func:`juliarun.builders.images.build_image`)
from a Debian base and pushed to the cluster's registry. Its tag is a content hash, so a
registry that has it already is not built for again.

>>> spec = broker_image_spec("debian:bookworm")
>>> spec.name, spec.entrypoint
('juliarun/rabbitmq', ['sh', '/opt/juliarun/broker.sh'])
>>> spec.run[-1]
'rabbitmq-plugins enable --offline rabbitmq_management rabbitmq_stomp'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from juliarun.specs import ImageSpec

AMQP_PORT = 5672
STOMP_PORT = 61613
MANAGEMENT_PORT = 15672
ENTRYPOINT = "/opt/juliarun/broker.sh"


@dataclass(frozen=True)
class BrokerImage:
    """Where a backend gets its broker image: ``image`` as it is when given, else built from
    the Debian ``base`` and pushed to ``registry`` (empty: kept on the engine only)."""

    image: str | None = None
    base: str = "debian:bookworm"
    registry: str = ""


def broker_image_spec(base: str) -> ImageSpec:
    """The :class:`~juliarun.specs.ImageSpec` of the broker, on the Debian image ``base``."""
    script = str(files("juliarun").joinpath("queues/broker.sh"))
    return ImageSpec(
        name="juliarun/rabbitmq",
        base=base,
        files={ENTRYPOINT: script},
        run=[
            # no service is started while packages install (there is no init in a build)
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && "
            "chmod 755 /usr/sbin/policy-rc.d",
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends rabbitmq-server && rm -rf /var/lib/apt/lists/*",
            "rabbitmq-plugins enable --offline rabbitmq_management rabbitmq_stomp",
        ],
        entrypoint=["sh", ENTRYPOINT],
        labels={"juliarun.io/component": "queue-broker"},
    )


def ensure_broker_image(
    source: BrokerImage,
    client: Any = None,
    *,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """The broker image's tag: ``source.image`` when set, else built (once) from
    ``source.base`` on the Docker engine ``client`` (default: the engine ``DOCKER_HOST`` or the
    local socket names) and pushed to ``source.registry``."""
    if source.image:
        return source.image
    import docker

    from juliarun.builders.images import build_image

    engine = client or docker.from_env()
    try:
        built = build_image(
            engine,
            broker_image_spec(source.base),
            source.registry,
            on_line=on_line,
            push=bool(source.registry),
        )
    finally:
        if client is None:
            engine.close()
    return built.tag
