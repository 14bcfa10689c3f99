"""The Kubernetes cluster block (needs the ``kubernetes`` extra): jobs as Kubernetes Jobs.

prefect-kubernetes' ``KubernetesClusterConfig`` is not reused: it keeps the whole kubeconfig —
client keys and tokens included — in a plain ``Dict`` field (shown in the UI, stored unencrypted),
and its ``configure_client`` loads it into the kubernetes package's process-wide default
configuration. This block keeps the kubeconfig as a ``SecretDict`` (masked, stored encrypted),
unwrapped only to build an ``ApiClient`` with its own ``Configuration``.

>>> block = KubernetesCluster(kubeconfig={"apiVersion": "v1", "users": []}, namespace="jr")
>>> block.kubeconfig
SecretDict('**********')
>>> sorted(block.node_types)
['gpu', 'highcpu', 'highmem', 'spot']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import yaml
from prefect.types import SecretDict
from pydantic import Field, model_validator

from juliarun.backends.base import Backend
from juliarun.backends.kubernetes import (
    KubernetesBackend,
    NodeTypeRule,
    api_client,
    bearer_api_client,
    default_node_types,
)
from juliarun.blocks.cluster import Cluster
from juliarun.blocks.oidc import OIDCCredentials
from juliarun.errors import ConfigError
from juliarun.settings import Settings


class KubernetesCluster(Cluster):
    """Run Julia jobs as Kubernetes Jobs in one namespace of a cluster."""

    _block_type_name = "juliarun Kubernetes Cluster"
    _block_type_slug = "juliarun-kubernetes-cluster"
    _description = (
        "Run Julia jobs as Kubernetes Jobs: node types, diagnosis of stuck and failed jobs, "
        "pod logs and the cluster view."
    )
    kind: ClassVar[str] = "kubernetes"

    kubeconfig: SecretDict | None = Field(
        None, description="The kubeconfig's contents (kept secret: it holds credentials)."
    )
    kubeconfig_path: str | None = Field(
        None,
        description="A kubeconfig file on the machine running the flow, used when kubeconfig "
        "is not set (its credentials stay in that file).",
    )
    context: str | None = Field(None, description="Context to use (default: current-context).")
    oidc: OIDCCredentials | None = Field(
        None,
        description="Act as the user signed in at this issuer (`juliarun login`): requests carry "
        "their ID token, refreshed when about to expire, and the kubeconfig gives only the "
        "server and its CA.",
    )
    namespace: str = Field(
        "juliarun",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Namespace jobs run in (created if missing).",
    )
    node_types: dict[str, NodeTypeRule] = Field(
        default_factory=default_node_types,
        description="gpu / spot / highmem / highcpu → node labels and tolerated taints.",
    )
    image: str | None = Field(
        None, description="Image for jobs that name none (default: JULIARUN_JULIA_IMAGE)."
    )
    git_image: str | None = Field(
        None,
        description="Image (git and sh) that clones network git storage in each pod's init "
        "container (default: JULIARUN_GIT_IMAGE).",
    )
    placement: Literal["kube-scheduler", "juliarun"] = Field(
        "kube-scheduler",
        description="Who places jobs: the kube-scheduler pod by pod, or juliarun's placement "
        "controller, which starts each job whole (its pods wait gated until all fit) by the "
        "job's placement policy.",
    )
    qps: float = Field(
        50, ge=1, le=10000, description="Client-side API requests a second, once a burst is spent."
    )
    burst: int = Field(
        300, ge=1, le=10000, description="API requests sent at once before the qps limit applies."
    )
    kill_grace: float = Field(10, ge=0, le=600, description="Seconds from SIGTERM to SIGKILL.")

    @model_validator(mode="after")
    def _one_kubeconfig(self) -> Self:
        if (self.kubeconfig is None) == (self.kubeconfig_path is None):
            raise ValueError("give exactly one of kubeconfig (its contents) or kubeconfig_path")
        return self

    @classmethod
    def from_kubeconfig(cls, path: str | Path, **fields: Any) -> KubernetesCluster:
        """A block holding the kubeconfig file at ``path`` (with embedded credentials)."""
        file = Path(path).expanduser()
        try:
            data = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read kubeconfig {file}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{file} is not a kubeconfig")
        return cls(kubeconfig=data, **fields)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The kubeconfig file ``JULIARUN_KUBECONFIG`` (else ``KUBECONFIG``, else
        ``~/.kube/config``), namespace ``JULIARUN_KUBE_NAMESPACE``, images
        ``JULIARUN_JULIA_IMAGE`` / ``JULIARUN_GIT_IMAGE``, rate limit ``JULIARUN_KUBE_QPS`` /
        ``_BURST``; with ``JULIARUN_OIDC_KUBERNETES=1`` it acts as the user signed in at
        ``JULIARUN_OIDC_ISSUER`` (client ``JULIARUN_OIDC_CLIENT_ID``)."""
        from juliarun.auth.settings import load_oidc_settings

        oidc = load_oidc_settings()
        creds = None
        if oidc.kubernetes:
            client = oidc.client()
            creds = OIDCCredentials(
                issuer=client.issuer,
                client_id=client.client_id,
                client_secret=client.client_secret,
                scopes=client.scopes,
                ca_file=client.ca_file,
            )
        return cls(
            oidc=creds,
            kubeconfig_path=str(settings.kubeconfig or Path.home() / ".kube" / "config"),
            home=str(settings.home),
            log_store_kind=settings.log_store,
            metric_store_kind=settings.metric_store,
            context=settings.kube_context,
            namespace=settings.kube_namespace,
            image=settings.julia_image,
            git_image=settings.git_image,
            placement=settings.kube_placement,
            qps=settings.kube_qps,
            burst=settings.kube_burst,
            kill_grace=settings.kill_grace,
        )

    def make_api_client(self, home: Path | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` of its own for this cluster's kubeconfig (acting as
        the signed-in user when ``oidc`` is set; their tokens are cached under ``home``)."""
        if self.oidc is not None:
            source = self.oidc.token_source(home or self.settings().home)
            if self.kubeconfig is not None:
                return bearer_api_client(
                    source.id_token,
                    config_dict=self.kubeconfig.get_secret_value(),
                    context=self.context,
                )
            return bearer_api_client(
                source.id_token, kubeconfig=self.kubeconfig_path, context=self.context
            )
        if self.kubeconfig is not None:
            return api_client(config_dict=self.kubeconfig.get_secret_value(), context=self.context)
        return api_client(kubeconfig=self.kubeconfig_path, context=self.context)

    def build_backend(self, settings: Settings, cluster: str) -> Backend:
        return KubernetesBackend(
            self.make_api_client(settings.home),
            self.namespace,
            self.node_types,
            cluster=cluster,
            image=self.image or settings.julia_image,
            git_image=self.git_image or settings.git_image,
            gate_pods=self.placement == "juliarun",
            home=settings.home,
            qps=self.qps,
            burst=self.burst,
            kill_grace=self.kill_grace,
            poll_interval=settings.poll_interval,
            broker_image=settings.broker_image(),
            unauthorized_hint=self.unauthorized_hint(),
        )

    def unauthorized_hint(self) -> str | None:
        """What to do when the apiserver answers 401: for a signed-in user, sign in again (the
        kubeconfig's own credentials are not what was refused).

        >>> creds = OIDCCredentials(issuer="https://id.example.org", client_id="juliarun-cli")
        >>> cluster = KubernetesCluster(oidc=creds, kubeconfig_path="~/.kube/config")
        >>> print(cluster.unauthorized_hint())
        the apiserver refused your sign-in at https://id.example.org (expired, revoked or not
        trusted by this cluster): run `juliarun login --issuer https://id.example.org` again
        """
        if self.oidc is None:
            return None
        issuer = self.oidc.issuer
        return (
            f"the apiserver refused your sign-in at {issuer} (expired, revoked or not trusted "
            f"by this cluster): run `juliarun login --issuer {issuer}` again"
        )
