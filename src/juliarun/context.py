"""The connection to one cluster that the API, tasks and flows share: its backend, log store,
metric store, storage catalog and settings. A cluster block builds it (``Cluster.connect``);
nothing else does."""

from __future__ import annotations

from dataclasses import dataclass, field

from juliarun.backends.base import Backend
from juliarun.logs import LogStore
from juliarun.metrics import MetricStore
from juliarun.settings import Settings
from juliarun.storage import StorageCatalog


@dataclass
class Context:
    """A connection to one cluster: its backend, log store, metric store and storage catalog
    (all under the same home: the cluster block's, else ``JULIARUN_HOME``)."""

    cluster: str
    backend: Backend
    logs: LogStore
    metrics: MetricStore
    storage: StorageCatalog
    settings: Settings = field(repr=False)

    def close(self) -> None:
        self.backend.close()
        self.logs.close()
        self.metrics.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
