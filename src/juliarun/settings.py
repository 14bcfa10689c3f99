"""Settings from ``JULIARUN_*`` environment variables, with bounds on every number."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from juliarun.errors import ConfigError


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
    log_store: Literal["sqlite"] = Field("sqlite", description="Where job output is stored.")
    metric_store: Literal["sqlite"] = Field("sqlite", description="Where metrics are stored.")
    julia: str = Field("julia", description="The julia executable the local backend runs.")
    local_max_workers: int = Field(
        64, ge=1, le=4096, description="Worker processes the local backend runs at once."
    )
    poll_interval: float = Field(
        0.5, ge=0.01, le=60, description="Seconds between status polls while waiting on a job."
    )
    kill_grace: float = Field(
        10, ge=0, le=600, description="Seconds a worker gets between SIGTERM and SIGKILL."
    )

    @property
    def log_db(self) -> Path:
        return self.home / "logs.db"

    @property
    def metric_db(self) -> Path:
        return self.home / "metrics.db"


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
