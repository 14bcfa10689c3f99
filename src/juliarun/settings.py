"""Settings from ``JULIARUN_*`` environment variables, with bounds on every number."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from juliarun.errors import ConfigError
from juliarun.queues.image import BrokerImage


class Settings(BaseSettings):
    """juliarun's configuration; every field reads ``JULIARUN_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="JULIARUN_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".juliarun",
        description="Where the embedded default keeps job state, logs and metrics.",
    )
    cluster: str | None = Field(
        None,
        description="Cluster init() uses by default: local, docker, kubernetes or a block name.",
    )
    log_store: Literal["sqlite", "elasticsearch"] = Field(
        "sqlite", description="Where job output is stored: sqlite (embedded) or elasticsearch."
    )
    metric_store: Literal["sqlite", "influxdb"] = Field(
        "sqlite", description="Where metrics are stored: sqlite (embedded) or influxdb."
    )
    es_url: str = Field("http://127.0.0.1:9200", description="Elasticsearch URL.")
    es_index_prefix: str = Field(
        "juliarun-logs",
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="Log indices are <prefix>-YYYY.MM.DD, from the index template <prefix>.",
    )
    influx_url: str = Field("http://127.0.0.1:8086", description="InfluxDB URL (v2 API).")
    influx_token: SecretStr = Field(SecretStr(":"), description="InfluxDB token.")
    influx_org: str = Field("-", description="InfluxDB organisation.")
    influx_bucket: str = Field("juliarun/autogen", description="InfluxDB bucket.")
    julia: str = Field("julia", description="The julia executable the local backend runs.")
    local_max_workers: int = Field(
        64, ge=1, le=4096, description="Worker processes the local backend runs at once."
    )
    julia_image: str = Field(
        "julia:1.10",
        description="Image Julia jobs run in on Docker when a job names none.",
    )
    git_image: str = Field(
        "alpine/git:latest",
        description="Image (with git and sh) of the init container that clones network git "
        "storage into each Kubernetes pod.",
    )
    queue_image: str | None = Field(
        None,
        description="A ready queue broker image for Docker and Kubernetes (default: built from "
        "base_image by juliarun's image builder and pushed to registry).",
    )
    base_image: str = Field(
        "debian:bookworm",
        description="The Debian image juliarun builds its service images (the queue broker) from.",
    )
    registry: str = Field(
        "",
        description="Registry juliarun pushes the images it builds for itself to, e.g. "
        "localhost:5000 (empty: kept on the Docker engine only).",
    )
    docker_max_workers: int = Field(
        64, ge=1, le=4096, description="Worker containers the Docker backend runs at once."
    )
    docker_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels on every container the Docker backend creates (JSON).",
    )
    poll_interval: float = Field(
        0.5, ge=0.01, le=60, description="Seconds between status polls while waiting on a job."
    )
    kill_grace: float = Field(
        10, ge=0, le=600, description="Seconds a worker gets between SIGTERM and SIGKILL."
    )
    kubeconfig: Path | None = Field(
        None,
        validation_alias=AliasChoices("JULIARUN_KUBECONFIG", "KUBECONFIG"),
        description="Kubeconfig of the kubernetes backend (JULIARUN_KUBECONFIG, else KUBECONFIG).",
    )
    kube_context: str | None = Field(None, description="Kubeconfig context (default: current).")
    kube_namespace: str = Field(
        "juliarun",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Namespace the kubernetes backend runs jobs in (created if missing).",
    )
    kube_placement: Literal["kube-scheduler", "juliarun"] = Field(
        "kube-scheduler",
        description="Who places Kubernetes jobs: the kube-scheduler, or juliarun's placement "
        "controller (whole jobs, pods gated until they all fit).",
    )
    kube_qps: float = Field(
        50,
        ge=1,
        le=10000,
        description="Client-side limit on Kubernetes API requests a second, once a burst is spent.",
    )
    kube_burst: int = Field(
        300,
        ge=1,
        le=10000,
        description="Kubernetes API requests sent at once before the qps limit applies (a "
        "submit is one request: 300 jobs go out at the apiserver's pace).",
    )
    alert_rules: Path | None = Field(
        None,
        description="JSON file of alert rules (a list, or {rules, hooks}) the served "
        "evaluate-alerts deployment evaluates every minute.",
    )

    def broker_image(self) -> BrokerImage:
        """Where Docker and Kubernetes backends get the queue broker's image."""
        return BrokerImage(image=self.queue_image, base=self.base_image, registry=self.registry)

    @property
    def log_db(self) -> Path:
        return self.home / "logs.db"

    @property
    def metric_db(self) -> Path:
        return self.home / "metrics.db"

    def log_store_config(self) -> dict[str, Any]:
        """The config mapping ``open_log_store`` takes for the selected log store."""
        if self.log_store == "elasticsearch":
            return {
                "kind": "elasticsearch",
                "url": self.es_url,
                "index_prefix": self.es_index_prefix,
                "spool": str(self.home / "spool" / "logs"),
            }
        return {"kind": "sqlite", "path": str(self.log_db)}

    def metric_store_config(self) -> dict[str, Any]:
        """The config mapping ``open_metric_store`` takes for the selected metric store."""
        if self.metric_store == "influxdb":
            return {
                "kind": "influxdb",
                "url": self.influx_url,
                "token": self.influx_token.get_secret_value(),
                "org": self.influx_org,
                "bucket": self.influx_bucket,
                "spool": str(self.home / "spool" / "metrics"),
            }
        return {"kind": "sqlite", "path": str(self.metric_db)}


def load_settings() -> Settings:
    """Read the settings, turning a bad value into a :class:`ConfigError` naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"JULIARUN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
