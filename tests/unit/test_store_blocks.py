"""Store blocks (no server needed): validation, the config mappings they give, credentials
passed to the Elasticsearch client, cluster blocks preferring them, job.json kept private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from juliarun.backends.supervised.jobdir import JobDir
from juliarun.blocks import LocalCluster
from juliarun.blocks.stores import ElasticsearchLogs, InfluxMetrics
from juliarun.logs.elasticsearch import ElasticsearchLogStore


def test_elasticsearch_logs_config_and_auth_rules(tmp_path: Path) -> None:
    plain = ElasticsearchLogs(url="http://es:9200", index_prefix="team-logs")
    assert plain.config(spool=tmp_path) == {
        "kind": "elasticsearch",
        "url": "http://es:9200",
        "index_prefix": "team-logs",
        "spool": str(tmp_path),
    }
    keyed = ElasticsearchLogs(url="http://es:9200", api_key="abc==")
    assert keyed.config(spool=tmp_path)["api_key"] == "abc=="
    assert "abc" not in repr(keyed)
    with pytest.raises(ValidationError, match="username and password go together"):
        ElasticsearchLogs(url="http://es:9200", username="elastic")
    with pytest.raises(ValidationError, match="not both"):
        ElasticsearchLogs(url="http://es:9200", username="u", password="p", api_key="k")
    with pytest.raises(ValidationError, match="index_prefix"):
        ElasticsearchLogs(url="http://es:9200", index_prefix="Upper")


def test_the_elasticsearch_store_sends_the_credentials(tmp_path: Path) -> None:
    basic = ElasticsearchLogs(url="http://127.0.0.1:1", username="elastic", password="s3cret")
    store = ElasticsearchLogStore(
        **{k: v for k, v in basic.config(tmp_path).items() if k != "kind"}
    )
    try:
        assert store._es._headers["authorization"].startswith("Basic ")
    finally:
        store.close()
    keyed = ElasticsearchLogs(url="http://127.0.0.1:1", api_key="abc==")
    store = ElasticsearchLogStore(
        **{k: v for k, v in keyed.config(tmp_path).items() if k != "kind"}
    )
    try:
        assert store._es._headers["authorization"] == "ApiKey abc=="
    finally:
        store.close()


def test_cluster_blocks_use_their_store_blocks(tmp_path: Path) -> None:
    logs = ElasticsearchLogs(url="http://es:9200", index_prefix="team-logs")
    metrics = InfluxMetrics(url="http://influx:8086", token="t0ken", org="-", bucket="db/rp")
    home = tmp_path / "home"
    block = LocalCluster(home=str(home), log_store_block=logs, metric_store_block=metrics)
    assert block._log_config() == logs.config(spool=home / "spool" / "logs")
    assert block._metric_config()["token"] == "t0ken"
    assert block._metric_config()["spool"] == str(home / "spool" / "metrics")
    assert LocalCluster(home=str(home))._log_config()["kind"] == "sqlite"


def test_job_files_are_private(tmp_path: Path) -> None:
    jobdir = JobDir(tmp_path)
    jobdir.write_job({"metric_store": {"token": "t0ken"}})
    assert stat.S_IMODE(jobdir.job_file.stat().st_mode) == 0o600
    assert jobdir.read_job() == {"metric_store": {"token": "t0ken"}}


def test_an_unknown_cluster_without_a_prefect_server_is_one_error_and_no_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No PREFECT_API_URL: the block is not looked for (which would start a temporary
    Prefect server), the error says why."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import juliarun
    from juliarun.errors import ConfigError

    monkeypatch.setenv("JULIARUN_HOME", str(tmp_path))
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(ConfigError, match="no Prefect server to load a saved cluster block from"),
    ):
        juliarun.init("nowhere")
