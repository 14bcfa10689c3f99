"""The Kubernetes HPA option: the cluster's own HorizontalPodAutoscaler scales a workers job from
the queue's backlog, which juliarun serves as an external metric.

* **A `/scale`-able workers object.** A ``batch/v1`` Job has no ``scale`` subresource, so each
  workers job gets a ``JuliaWorkers`` object (CRD ``juliaworkers.juliarun.io``, created once)
  whose ``spec.replicas``/``status.replicas``/``status.selector`` are its scale. The HPA writes
  ``spec.replicas``; :class:`WorkersSync` carries it to the Job through
  :meth:`~juliarun.backends.kubernetes.backend.KubernetesBackend.scale`, so scale-down drains
  the workers that go exactly as juliarun's own scaler does, and reports the Job's count back
  in ``status.replicas``.
* **An external-metrics API served by juliarun.** :class:`ExternalMetricsServer` answers
  ``external.metrics.k8s.io/v1beta1`` over HTTPS (a certificate it makes for itself, given to
  the ``APIService`` as its ``caBundle``); it takes only clients whose certificate the
  apiserver's front-proxy CA signed (read from ``kube-system/extension-apiserver-authentication``),
  i.e. the aggregator. Metric ``juliarun-queue-backlog`` with label ``queue=<name>`` is that
  queue's ready + unacked messages. The ``APIService`` points at a Service without selector
  whose Endpoints are this machine (the apiserver routes to endpoints:
  ``--enable-aggregator-routing``).
* **The HPA** (``autoscaling/v2``) targets the ``JuliaWorkers`` object with an ``External``
  metric and an ``AverageValue`` target (messages per worker), and a ``behavior`` whose windows
  the caller picks (the HPA's defaults: 0 s up, 300 s down).

>>> hpa = hpa_manifest("workers", "jr", "work", per_worker=5, min_workers=1, max_workers=10)
>>> hpa["spec"]["metrics"][0]["external"]["target"]
{'type': 'AverageValue', 'averageValue': '5'}
>>> workers_crd()["spec"]["versions"][0]["subresources"]["scale"]["labelSelectorPath"]
'.status.selector'
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.backends.kubernetes.manifests import JOB_LABEL, MANAGED_BY
from juliarun.errors import BackendError

GROUP = "juliarun.io"
VERSION = "v1"
KIND = "JuliaWorkers"
PLURAL = "juliaworkers"
METRICS_GROUP = "external.metrics.k8s.io"
METRICS_VERSION = "v1beta1"
BACKLOG = "juliarun-queue-backlog"
APISERVICE = f"{METRICS_VERSION}.{METRICS_GROUP}"
SERVICE = "juliarun-external-metrics"
log = logging.getLogger("juliarun.kubernetes.hpa")


def workers_crd() -> dict[str, Any]:
    """The ``JuliaWorkers`` CRD: a workers job's count, with the ``scale`` subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {MANAGED_BY: "juliarun"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "juliaworkers", "kind": KIND},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 0},
                                        "job": {"type": "string"},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "replicas": {"type": "integer"},
                                        "selector": {"type": "string"},
                                    },
                                },
                            },
                        }
                    },
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                }
            ],
        },
    }


def hpa_manifest(
    name: str,
    namespace: str,
    queue: str,
    *,
    per_worker: float,
    min_workers: int,
    max_workers: int,
    scale_up_window: int = 0,
    scale_down_window: int = 300,
) -> dict[str, Any]:
    """The HPA scaling the ``JuliaWorkers`` object ``name`` to keep ``per_worker`` messages of
    queue ``queue`` per worker."""
    target = f"{per_worker:g}" if float(per_worker).is_integer() else f"{round(per_worker * 1000)}m"
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: "juliarun"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name},
            "minReplicas": min_workers,
            "maxReplicas": max_workers,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": BACKLOG,
                            "selector": {"matchLabels": {"queue": queue}},
                        },
                        "target": {"type": "AverageValue", "averageValue": target},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": scale_up_window},
                "scaleDown": {"stabilizationWindowSeconds": scale_down_window},
            },
        },
    }


def _quantity(value: float) -> str:
    """``value`` as a Kubernetes quantity (milli-units unless whole).

    >>> _quantity(12), _quantity(2.5)
    ('12', '2500m')
    """
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def _certificate(names: list[str], ips: list[str]) -> tuple[bytes, bytes]:
    """A self-signed serving certificate and its key (PEM) for ``names`` and ``ips``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


class ExternalMetricsServer:
    """``external.metrics.k8s.io/v1beta1`` over HTTPS on ``host:port`` (0: a free port):
    metric ``juliarun-queue-backlog`` for the queues in ``backlogs`` (name → reading)."""

    def __init__(
        self,
        backlogs: Mapping[str, Callable[[], float]],
        host: str,
        *,
        service_names: list[str],
        client_ca: str | None,
        port: int = 0,
    ) -> None:
        self.backlogs = dict(backlogs)
        self.host = host
        self.cert, key = _certificate(service_names, [host])
        self._dir = tempfile.TemporaryDirectory(prefix="juliarun-metrics-")
        folder = Path(self._dir.name)
        (folder / "tls.crt").write_bytes(self.cert)
        (folder / "tls.key").write_bytes(key)
        (folder / "tls.key").chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
        if client_ca:
            context.load_verify_locations(cadata=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED  # only the apiserver's front proxy
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("external metrics: " + format, *args)

            def do_GET(self) -> None:
                server.requests += 1
                status, body = server.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="juliarun-external-metrics", daemon=True
        )

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        """The status and JSON body for a GET of ``path``."""
        url = urllib.parse.urlsplit(path)
        base = f"/apis/{METRICS_GROUP}/{METRICS_VERSION}"
        if url.path.rstrip("/") == base:
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{METRICS_GROUP}/{METRICS_VERSION}",
                "resources": [
                    {
                        "name": BACKLOG,
                        "singularName": "",
                        "namespaced": True,
                        "kind": "ExternalMetricValueList",
                        "verbs": ["get"],
                    }
                ],
            }
        parts = url.path[len(base) :].strip("/").split("/")
        if (
            url.path.startswith(base + "/")
            and len(parts) == 3
            and parts[0] == "namespaces"
            and parts[2] == BACKLOG
        ):
            selector = urllib.parse.parse_qs(url.query).get("labelSelector", [""])[0]
            labels = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
            queue = labels.get("queue", "")
            reading = self.backlogs.get(queue)
            if reading is None:
                return 404, _status(404, f"no queue {queue!r} is published")
            try:
                value = float(reading())
            except Exception as exc:  # the HPA keeps the scale on a failed metric
                return 503, _status(503, f"queue {queue!r}: {exc}")
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return 200, {
                "kind": "ExternalMetricValueList",
                "apiVersion": f"{METRICS_GROUP}/{METRICS_VERSION}",
                "metadata": {},
                "items": [
                    {
                        "metricName": BACKLOG,
                        "metricLabels": {"queue": queue},
                        "timestamp": now,
                        "value": _quantity(value),
                    }
                ],
            }
        return 404, _status(404, f"not found: {url.path}")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._dir.cleanup()


def _status(code: int, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "code": code,
    }


class WorkersSync:
    """Carries a ``JuliaWorkers`` object's ``spec.replicas`` (the HPA's) to its Job through
    ``scale`` (which drains on the way down) and its count back into ``status``."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        scale: Callable[[str, int], object],
        count: Callable[[str], int],
        *,
        interval: float = 1.0,
    ) -> None:
        self.client = client
        self.path = ns_path(namespace, PLURAL, name, group=f"{GROUP}/{VERSION}")
        self.name = name
        self.scale = scale
        self.count = count
        self.interval = interval
        self.changes: list[int] = []
        self.times: list[float] = []  # time.time() of each change
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"juliarun-hpa-{name}", daemon=True)

    def step(self) -> int:
        """One round: apply the wanted count if it differs; returns the Job's count."""
        obj = self.client.get(self.path)
        wanted = int((obj.get("spec") or {}).get("replicas") or 0)
        current = self.count(self.name)
        if wanted != current and wanted > 0:
            log.info("changing scale of %s to %d", self.name, wanted)
            self.times.append(time.time())
            self.scale(self.name, wanted)
            self.changes.append(wanted)
            current = self.count(self.name)
        self.client.request(
            "PATCH",
            self.path + "/status",
            body={"status": {"replicas": current, "selector": f"{JOB_LABEL}={self.name}"}},
            content_type="application/merge-patch+json",
        )
        return current

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # keep syncing: the next round retries
                log.warning("hpa sync of %s: %s", self.name, exc)
            self._stop.wait(self.interval)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)


class HPA:
    """Let the cluster's HPA scale workers job ``name`` from queue ``queue``'s backlog: creates
    the CRD (once), the ``JuliaWorkers`` object, the metrics Service, Endpoints and
    ``APIService``, and the HPA; serves the metric and syncs the count until :meth:`stop`, which
    removes all of them but the CRD."""

    def __init__(
        self,
        backend: Any,
        name: str,
        queue: str,
        backlog: Callable[[], float],
        *,
        per_worker: float,
        min_workers: int = 1,
        max_workers: int = 10,
        scale_up_window: int = 0,
        scale_down_window: int = 300,
        host: str,
    ) -> None:
        self.backend = backend
        self.client: KubeClient = backend.client
        self.namespace: str = backend.namespace
        self.name = name
        self.queue = queue
        self.hpa = hpa_manifest(
            name,
            self.namespace,
            queue,
            per_worker=per_worker,
            min_workers=min_workers,
            max_workers=max_workers,
            scale_up_window=scale_up_window,
            scale_down_window=scale_down_window,
        )
        self.host = host
        self.backlog = backlog
        self.server: ExternalMetricsServer | None = None
        self.sync: WorkersSync | None = None

    def _create(self, path: str, body: Mapping[str, Any]) -> None:
        try:
            self.client.post(path, body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            self.client.merge_patch(f"{path}/{body['metadata']['name']}", body)

    def _front_proxy_ca(self) -> str | None:
        cm = self.client.get_or_none(
            "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication"
        )
        return ((cm or {}).get("data") or {}).get("requestheader-client-ca-file")

    def start(self) -> HPA:
        ns = self.namespace
        self._create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", workers_crd())
        self._wait_crd()
        count = self.backend.status(self.name).desired_workers
        labels = {MANAGED_BY: "juliarun", JOB_LABEL: self.name}
        workers = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": ns, "labels": labels},
            "spec": {"replicas": count, "job": self.name},
        }
        self._create(ns_path(ns, PLURAL, group=f"{GROUP}/{VERSION}"), workers)
        self.server = ExternalMetricsServer(
            {self.queue: self.backlog},
            self.host,
            service_names=[f"{SERVICE}.{ns}.svc", SERVICE],
            client_ca=self._front_proxy_ca(),
        )
        self.server.start()
        meta = {"name": SERVICE, "namespace": ns, "labels": {MANAGED_BY: "juliarun"}}
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": self.server.port}]},
        }
        endpoints = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": meta,
            "subsets": [
                {
                    "addresses": [{"ip": self.host}],
                    "ports": [{"name": "https", "port": self.server.port}],
                }
            ],
        }
        self._create(ns_path(ns, "services"), service)
        self._create(ns_path(ns, "endpoints"), endpoints)
        apiservice = {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE, "labels": {MANAGED_BY: "juliarun"}},
            "spec": {
                "group": METRICS_GROUP,
                "version": METRICS_VERSION,
                "service": {"name": SERVICE, "namespace": ns, "port": 443},
                "caBundle": base64.b64encode(self.server.cert).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        }
        try:
            self.client.post("/apis/apiregistration.k8s.io/v1/apiservices", apiservice)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            if not self._ours():  # one adapter per API group: never take another's over
                self.stop()
                raise BackendError(
                    f"the cluster already has an {APISERVICE} APIService, served by another "
                    "adapter",
                    hint=f"kubectl get apiservice {APISERVICE} -o yaml; remove it or use that "
                    "adapter's metrics",
                ) from exc
        self.sync = WorkersSync(
            self.client,
            ns,
            self.name,
            self.backend.scale,
            lambda job: int(self.backend.status(job).desired_workers),
        )
        self.sync.start()
        self._create(ns_path(ns, "horizontalpodautoscalers", group="autoscaling/v2"), self.hpa)
        return self

    def _wait_crd(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}"
        while time.monotonic() < deadline:
            crd = self.client.get(path)
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return
            time.sleep(0.2)

    def _ours(self) -> bool:
        current = self.client.get_or_none(
            f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}"
        )
        service = ((current or {}).get("spec") or {}).get("service") or {}
        return (service.get("namespace"), service.get("name")) == (self.namespace, SERVICE)

    def stop(self) -> None:
        """Remove the HPA, the metrics API (when it is this one's) and the workers object;
        stop serving and syncing."""
        ns = self.namespace
        apiservice = f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}"
        for path in (
            ns_path(ns, "horizontalpodautoscalers", self.name, group="autoscaling/v2"),
            *([apiservice] if self._ours() else []),
            ns_path(ns, "services", SERVICE),
            ns_path(ns, "endpoints", SERVICE),
            ns_path(ns, PLURAL, self.name, group=f"{GROUP}/{VERSION}"),
        ):
            try:
                self.client.delete(path)
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
        if self.sync is not None:
            self.sync.stop()
        if self.server is not None:
            self.server.stop()
