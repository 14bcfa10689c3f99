"""The Kubernetes pod autoscaler driving a juliarun job's workers (the talk's "or use the
Kubernetes pod autoscaler, pointing it to your metrics").

Three parts, all real Kubernetes machinery:

- **An external-metrics API served by juliarun.** :class:`MetricsAPIServer` is an HTTPS server
  implementing ``external.metrics.k8s.io/v1beta1``; an ``APIService`` registers it with the
  apiserver's aggregation layer, through a selector-less ``Service`` whose ``EndpointSlice``
  names this host's node address. It answers only the apiserver's front proxy (a client
  certificate from the CA and with a name that ``kube-system/extension-apiserver-authentication``
  lists); the apiserver has already authorized the caller (the HPA controller) for the metric.
- **A scalable workers object.** A Kubernetes Job has no ``/scale`` subresource, so each
  autoscaled job gets a ``WorkerPool`` (``workerpools.juliarun.io``, a custom resource whose
  ``/scale`` maps to ``.spec.replicas``) that the real HPA controller scales.
- **The sync.** :class:`PodAutoscalerLoop` follows the pool's ``spec.replicas`` with the
  backend's own ``scale`` (so scale-down drains workers exactly as :class:`~juliarun.scaler.
  JobScaler` does) and reports the job's worker count in ``status.replicas``.

One process serves a cluster's external metrics at a time (the ``APIService`` points at it).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import math
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.errors import BackendError, ConfigError, MetricError

log = logging.getLogger("juliarun.kubernetes")

GROUP = "juliarun.io"
CRD_NAME = f"workerpools.{GROUP}"
METRICS_GROUP = "external.metrics.k8s.io"
METRICS_VERSION = "v1beta1"
APISERVICE_NAME = f"{METRICS_VERSION}.{METRICS_GROUP}"
SERVICE_NAME = "juliarun-metrics"
MANAGED_BY = "juliarun"

_PATH = re.compile(
    rf"^/apis/{re.escape(METRICS_GROUP)}/{METRICS_VERSION}/namespaces/([a-z0-9-]+)/([a-z0-9.-]+)$"
)


def quantity(value: float) -> str:
    """``value`` as a Kubernetes quantity, exact to the thousandth.

    >>> quantity(12), quantity(0.5), quantity(2.0), quantity(-1.25)
    ('12', '500m', '2', '-1250m')
    """
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def workerpool_crd() -> dict[str, Any]:
    """The ``WorkerPool`` custom resource definition: ``/scale`` on ``.spec.replicas``."""
    replicas = {"type": "integer", "minimum": 0, "maximum": 1000}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "WorkerPool",
                "plural": "workerpools",
                "singular": "workerpool",
                "listKind": "WorkerPoolList",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["job", "replicas"],
                                    "properties": {"job": {"type": "string"}, "replicas": replicas},
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
    job: str,
    metric: str,
    *,
    target: float,
    minimum: int,
    maximum: int,
    scale_down_window: int,
) -> dict[str, Any]:
    """An ``autoscaling/v2`` HorizontalPodAutoscaler of ``job``'s WorkerPool on the external
    metric ``metric``, aiming at ``target`` per worker (``AverageValue``)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": job, "labels": {mf.JOB_LABEL: job}},
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/v1", "kind": "WorkerPool", "name": job},
            "minReplicas": minimum,
            "maxReplicas": maximum,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": metric},
                        "target": {"type": "AverageValue", "averageValue": quantity(target)},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": scale_down_window}},
        },
    }


# -- the external-metrics API ------------------------------------------------------------------


def _serving_cert(dns_name: str, workdir: Path) -> tuple[Path, Path, bytes]:
    """A CA and a serving certificate for ``dns_name`` (key files under ``workdir``); returns
    the certificate and key paths and the CA's PEM (the APIService's ``caBundle``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "juliarun-metrics-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "serving.crt", workdir / "serving.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, ca.public_bytes(serialization.Encoding.PEM)


class MetricsAPIServer:
    """``external.metrics.k8s.io/v1beta1`` over HTTPS for the metrics :meth:`register`\\ ed.

    ``client_ca`` (PEM) and ``allowed_names`` say who may ask: the apiserver's front proxy, as
    ``kube-system/extension-apiserver-authentication`` describes it. A metric that raises is
    answered with 503 and its reason (the HPA controller then holds the scale and reports
    the failure on the HPA), never with a made-up value."""

    def __init__(
        self,
        *,
        host: str,
        dns_name: str,
        client_ca: str,
        allowed_names: list[str],
        port: int = 0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._metrics: dict[tuple[str, str], Callable[[], float]] = {}
        self._lock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="juliarun-metrics-")
        cert, key, self.ca_bundle = _serving_cert(dns_name, Path(self._tmp.name))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(cert, key)
        tls.verify_mode = ssl.CERT_REQUIRED
        tls.load_verify_locations(cadata=client_ca)
        allowed = set(allowed_names)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics API: " + format, *args)

            def _send(self, code: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                peer = (
                    self.connection.getpeercert()
                    if hasattr(self.connection, "getpeercert")
                    else None
                )
                names = {
                    v
                    for rdn in (peer or {}).get("subject", ())
                    for k, v in rdn
                    if k == "commonName"
                }
                if allowed and not names & allowed:
                    self._send(403, _status(403, "Forbidden", "not the apiserver's front proxy"))
                    return
                code, body = server.answer(self.path.split("?", 1)[0], clock())
                self._send(code, body)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.host, self.port = host, int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    def register(self, namespace: str, name: str, read: Callable[[], float]) -> None:
        with self._lock:
            self._metrics[(namespace, name)] = read

    def unregister(self, namespace: str, name: str) -> None:
        with self._lock:
            self._metrics.pop((namespace, name), None)

    def answer(self, path: str, now: dt.datetime) -> tuple[int, dict[str, Any]]:
        """The status and body for a GET of ``path`` (no network: what the handler sends)."""
        group_version = f"{METRICS_GROUP}/{METRICS_VERSION}"
        if path.rstrip("/") == f"/apis/{group_version}":
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": [],
            }
        match = _PATH.match(path)
        if not match:
            return 404, _status(404, "NotFound", f"no such path {path[:200]!r}")
        namespace, name = match.groups()
        with self._lock:
            read = self._metrics.get((namespace, name))
        if read is None:
            return 404, _status(404, "NotFound", f"no metric {name!r} in namespace {namespace!r}")
        try:
            value = float(read())
            if not math.isfinite(value):
                raise MetricError(name, f"read {value}, not a number")
        except Exception as exc:  # the metric's own failure, reported, never a value
            log.warning("external metric %s/%s failed: %s", namespace, name, exc)
            return 503, _status(503, "ServiceUnavailable", f"metric {name!r} failed: {exc}")
        item: dict[str, Any] = {
            "metricName": name,
            "metricLabels": {},
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "value": quantity(value),
        }
        return 200, {
            "kind": "ExternalMetricValueList",
            "apiVersion": group_version,
            "metadata": {},
            "items": [item],
        }

    def start(self) -> MetricsAPIServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, name="juliarun-metrics-api", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        self._tmp.cleanup()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


# -- registration with the cluster ---------------------------------------------------------------


def local_node_address(client: KubeClient) -> str:
    """The InternalIP of the node this process runs on (an address of the cluster's nodes that
    this host can bind): where the apiserver can reach a server started here."""
    nodes = client.get("/api/v1/nodes").get("items", [])
    for node in nodes:
        for address in (node.get("status") or {}).get("addresses") or []:
            ip = str(address.get("address", ""))
            if address.get("type") != "InternalIP" or not ip:
                continue
            try:
                if ipaddress.ip_address(ip).is_loopback:
                    continue
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.bind((ip, 0))
                return ip
            except (OSError, ValueError):
                continue
    raise ConfigError(
        "no node of the cluster has an address on this host, so the apiserver cannot reach an "
        "external-metrics server started here",
        hint="run the pod autoscaler on one of the cluster's nodes",
    )


def front_proxy(client: KubeClient) -> tuple[str, list[str]]:
    """The CA (PEM) and names of the apiserver's front-proxy client certificate."""
    cm = client.get_or_none(
        ns_path("kube-system", "configmaps", "extension-apiserver-authentication")
    )
    data = (cm or {}).get("data") or {}
    ca = data.get("requestheader-client-ca-file")
    if not ca:
        raise ConfigError(
            "the apiserver has no aggregation layer (no requestheader-client-ca-file in "
            "kube-system/extension-apiserver-authentication)",
            hint="start kube-apiserver with --requestheader-client-ca-file, "
            "--proxy-client-cert-file and --proxy-client-key-file",
        )
    names = json.loads(data.get("requestheader-allowed-names") or "[]")
    return ca, [str(n) for n in names]


def _apply(client: KubeClient, collection: str, name: str, body: Mapping[str, Any]) -> Any:
    """Create ``body`` at ``collection``, or merge it into the object ``name`` that exists."""
    try:
        return client.post(collection, body)
    except KubeApiError as exc:
        if exc.status != 409:
            raise
    return client.merge_patch(f"{collection}/{name}", body)


def ensure_crd(
    client: KubeClient, *, clock: Callable[[], float], sleep: Callable[[float], None]
) -> None:
    """Install the WorkerPool definition (once) and wait until it is served."""
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    _apply(client, path, CRD_NAME, workerpool_crd())
    deadline = clock() + 30
    while clock() < deadline:
        crd = client.get(f"{path}/{CRD_NAME}")
        conditions = (crd.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return
        sleep(0.2)
    raise BackendError(f"the {CRD_NAME} definition was not established within 30 s")


def register_metrics_api(
    client: KubeClient, namespace: str, server: MetricsAPIServer, address: str
) -> None:
    """Point the cluster's ``external.metrics.k8s.io`` at ``server`` (reachable at
    ``address``): a selector-less Service, its EndpointSlice and the APIService. Another
    adapter's APIService (KEDA's, prometheus-adapter's) is never taken over."""
    existing = client.get_or_none(f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE_NAME}")
    owner = ((existing or {}).get("metadata", {}).get("labels") or {}).get(
        "app.kubernetes.io/managed-by"
    )
    if existing is not None and owner != MANAGED_BY:
        service = (existing.get("spec") or {}).get("service") or {}
        where = f"{service.get('namespace', '?')}/{service.get('name', '?')}"
        raise ConfigError(
            f"the cluster's external metrics API ({APISERVICE_NAME}) is served by another "
            f"adapter ({where}); juliarun will not take it over",
            hint="use JobScaler, or serve juliarun's metric through that adapter",
        )
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "labels": labels},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": server.port}]},
    }
    _apply(client, ns_path(namespace, "services"), SERVICE_NAME, service)
    family = "IPv6" if ":" in address else "IPv4"
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": SERVICE_NAME,
            "labels": {
                **labels,
                "kubernetes.io/service-name": SERVICE_NAME,
                "endpointslice.kubernetes.io/managed-by": "juliarun.io",
            },
        },
        "addressType": family,
        "ports": [{"name": "https", "port": server.port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }
    slices = ns_path(namespace, "endpointslices", group="discovery.k8s.io/v1")
    try:
        client.post(slices, endpoints)
    except KubeApiError as exc:
        if exc.status != 409:
            raise
        client.request(
            "PUT",
            f"{slices}/{SERVICE_NAME}",
            body=_with_version(client, f"{slices}/{SERVICE_NAME}", endpoints),
        )
    apiservice = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": APISERVICE_NAME, "labels": labels},
        "spec": {
            "service": {"name": SERVICE_NAME, "namespace": namespace, "port": 443},
            "group": METRICS_GROUP,
            "version": METRICS_VERSION,
            "caBundle": base64.b64encode(server.ca_bundle).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    _apply(client, "/apis/apiregistration.k8s.io/v1/apiservices", APISERVICE_NAME, apiservice)


def _with_version(client: KubeClient, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    current = client.get(path)
    meta = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
    return {**body, "metadata": meta}


def wait_available(
    client: KubeClient,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    timeout: float = 60,
) -> None:
    """Wait until the aggregation layer reports the external-metrics APIService Available."""
    path = f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE_NAME}"
    deadline = clock() + timeout
    message = ""
    while clock() < deadline:
        conditions = (client.get(path).get("status") or {}).get("conditions") or []
        for c in conditions:
            if c.get("type") == "Available":
                if c.get("status") == "True":
                    return
                message = str(c.get("message") or c.get("reason") or "")
        sleep(0.5)
    raise BackendError(f"the external-metrics APIService did not become available: {message}")


# -- the loop ------------------------------------------------------------------------------------


class PodAutoscalerLoop:
    """Keeps a job's workers at its WorkerPool's ``spec.replicas`` (set by the HPA controller)
    through ``scale`` (the backend's, which drains workers it removes), and the pool's
    ``status.replicas`` at the job's worker count."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        job: str,
        *,
        workers: Callable[[], int],
        scale: Callable[[int], object],
        on_change: Callable[[int, int], None] | None = None,
        interval: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.path = ns_path(namespace, "workerpools", job, group=f"{GROUP}/v1")
        self.job = job
        self.workers = workers
        self.scale = scale
        self.on_change = on_change
        self.interval = interval
        self.sleep = sleep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changes: list[tuple[int, int]] = []

    def step(self) -> tuple[int, int]:
        """One sync: returns (workers before, replicas wanted)."""
        pool = self.client.get(self.path)
        wanted = int((pool.get("spec") or {}).get("replicas", 0))
        current = self.workers()
        if wanted != current:
            log.info("changing scale of %s to %d (Kubernetes pod autoscaler)", self.job, wanted)
            self.scale(wanted)
            self.changes.append((current, wanted))
            if self.on_change is not None:
                self.on_change(current, wanted)
            current = wanted
        status = (pool.get("status") or {}).get("replicas")
        if status != current:
            self.client.merge_patch(f"{self.path}/status", {"status": {"replicas": current}})
        return current, wanted

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except (BackendError, KubeApiError) as exc:
                log.warning("pod autoscaler sync of %s failed (retrying): %s", self.job, exc)
            self._stop.wait(self.interval) if self.sleep is time.sleep else self.sleep(
                self.interval
            )

    def start(self) -> PodAutoscalerLoop:
        self._thread = threading.Thread(
            target=self.run, name=f"juliarun-hpa-{self.job}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


class MetricsHost:
    """The cluster's external-metrics server of one backend: started on first use, registered
    with the apiserver, unregistered (APIService, Service, EndpointSlice deleted) when its last
    metric goes, since an APIService nobody answers breaks API discovery cluster-wide (and
    with it namespace deletion)."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.clock = clock
        self.sleep = sleep
        self._server: MetricsAPIServer | None = None
        self._names: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def register(self, namespace: str, name: str, read: Callable[[], float]) -> None:
        with self._lock:
            if self._server is None:
                address = local_node_address(self.client)
                ca, names = front_proxy(self.client)
                server = MetricsAPIServer(
                    host=address,
                    dns_name=f"{SERVICE_NAME}.{self.namespace}.svc",
                    client_ca=ca,
                    allowed_names=names,
                ).start()
                try:
                    register_metrics_api(self.client, self.namespace, server, address)
                    wait_available(self.client, clock=self.clock, sleep=self.sleep)
                except BaseException:
                    server.stop()
                    raise
                self._server = server
            self._server.register(namespace, name, read)
            self._names.add((namespace, name))
        self.wait_served(namespace, name)

    def wait_served(self, namespace: str, name: str, timeout: float = 60) -> None:
        """Wait until the apiserver routes a read of metric ``name`` to this server (the
        aggregation layer may take a while to route a just-registered APIService, while its
        discovery already answers)."""
        path = f"/apis/{METRICS_GROUP}/{METRICS_VERSION}/namespaces/{namespace}/{name}"
        deadline = self.clock() + timeout
        last = ""
        while True:
            try:
                body = self.client.get(path)
                if body.get("kind") == "ExternalMetricValueList":
                    return
                last = f"unexpected answer {str(body)[:200]}"
            except KubeApiError as exc:
                if exc.status == 503 and f"metric {name!r} failed" in str(exc):  # its own error
                    return
                last = str(exc)
            if self.clock() > deadline:
                raise BackendError(
                    f"the apiserver does not route external metric {namespace}/{name} to "
                    f"juliarun's metrics server: {last}",
                    hint="check the APIService v1beta1.external.metrics.k8s.io and the "
                    "apiserver's aggregation flags",
                )
            self.sleep(0.5)

    def unregister(self, namespace: str, name: str) -> None:
        with self._lock:
            self._names.discard((namespace, name))
            if self._server is None:
                return
            self._server.unregister(namespace, name)
            if not self._names:
                self._close()

    def close(self) -> None:
        with self._lock:
            self._names.clear()
            if self._server is not None:
                self._close()

    def _close(self) -> None:
        apiservice = f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE_NAME}"
        current = self.client.get_or_none(apiservice)
        spec = ((current or {}).get("spec") or {}).get("service") or {}
        ours = spec.get("namespace") == self.namespace and spec.get("name") == SERVICE_NAME
        paths = [
            *([apiservice] if ours else []),  # another process may have taken it over since
            ns_path(self.namespace, "services", SERVICE_NAME),
            ns_path(self.namespace, "endpointslices", SERVICE_NAME, group="discovery.k8s.io/v1"),
        ]
        for path in paths:
            try:
                self.client.delete(path)
            except KubeApiError as exc:
                if exc.status != 404:
                    log.warning("could not delete %s: %s", path, exc)
        assert self._server is not None
        self._server.stop()
        self._server = None


class PodAutoscalerAttachment:
    """One job scaled by the Kubernetes HPA: its WorkerPool, its HPA, its metric and the sync
    loop; :meth:`stop` removes all four (the job and its workers stay)."""

    def __init__(
        self,
        client: KubeClient,
        host: MetricsHost,
        *,
        namespace: str,
        job: str,
        loop: PodAutoscalerLoop,
        metric: str,
    ) -> None:
        self.client = client
        self.host = host
        self.namespace = namespace
        self.job = job
        self.loop = loop
        self.metric = metric

    def hpa(self) -> dict[str, Any]:
        """The HPA object as the cluster has it (its status says what the controller saw)."""
        path = ns_path(self.namespace, "horizontalpodautoscalers", self.job, group="autoscaling/v2")
        return dict(self.client.get(path))

    def stop(self) -> None:
        self.loop.stop()
        for path in (
            ns_path(self.namespace, "horizontalpodautoscalers", self.job, group="autoscaling/v2"),
            ns_path(self.namespace, "workerpools", self.job, group=f"{GROUP}/v1"),
        ):
            try:
                self.client.delete(path)
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
        self.host.unregister(self.namespace, self.metric)


def attach_pod_autoscaler(
    client: KubeClient,
    host: MetricsHost,
    namespace: str,
    job: str,
    *,
    read: Callable[[], float],
    workers: Callable[[], int],
    scale: Callable[[int], object],
    target: float,
    minimum: int,
    maximum: int,
    scale_down_window: int,
    interval: float,
    on_change: Callable[[int, int], None] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> PodAutoscalerAttachment:
    """Make the real HPA controller scale ``job``'s workers from ``read``."""
    ensure_crd(client, clock=clock, sleep=sleep)
    current = workers()
    pools = ns_path(namespace, "workerpools", group=f"{GROUP}/v1")
    pool = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "WorkerPool",
        "metadata": {"name": job, "labels": {mf.JOB_LABEL: job}},
        "spec": {"job": job, "replicas": current},
    }
    _apply(client, pools, job, pool)
    client.merge_patch(
        f"{pools}/{job}/status",
        {"status": {"replicas": current, "selector": f"{mf.JOB_LABEL}={job}"}},
    )
    metric = f"{job}-metric"
    host.register(namespace, metric, read)
    try:
        hpas = ns_path(namespace, "horizontalpodautoscalers", group="autoscaling/v2")
        body = hpa_manifest(
            job,
            metric,
            target=target,
            minimum=minimum,
            maximum=maximum,
            scale_down_window=scale_down_window,
        )
        _apply(client, hpas, job, body)
    except BaseException:
        host.unregister(namespace, metric)
        raise
    loop = PodAutoscalerLoop(
        client, namespace, job, workers=workers, scale=scale, on_change=on_change, interval=interval
    ).start()
    return PodAutoscalerAttachment(
        client, host, namespace=namespace, job=job, loop=loop, metric=metric
    )
