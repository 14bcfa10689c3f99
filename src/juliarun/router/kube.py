"""The router's own connection to the apiserver: from a kubeconfig (client certificate or bearer
token) or in-cluster (the pod's service-account token), as ``httpx`` clients."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from juliarun.errors import ConfigError

IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubeConn:
    """Where the apiserver is and how to authenticate to it."""

    server: str
    ssl_context: ssl.SSLContext
    token: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server, verify=self.ssl_context, headers=self.headers(), **kwargs
        )

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.server, verify=self.ssl_context, headers=self.headers(), **kwargs
        )


def _data(entry: dict[str, Any], key: str) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return Path(entry[key]).read_bytes()
    return None


def from_kubeconfig(path: str | Path) -> KubeConn:
    """The current context of kubeconfig ``path``."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    current = doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
    context = contexts.get(current) if current else next(iter(contexts.values()), None)
    if context is None:
        raise ConfigError(f"kubeconfig {path} has no context")
    cluster = {c["name"]: c["cluster"] for c in doc["clusters"]}[context["cluster"]]
    user = {u["name"]: u["user"] for u in doc.get("users") or []}.get(context.get("user"), {})
    ctx = ssl.create_default_context()
    ca = _data(cluster, "certificate-authority")
    if ca:
        ctx.load_verify_locations(cadata=ca.decode())
    cert, key = _data(user, "client-certificate"), _data(user, "client-key")
    if cert and key:
        # ssl loads a certificate chain from files only: a private directory, removed at once
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o700)
            cert_file, key_file = Path(tmp, "c.pem"), Path(tmp, "k.pem")
            cert_file.write_bytes(cert)
            key_file.write_bytes(key)
            ctx.load_cert_chain(cert_file, key_file)
    return KubeConn(cluster["server"].rstrip("/"), ctx, user.get("token"))


def in_cluster(server: str | None = None) -> KubeConn:
    """The pod's service account (at ``server``, default the ``kubernetes`` Service)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    if not (host or server) or not (IN_CLUSTER / "token").is_file():
        raise ConfigError(
            "not running in a pod and no kubeconfig given",
            hint="set the router's kubeconfig in its config file",
        )
    ctx = ssl.create_default_context(cafile=str(IN_CLUSTER / "ca.crt"))
    token = (IN_CLUSTER / "token").read_text().strip()
    return KubeConn((server or f"https://{host}:{port}").rstrip("/"), ctx, token)


def connect(kubeconfig: str | None, *, server: str | None = None) -> KubeConn:
    """From ``kubeconfig``, else in-cluster (``server`` overrides the in-cluster address: a
    host-network pod on a cluster without kube-proxy reaches the apiserver directly)."""
    return from_kubeconfig(kubeconfig) if kubeconfig else in_cluster(server)
