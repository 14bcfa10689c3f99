"""Queue brokers as services of a Kubernetes cluster: one RabbitMQ pod, a Service and a Secret per
queue, in the backend's namespace, all labelled ``juliarun.io/queue=<name>``.

* The **Secret** ``juliarun-queue-<name>`` holds the user and a password generated when the queue
  is first started (kept across restarts of the broker; deleted with the queue). The broker pod
  reads them from it (``secretKeyRef``); so do the job pods, which get only the Secret's name in
  ``Queue.env`` (``JULIARUN_QUEUE_SECRET``) and the password from the Secret itself, never in
  the Job object.
* The **pod** runs juliarun's broker image (:mod:`juliarun.queues.image`), its data on an
  ``emptyDir`` (a restarted container keeps its durable queues and persistent messages).
* The **Service** (``NodePort``) gives jobs a ClusterIP endpoint — ``Queue.env`` carries the
  address, so no cluster DNS is needed — and gives this machine the broker through a node's
  address and the node ports: ``Queue.url``.

>>> objs = broker_objects("mq", "jr", "reg/juliarun/rabbitmq:abc", "s3cret")
>>> [o["kind"] for o in objs]
['Secret', 'Pod', 'Service']
>>> objs[1]["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]
{'name': 'juliarun-queue-mq', 'key': 'password'}
>>> "s3cret" in str(objs[1]) + str(objs[2])
False
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.backends.kubernetes.manifests import MANAGED_BY
from juliarun.errors import QueueError
from juliarun.queues.image import AMQP_PORT, MANAGEMENT_PORT, STOMP_PORT
from juliarun.queues.local import check_name
from juliarun.queues.rabbitmq import RabbitMQQueue

QUEUE_LABEL = "juliarun.io/queue"
SECRET_ENV = "JULIARUN_QUEUE_SECRET"
USER = "juliarun"
PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")


def object_name(name: str) -> str:
    """The name of the pod, Service and Secret of queue ``name``.

    >>> object_name("mq")
    'juliarun-queue-mq'
    """
    return f"juliarun-queue-{name}"


def labels(name: str) -> dict[str, str]:
    return {MANAGED_BY: "juliarun", QUEUE_LABEL: name}


def broker_objects(
    name: str, namespace: str, image: str, password: str, *, user: str = USER
) -> list[dict[str, Any]]:
    """The Secret, pod and Service of queue ``name`` (plain dicts, as sent)."""
    obj = object_name(name)
    meta = {"name": obj, "namespace": namespace, "labels": labels(name)}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": {"user": user, "password": password},
    }

    def from_secret(var: str, key: str) -> dict[str, Any]:
        return {"name": var, "valueFrom": {"secretKeyRef": {"name": obj, "key": key}}}

    ports = [
        {"name": "amqp", "containerPort": AMQP_PORT},
        {"name": "stomp", "containerPort": STOMP_PORT},
        {"name": "management", "containerPort": MANAGEMENT_PORT},
    ]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "broker",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "env": [
                        from_secret("JULIARUN_QUEUE_USER", "user"),
                        from_secret("JULIARUN_QUEUE_PASSWORD", "password"),
                    ],
                    "ports": ports,
                    "readinessProbe": {
                        "tcpSocket": {"port": STOMP_PORT},
                        "periodSeconds": 2,
                    },
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "256Mi"},
                        "limits": {"memory": "1Gi"},
                    },
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/rabbitmq"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "NodePort",
            "selector": labels(name),
            "ports": [
                {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                for p in ports
            ],
        },
    }
    return [secret, pod, service]


class KubernetesQueues:
    """Start, find and delete the queue brokers of one namespace."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        image: Callable[[], str],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.image = image
        self.clock = clock
        self.sleep = sleep

    def _path(self, resource: str, name: str | None = None) -> str:
        return ns_path(self.namespace, resource, name)

    def _credentials(self, name: str) -> tuple[str, str] | None:
        secret = self.client.get_or_none(self._path("secrets", object_name(name)))
        if secret is None:
            return None
        data: Mapping[str, str] = secret.get("data") or {}

        def decode(key: str) -> str:
            return base64.b64decode(data.get(key, "")).decode()

        return decode("user"), decode("password")

    def start(self, name: str, *, timeout: float = 300.0) -> RabbitMQQueue:
        """Create the queue's Secret, pod and Service unless they exist; a handle once the
        broker takes messages (AMQP and the management API answer through the node ports)."""
        check_name(name)
        creds = self._credentials(name)
        password = creds[1] if creds else secrets.token_urlsafe(24)
        exists = self.client.get_or_none(self._path("pods", object_name(name))) is not None
        image = "" if exists else self.image()
        for body in broker_objects(name, self.namespace, image or "unused", password):
            resource = {"Secret": "secrets", "Pod": "pods", "Service": "services"}[body["kind"]]
            if body["kind"] == "Pod" and not image:
                continue
            try:
                self.client.post(self._path(resource), body)
            except KubeApiError as exc:
                if exc.status != 409:
                    raise QueueError(
                        f"cannot create the {body['kind']} of queue {name!r}: {exc}",
                        hint=f"kubectl -n {self.namespace} describe {resource} {object_name(name)}",
                    ) from exc
        return self._wait(name, timeout)

    def find(self, name: str) -> RabbitMQQueue | None:
        """The handle of a running broker (``None`` when the queue does not exist or its pod has
        no address yet)."""
        creds = self._credentials(name)
        pod = self.client.get_or_none(self._path("pods", object_name(name)))
        service = self.client.get_or_none(self._path("services", object_name(name)))
        if creds is None or pod is None or service is None:
            return None
        host_ip = (pod.get("status") or {}).get("hostIP")
        cluster_ip = service["spec"].get("clusterIP")
        node_ports = {p["name"]: p.get("nodePort") for p in service["spec"].get("ports", [])}
        if not host_ip or not cluster_ip or not all(node_ports.values()):
            return None
        user, password = creds
        quote = urllib.parse.quote
        url = f"amqp://{quote(user, safe='')}:{quote(password, safe='')}"
        return KubernetesQueue(
            f"{url}@{host_ip}:{node_ports['amqp']}/%2F",
            management_url=f"http://{host_ip}:{node_ports['management']}",
            stomp_port=STOMP_PORT,
            job_host=cluster_ip,
            name=name,
            secret=object_name(name),
        )

    def _wait(self, name: str, timeout: float) -> RabbitMQQueue:
        deadline = self.clock() + timeout
        last = "the broker pod has no address yet"
        while True:
            pod = self.client.get_or_none(self._path("pods", object_name(name))) or {}
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in PULL_ERRORS:
                    raise QueueError(
                        f"the broker of queue {name!r} cannot pull its image: "
                        f"{waiting.get('message', waiting['reason'])}",
                        hint="build the broker image (juliarun.queues.image) and push it to a "
                        "registry the cluster pulls from",
                    )
            queue = self.find(name)
            if queue is not None:
                try:
                    queue._api("/api/overview")
                    queue._open()
                    return queue
                except QueueError as exc:
                    last = str(exc)
                    queue.close()
            if self.clock() > deadline:
                raise QueueError(
                    f"the broker of queue {name!r} was not ready after {timeout:g}s: {last}",
                    hint=f"kubectl -n {self.namespace} logs {object_name(name)}",
                )
            self.sleep(1.0)

    def delete(self, name: str, *, force: bool = False, timeout: float = 120.0) -> bool:
        """Delete the queue's pod, Service and Secret (the pod at once when ``force``) and wait
        until the pod is gone; whether there was anything to delete."""
        check_name(name)
        found = False
        body = {"gracePeriodSeconds": 0} if force else None
        for resource in ("pods", "services", "secrets"):
            try:
                self.client.delete(self._path(resource, object_name(name)), body)
                found = True
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
        deadline = self.clock() + timeout
        while self.client.get_or_none(self._path("pods", object_name(name))) is not None:
            if self.clock() > deadline:
                raise QueueError(
                    f"the broker pod of queue {name!r} is still there after {timeout:g}s",
                    hint=f"kubectl -n {self.namespace} describe pod {object_name(name)}",
                )
            self.sleep(0.25)
        return found


class KubernetesQueue(RabbitMQQueue):
    """A broker on Kubernetes: jobs get the Service's ClusterIP and the name of the Secret that
    holds the password (the job's pods read it from there), not the password itself.

    >>> q = KubernetesQueue("amqp://jr:pw@192.0.2.2:30672/%2F", management_url="http://x:1",
    ...                     stomp_port=61613, job_host="10.96.0.9", secret="juliarun-queue-mq")
    >>> sorted(q.env.items())  # doctest: +NORMALIZE_WHITESPACE
    [('JULIARUN_QUEUE_HOST', '10.96.0.9'), ('JULIARUN_QUEUE_PORT', '61613'),
     ('JULIARUN_QUEUE_SECRET', 'juliarun-queue-mq'), ('JULIARUN_QUEUE_VHOST', '/')]
    """

    def __init__(self, amqp_url: str, *, secret: str, **kwargs: Any) -> None:
        super().__init__(amqp_url, **kwargs)
        self.secret = secret

    @property
    def env(self) -> dict[str, str]:
        return {
            "JULIARUN_QUEUE_HOST": self.job_host,
            "JULIARUN_QUEUE_PORT": str(self.stomp_port),
            "JULIARUN_QUEUE_VHOST": self.vhost,
            SECRET_ENV: self.secret,
        }
