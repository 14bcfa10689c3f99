"""The Kubernetes backend: jobs as ``batch/v1`` Jobs, status with diagnosis, pod logs, and the
cluster view. Modules: ``client`` (JSON requests, retries, rate limit), ``manifests`` (pure: spec →
Job), ``diagnosis`` (pure: Job/pods/events/nodes → status), ``watch`` (pure resume logic + driver),
``routes`` (which namespace a job lives in; tenants' jobs), ``volumes`` (storage: PVCs, git
sources, host paths, bundles), ``evidence`` (what a status is diagnosed from), ``podlogs`` (pod
output: read, follow), ``clusterview`` (health, pods waiting, node percentages), ``collector``
(shipping output into the stores), ``tenants``, ``prewarm``, and ``backend``
(:class:`KubernetesBackend`: the job lifecycle and the one face of the parts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from juliarun.backends.kubernetes.backend import KubernetesBackend, not_configured
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient
from juliarun.backends.kubernetes.manifests import NodeTypeRule, Toleration, default_node_types
from juliarun.errors import ConfigError

__all__ = [
    "KubeApiError",
    "KubeClient",
    "KubernetesBackend",
    "NodeTypeRule",
    "Toleration",
    "api_client",
    "bearer_api_client",
    "default_node_types",
]


def api_client(
    *,
    kubeconfig: Path | str | None = None,
    config_dict: Mapping[str, Any] | None = None,
    context: str | None = None,
) -> Any:
    """A ``kubernetes.client.ApiClient`` with its own ``Configuration`` built from a kubeconfig
    file or its parsed contents; the kubernetes package's process-wide default configuration is
    never read or changed."""
    from kubernetes import config
    from kubernetes.client import Configuration

    try:
        if config_dict is not None:
            return config.new_client_from_config_dict(  # type: ignore[no-untyped-call]
                config_dict=dict(config_dict),
                context=context,
                persist_config=False,
                client_configuration=Configuration(),
            )
        if kubeconfig is None:
            raise not_configured("no kubeconfig given")
        path = Path(kubeconfig).expanduser()
        if not path.is_file():
            raise not_configured(f"no kubeconfig at {path}")
        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(path),
            context=context,
            persist_config=False,
            client_configuration=Configuration(),
        )
    except config.ConfigException as exc:
        raise ConfigError(
            f"the kubeconfig cannot be used: {exc}",
            hint="check its current-context / the context name, and its credentials",
        ) from exc


def bearer_api_client(
    token: Callable[[], str],
    *,
    kubeconfig: Path | str | None = None,
    config_dict: Mapping[str, Any] | None = None,
    context: str | None = None,
) -> Any:
    """A ``kubernetes.client.ApiClient`` that acts as whoever ``token()`` names: the server and
    CA come from the kubeconfig's cluster, the kubeconfig's own user credentials are not used
    (no client certificate, no token), and every request carries ``Bearer <token()>``, so the
    token source refreshes it when it is about to expire."""
    from kubernetes.client import ApiClient, Configuration

    loaded = api_client(kubeconfig=kubeconfig, config_dict=config_dict, context=context)
    try:
        source = loaded.configuration
        conf = Configuration()
        conf.host = source.host
        conf.ssl_ca_cert = source.ssl_ca_cert
        conf.verify_ssl = source.verify_ssl
        conf.tls_server_name = getattr(source, "tls_server_name", None)
        conf.proxy = source.proxy
    finally:
        loaded.close()

    def refresh(configuration: Any) -> None:
        configuration.api_key["authorization"] = token()

    conf.api_key = {"authorization": token()}
    conf.api_key_prefix = {"authorization": "Bearer"}
    conf.refresh_api_key_hook = refresh  # type: ignore[assignment]  # typed as None there
    return ApiClient(configuration=conf)
