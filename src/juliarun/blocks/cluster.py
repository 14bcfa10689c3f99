"""Cluster blocks: saved, reusable cluster configuration; each builds its backend and stores.

``juliarun.init("<block name>")`` loads one — the seed's ``JRUN_CONFIG`` in Prefect's terms.
"""

from __future__ import annotations

import contextlib
import importlib
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field

from juliarun.backends.base import Backend
from juliarun.blocks.stores import ElasticsearchLogs, InfluxMetrics
from juliarun.errors import ConfigError
from juliarun.logs import LogStore, open_log_store
from juliarun.metrics import MetricStore, open_metric_store
from juliarun.settings import Settings, load_settings

DOCS = "https://github.com/juliarun/juliarun#readme"
LOGO = "https://julialang.org/assets/infra/logo.svg"


class Cluster(Block):
    """Base of the cluster blocks: a compute backend plus the log and metric stores."""

    _block_type_name = "juliarun Cluster"
    _logo_url = LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]

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

    @abstractmethod
    def backend(self) -> Backend:
        """The compute backend this block configures."""

    def _settings(self) -> Settings:
        """The environment's settings with this block's home and store kinds."""
        base = load_settings()
        return base.model_copy(
            update={
                "home": Path(self.home) if self.home else base.home,
                "log_store": self.log_store_kind,
                "metric_store": self.metric_store_kind,
            }
        )

    def log_store(self) -> LogStore:
        """Where this cluster's job output is stored."""
        return open_log_store(self._log_config_for(self._settings()))

    def metric_store(self) -> MetricStore:
        """Where this cluster's metrics are stored."""
        return open_metric_store(self._metric_config_for(self._settings()))


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

    def _home(self) -> Path:
        return self._settings().home

    def _cluster_name(self) -> str:
        return getattr(self, "_block_document_name", None) or "local"

    def backend(self) -> Backend:
        from juliarun.backends.local import LocalBackend

        return LocalBackend(
            self._home(),
            cluster=self._cluster_name(),
            log_store=self._log_config(),
            metric_store=self._metric_config(),
            julia=self.julia,
            max_workers=self.max_workers,
            kill_grace=self.kill_grace,
        )

    def _log_config(self) -> dict[str, Any]:
        return self._log_config_for(self._settings())

    def _metric_config(self) -> dict[str, Any]:
        return self._metric_config_for(self._settings())


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


def load_cluster(name: str) -> Cluster:
    """The saved cluster block called ``name``, whatever its type."""
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
    )
