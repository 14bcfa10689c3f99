"""Log stores: where job output goes. ``open_log_store`` builds one from its config mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from juliarun._plugins import build
from juliarun.logs.base import LogLine, LogQuery, LogStore

__all__ = ["LogLine", "LogQuery", "LogStore", "open_log_store"]

# kind -> "module:Class"; each class takes its config (less "kind") as keyword arguments.
STORES: dict[str, str] = {
    "sqlite": "juliarun.logs.sqlite:SqliteLogStore",
    "elasticsearch": "juliarun.logs.elasticsearch:ElasticsearchLogStore",
}


def open_log_store(config: Mapping[str, Any]) -> LogStore:
    """``open_log_store({"kind": "sqlite", "path": "/tmp/logs.db"})``."""
    store: LogStore = build(STORES, config, "log store")
    return store
