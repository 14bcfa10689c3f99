"""Store blocks: a saved Elasticsearch log store or InfluxDB metric store, with its credentials.

A cluster block references one in its ``log_store_block`` / ``metric_store_block`` field (used
instead of the ``JULIARUN_*`` settings). Credentials stay ``SecretStr`` (masked in the UI, stored
encrypted); :meth:`config` unwraps them into the mapping ``open_log_store`` /
``open_metric_store`` take. Local and Docker job supervisors get that mapping in their job's
``job.json``, which is written readable by its owner only (mode 0600).

>>> logs = ElasticsearchLogs(url="http://es:9200", username="elastic", password="s3cret")
>>> logs.password
SecretStr('**********')
>>> config = logs.config(spool="/tmp/spool/logs")
>>> config["kind"], config["username"], config["password"]
('elasticsearch', 'elastic', 's3cret')
>>> metrics = InfluxMetrics(url="http://influx:8086", token="t0ken", org="-", bucket="db/autogen")
>>> metrics.config(spool="/tmp/spool/metrics")["token"]
't0ken'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from juliarun.settings import load_settings

DOCS = "https://github.com/juliarun/juliarun#readme"
ELASTIC_LOGO = (
    "https://images.ctfassets.net/gt6dp23g0g38/7ycfCbpUCxadlUv9vQqbW5/"
    "06d2ce09ad9f28f0fba9a19cd0e94dc3/elastic-logo.png"
)


def _spool(spool: str | Path | None, kind: str) -> str:
    return str(spool) if spool is not None else str(load_settings().home / "spool" / kind)


class ElasticsearchLogs(Block):
    """Job output in Elasticsearch: daily indices ``<index_prefix>-YYYY.MM.DD``."""

    _block_type_name = "juliarun Elasticsearch Logs"
    _block_type_slug = "juliarun-elasticsearch-logs"
    _logo_url = ELASTIC_LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]
    _description = "Where juliarun jobs' stdout and stderr are stored: an Elasticsearch server."

    url: str = Field(description="Elasticsearch URL, e.g. https://es.example.com:9200.")
    index_prefix: str = Field(
        "juliarun-logs",
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="Log indices are <prefix>-YYYY.MM.DD, from the index template <prefix>.",
    )
    username: str | None = Field(None, description="Basic auth user (with password).")
    password: SecretStr | None = Field(None, description="Basic auth password.")
    api_key: SecretStr | None = Field(
        None, description="API key (encoded), instead of username and password."
    )

    @model_validator(mode="after")
    def _one_auth(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.api_key is not None and self.username is not None:
            raise ValueError("use either api_key or username and password, not both")
        return self

    def config(self, spool: str | Path | None = None) -> dict[str, Any]:
        """The ``open_log_store`` mapping (secrets unwrapped); the spool directory defaults to
        ``<JULIARUN_HOME>/spool/logs``."""
        config: dict[str, Any] = {
            "kind": "elasticsearch",
            "url": self.url,
            "index_prefix": self.index_prefix,
            "spool": _spool(spool, "logs"),
        }
        if self.username is not None and self.password is not None:
            config["username"] = self.username
            config["password"] = self.password.get_secret_value()
        if self.api_key is not None:
            config["api_key"] = self.api_key.get_secret_value()
        return config


class InfluxMetrics(Block):
    """Metrics in InfluxDB (v2 API; InfluxDB 1.8: token ``user:password``, org ``-``, bucket
    ``database/retention-policy``)."""

    _block_type_name = "juliarun InfluxDB Metrics"
    _block_type_slug = "juliarun-influxdb-metrics"
    _logo_url = "https://www.influxdata.com/wp-content/uploads/cubo.svg"  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]
    _description = "Where juliarun metrics are stored: an InfluxDB server."

    url: str = Field(description="InfluxDB URL (v2 API), e.g. http://influx:8086.")
    token: SecretStr = Field(description="InfluxDB token (1.8: user:password, or ':').")
    org: str = Field(description="InfluxDB organisation (1.8: '-').")
    bucket: str = Field(description="InfluxDB bucket (1.8: database/retention-policy).")

    def config(self, spool: str | Path | None = None) -> dict[str, Any]:
        """The ``open_metric_store`` mapping (the token unwrapped); the spool directory defaults
        to ``<JULIARUN_HOME>/spool/metrics``."""
        return {
            "kind": "influxdb",
            "url": self.url,
            "token": self.token.get_secret_value(),
            "org": self.org,
            "bucket": self.bucket,
            "spool": _spool(spool, "metrics"),
        }
