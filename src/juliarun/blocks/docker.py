"""The Docker cluster block (needs the ``docker`` extra): jobs as containers on one engine.

The engine connection is prefect-docker's ``DockerHost`` block and registry credentials its
``DockerRegistryCredentials`` block (the password stays a ``SecretStr``), nested by reference:

>>> from prefect_docker import DockerHost
>>> block = DockerCluster(docker_host=DockerHost(base_url="unix:///var/run/docker.sock"))
>>> block.engine().endpoint
'unix:///var/run/docker.sock'
"""

from __future__ import annotations

from typing import ClassVar, Self

from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import Field

from juliarun.backends.base import Backend
from juliarun.backends.docker import DockerBackend, EngineConfig, RegistryAuth
from juliarun.blocks.cluster import Cluster
from juliarun.errors import ConfigError
from juliarun.settings import Settings


class DockerCluster(Cluster):
    """Run Julia jobs as containers on a Docker engine on the machine running the flow (its
    state and storage are on this machine, under ``home``)."""

    _block_type_name = "juliarun Docker Cluster"
    _block_type_slug = "juliarun-docker-cluster"
    _description = "Run Julia jobs as Docker containers, with cpu/memory limits and storage."
    kind: ClassVar[str] = "docker"

    docker_host: DockerHost | None = Field(
        None, description="The engine to use (default: DOCKER_HOST, else the local socket)."
    )
    registry_credentials: DockerRegistryCredentials | None = Field(
        None, description="Credentials for pulling job images from their registry."
    )
    image: str | None = Field(
        None, description="Image for jobs that name none (default: JULIARUN_JULIA_IMAGE)."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels on every container created."
    )
    max_workers: int = Field(64, ge=1, le=4096, description="Worker containers run at once.")
    kill_grace: float = Field(10, ge=0, le=600, description="Seconds from SIGTERM to SIGKILL.")

    def engine(self) -> EngineConfig:
        """The engine connection of ``docker_host`` (which must not need ``client_kwargs``:
        each job's supervisor process reconnects from this configuration)."""
        host = self.docker_host
        if host is None:
            return EngineConfig()
        if host.client_kwargs:
            raise ConfigError(
                "docker_host.client_kwargs is not supported by the Docker cluster",
                hint="set base_url, version and timeout only; for TLS use DOCKER_HOST, "
                "DOCKER_TLS_VERIFY and DOCKER_CERT_PATH with base_url unset",
            )
        return EngineConfig(host.base_url, host.version, host.timeout or 60)

    def _registry_auth(self) -> RegistryAuth | None:
        creds = self.registry_credentials
        if creds is None:
            return None
        return RegistryAuth(creds.registry_url, creds.username, creds.password)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The engine at ``DOCKER_HOST`` (else the local socket), image ``JULIARUN_JULIA_IMAGE``,
        labels ``JULIARUN_DOCKER_LABELS``, at most ``JULIARUN_DOCKER_MAX_WORKERS`` workers."""
        return cls(
            home=str(settings.home),
            log_store_kind=settings.log_store,
            metric_store_kind=settings.metric_store,
            image=settings.julia_image,
            labels=dict(settings.docker_labels),
            max_workers=settings.docker_max_workers,
            kill_grace=settings.kill_grace,
        )

    def build_backend(self, settings: Settings, cluster: str) -> Backend:
        return DockerBackend(
            settings.home,
            cluster=cluster,
            engine=self.engine(),
            image=self.image or settings.julia_image,
            registry_auth=self._registry_auth(),
            labels=self.labels,
            log_store=self._log_config_for(settings),
            metric_store=self._metric_config_for(settings),
            max_workers=self.max_workers,
            kill_grace=self.kill_grace,
            broker_image=settings.broker_image(),
        )
