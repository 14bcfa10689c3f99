"""Cluster blocks: saved, reusable cluster configuration; each builds its backend and stores.

``juliarun.init("<block name>")`` loads one — the seed's ``JRUN_CONFIG`` in Prefect's terms.
"""

from __future__ import annotations

import contextlib
import importlib
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from prefect.blocks.core import Block
from pydantic import Field

from juliarun.backends.base import Backend
from juliarun.blocks.stores import ElasticsearchLogs, InfluxMetrics
from juliarun.context import Context
from juliarun.errors import ConfigError
from juliarun.logs import LogStore, open_log_store
from juliarun.metrics import MetricStore, open_metric_store
from juliarun.settings import Settings, load_settings
from juliarun.storage import StorageCatalog

DOCS = "https://github.com/juliarun/juliarun#readme"
LOGO = "https://julialang.org/assets/infra/logo.svg"


class Cluster(Block):
    """Base of the cluster blocks: a compute backend plus the log and metric stores.

    The cluster blocks are juliarun's one factory: ``juliarun.init`` connects through a saved
    block, or through the default block the settings describe (:func:`default_cluster`), and
    every part of the :class:`~juliarun.context.Context` it returns (backend, stores, storage
    catalog) lives under the block's ``home``."""

    _block_type_name = "juliarun Cluster"
    _logo_url = LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]
    kind: ClassVar[str]

    home: str | None = Field(
        None, description="State directory (default: JULIARUN_HOME, else ~/.juliarun)."
    )
    log_store_kind: Literal["sqlite", "elasticsearch"] = Field(
        "sqlite", description="Log store (its endpoint from JULIARUN_ES_URL)."
    )
    metric_store_kind: Literal["sqlite", "influxdb"] = Field(
        "sqlite", description="Metric store (its endpoint from JULIARUN_INFLUX_*)."
    )
    log_store_block: ElasticsearchLogs | None = Field(
        None, description="A saved Elasticsearch log store (instead of log_store_kind)."
    )
    metric_store_block: InfluxMetrics | None = Field(
        None, description="A saved InfluxDB metric store (instead of metric_store_kind)."
    )

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The block the ``JULIARUN_*`` settings describe (what ``init("<kind>")`` uses)."""

    @abstractmethod
    def build_backend(self, settings: Settings, cluster: str) -> Backend:
        """The compute backend this block configures, named ``cluster``."""

    def cluster_name(self) -> str:
        """The saved block's name, else the backend kind."""
        return getattr(self, "_block_document_name", None) or self.kind

    def settings(self) -> Settings:
        """The environment's settings with this block's home and store kinds."""
        base = load_settings()
        return base.model_copy(
            update={
                "home": Path(self.home).expanduser() if self.home else base.home,
                "log_store": self.log_store_kind,
                "metric_store": self.metric_store_kind,
            }
        )

    def _log_config_for(self, settings: Settings) -> dict[str, Any]:
        """The log store mapping: ``log_store_block``'s when set, else the settings'."""
        if self.log_store_block is not None:
            return self.log_store_block.config(spool=settings.home / "spool" / "logs")
        return settings.log_store_config()

    def _metric_config_for(self, settings: Settings) -> dict[str, Any]:
        """The metric store mapping: ``metric_store_block``'s when set, else the settings'."""
        if self.metric_store_block is not None:
            return self.metric_store_block.config(spool=settings.home / "spool" / "metrics")
        return settings.metric_store_config()

    def _log_config(self) -> dict[str, Any]:
        return self._log_config_for(self.settings())

    def _metric_config(self) -> dict[str, Any]:
        return self._metric_config_for(self.settings())

    def backend(self) -> Backend:
        """The compute backend this block configures."""
        return self.build_backend(self.settings(), self.cluster_name())

    def log_store(self) -> LogStore:
        """Where this cluster's job output is stored."""
        return open_log_store(self._log_config())

    def metric_store(self) -> MetricStore:
        """Where this cluster's metrics are stored."""
        return open_metric_store(self._metric_config())

    def connect(self, name: str | None = None) -> Context:
        """A :class:`~juliarun.context.Context` on this cluster, called ``name`` (default: the
        block's name): the backend, both stores and the storage catalog, all under ``home``."""
        settings = self.settings()
        cluster = name or self.cluster_name()
        backend = self.build_backend(settings, cluster)
        try:
            logs = open_log_store(self._log_config_for(settings))
            metrics = open_metric_store(self._metric_config_for(settings))
        except BaseException:
            backend.close()
            raise
        storage = StorageCatalog(settings.home / "storage.json")
        return Context(cluster, backend, logs, metrics, storage, settings)


class LocalCluster(Cluster):
    """The embedded default: jobs are process groups on the machine running the flow, with
    SQLite stores under ``home``."""

    _block_type_name = "juliarun Local Cluster"
    _block_type_slug = "juliarun-local-cluster"
    _description = "Run Julia jobs as local processes, with embedded SQLite logs and metrics."
    kind: ClassVar[str] = "local"

    julia: str = Field("julia", description="The julia executable to run.")
    max_workers: int = Field(64, ge=1, le=4096, description="Worker processes run at once.")
    kill_grace: float = Field(10, ge=0, le=600, description="Seconds from SIGTERM to SIGKILL.")

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            home=str(settings.home),
            log_store_kind=settings.log_store,
            metric_store_kind=settings.metric_store,
            julia=settings.julia,
            max_workers=settings.local_max_workers,
            kill_grace=settings.kill_grace,
        )

    def build_backend(self, settings: Settings, cluster: str) -> Backend:
        from juliarun.backends.local import LocalBackend

        return LocalBackend(
            settings.home,
            cluster=cluster,
            log_store=self._log_config_for(settings),
            metric_store=self._metric_config_for(settings),
            julia=self.julia,
            max_workers=self.max_workers,
            kill_grace=self.kill_grace,
        )


CLUSTER_BLOCKS: tuple[type[Cluster], ...] = (LocalCluster,)
# Cluster blocks needing an optional extra ("module:Class"), imported when a cluster is loaded.
OPTIONAL_CLUSTER_BLOCKS: tuple[str, ...] = (
    "juliarun.blocks.docker:DockerCluster",
    "juliarun.blocks.kubernetes:KubernetesCluster",
)


def cluster_blocks() -> tuple[type[Cluster], ...]:
    """Every cluster block type available: the built-in ones and those of installed extras."""
    found = list(CLUSTER_BLOCKS)
    for target in OPTIONAL_CLUSTER_BLOCKS:
        module, _, name = target.partition(":")
        with contextlib.suppress(ImportError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


# The blocks ``init("local" | "docker" | "kubernetes")`` builds from the settings.
DEFAULT_CLUSTERS: dict[str, str] = {
    "local": "juliarun.blocks.cluster:LocalCluster",
    "docker": "juliarun.blocks.docker:DockerCluster",
    "kubernetes": "juliarun.blocks.kubernetes:KubernetesCluster",
}


def default_cluster(kind: str, settings: Settings | None = None) -> Cluster:
    """The unsaved cluster block of ``kind`` that the settings (``JULIARUN_*``) describe."""
    target = DEFAULT_CLUSTERS.get(kind)
    if target is None:
        raise ConfigError(
            f"no cluster kind {kind!r}", hint=f"use one of {', '.join(DEFAULT_CLUSTERS)}"
        )
    module, _, attr = target.partition(":")
    try:
        block_type: type[Cluster] = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(
            f"the {kind} backend needs an extra that is not installed ({exc.name})",
            hint=f"pip install 'juliarun[{kind}]'",
        ) from exc
    return block_type.from_settings(settings or load_settings())


def connect(cluster: str | None = None) -> Context:
    """A context on ``cluster``: ``local`` / ``docker`` / ``kubernetes`` (the default block
    of that kind, from the settings) or the name of a saved cluster block; ``None`` takes
    ``JULIARUN_CLUSTER``, else ``local``."""
    settings = load_settings()
    name = cluster or settings.cluster or "local"
    if name in DEFAULT_CLUSTERS:
        return default_cluster(name, settings).connect(name)
    return load_cluster(name).connect(name)


def load_cluster(name: str) -> Cluster:
    """The saved cluster block called ``name``, whatever its type. Saved blocks live on a
    Prefect server: without ``PREFECT_API_URL`` there is none to ask (and no temporary server
    is started just to find out)."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise ConfigError(
            f"no cluster {name!r}: not local, docker or kubernetes, and no Prefect server to "
            "load a saved cluster block from (PREFECT_API_URL is not set)",
            hint="use --cluster local, docker or kubernetes, or set PREFECT_API_URL to the "
            "server that holds the block",
        )
    blocks = cluster_blocks()
    for block_type in blocks:
        try:
            block = block_type.load(name)
        except ValueError:
            continue
        if isinstance(block, Cluster):
            return block
    kinds = ", ".join(b.get_block_type_slug() for b in blocks)
    raise ConfigError(
        f"no cluster {name!r}: not local, docker or kubernetes, and no saved cluster block "
        f"of that name ({kinds})",
        hint=f"save one first, e.g. LocalCluster(home='/srv/juliarun').save({name!r})",
        cli_hint="use --cluster local, docker or kubernetes, or the name of a cluster block "
        "saved on this Prefect server",
    )
