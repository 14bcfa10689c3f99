"""Metric stores: where metrics go. ``open_metric_store`` builds one from its config mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from juliarun._plugins import build
from juliarun.metrics.base import MetricQuery, MetricStore, Point, Row

__all__ = ["MetricQuery", "MetricStore", "Point", "Row", "open_metric_store"]

# kind -> "module:Class"; each class takes its config (less "kind") as keyword arguments.
STORES: dict[str, str] = {
    "sqlite": "juliarun.metrics.sqlite:SqliteMetricStore",
    "influxdb": "juliarun.metrics.influxdb:InfluxMetricStore",
}


def open_metric_store(config: Mapping[str, Any]) -> MetricStore:
    """``open_metric_store({"kind": "sqlite", "path": "/tmp/metrics.db"})``."""
    store: MetricStore = build(STORES, config, "metric store")
    return store
