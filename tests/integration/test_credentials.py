"""Credentials checked by real servers: the test environment's second registry (htpasswd,
``JULIARUN_AUTH_REGISTRY``) and second InfluxDB 1.8 (``auth-enabled``, ``JULIARUN_AUTH_INFLUX_URL``)
refuse a request without the right password. juliarun's image builder pushes, the Docker
cluster block pulls and the InfluxDB metric block writes and reads with the right one, and
each fails with an error naming the server with a wrong one.

Elasticsearch is not covered yet: the test environment's instance runs with
``xpack.security.enabled: false``. Its build (the integ-test-zip) does ship the
``x-pack-security`` module, so a second, secured single-node instance (file-realm user, HTTP
without TLS) is possible; it would cost another JVM of at least 512 MiB."""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import docker.errors
import pytest
from prefect_docker import DockerRegistryCredentials
from pydantic import SecretStr

from juliarun.backends.base import wait_for_job
from juliarun.backends.docker.engine import RegistryAuth
from juliarun.blocks.docker import DockerCluster
from juliarun.blocks.stores import InfluxMetrics
from juliarun.builders.images import build_image
from juliarun.errors import BuildError, SpecError, StoreError
from juliarun.logs import LogQuery, open_log_store
from juliarun.metrics import MetricQuery, open_metric_store
from juliarun.specs import Batch, ImageSpec
from tests.integration.fixtures._service import env, require
from tests.integration.fixtures.docker import TEST_LABEL


def _http_status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# -- the registry ------------------------------------------------------------------------------


class AuthRegistry:
    def __init__(self, name: str, user: str, password: str) -> None:
        self.name, self.user, self.password = name, user, password
        port = name.partition(":")[2]
        self.url = f"http://127.0.0.1:{port}"

    def auth(self, password: str | None = None) -> RegistryAuth:
        return RegistryAuth(self.name, self.user, SecretStr(password or self.password))

    def tags(self, repository: str) -> list[str]:
        request = urllib.request.Request(f"{self.url}/v2/{repository}/tags/list")
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return sorted(json.load(response)["tags"] or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise


@pytest.fixture(scope="session")
def auth_registry() -> AuthRegistry:
    """The registry that checks logins (``scripts/testenv up registry``)."""
    registry = AuthRegistry(
        env("JULIARUN_AUTH_REGISTRY"),
        env("JULIARUN_AUTH_REGISTRY_USER"),
        env("JULIARUN_AUTH_REGISTRY_PASSWORD"),
    )

    def probe() -> str | None:
        if not (registry.name and registry.user and registry.password):
            return "JULIARUN_AUTH_REGISTRY(_USER, _PASSWORD) are not set"
        anonymous = _http_status(f"{registry.url}/v2/")
        if anonymous != 401:
            return f"/v2/ without a login answered {anonymous}, not 401"
        signed = _http_status(f"{registry.url}/v2/", registry.user, registry.password)
        return None if signed == 200 else f"/v2/ with the login answered {signed}"

    require("registry", probe)
    return registry


def _spec(base_image: str, labels: dict[str, str]) -> ImageSpec:
    # A unique file: a tag no earlier run pushed.
    return ImageSpec(
        name="juliarun/auth-test",
        base=base_image,
        run=[f"echo {labels[TEST_LABEL]} > /opt/app/id"],
        labels=labels,
    )


@pytest.mark.docker
def test_an_image_is_pushed_and_pulled_with_the_registry_password(
    auth_registry: AuthRegistry,
    base_image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    juliarun_home: Path,
) -> None:
    spec = _spec(base_image, docker_labels)
    built = build_image(docker_client, spec, auth_registry.name, auth=auth_registry.auth())
    assert (built.built, built.pushed) == (True, True)
    assert built.tag.startswith(f"{auth_registry.name}/juliarun/auth-test:")
    assert auth_registry.tags("juliarun/auth-test").count(built.tag.rsplit(":", 1)[1]) == 1
    # Asked again: the registry (through the login) has the tag, nothing is built.
    again = build_image(docker_client, spec, auth_registry.name, auth=auth_registry.auth())
    assert (again.tag, again.built, again.pushed) == (built.tag, False, False)

    # The engine forgets the image: a job of the Docker cluster pulls it with the block's login.
    docker_client.images.remove(built.tag, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(built.tag)
    cluster = DockerCluster(
        home=str(juliarun_home),
        image=base_image,
        labels=docker_labels,
        kill_grace=2,
        registry_credentials=DockerRegistryCredentials(
            registry_url=auth_registry.name,
            username=auth_registry.user,
            password=SecretStr(auth_registry.password),
        ),
    )
    backend = cluster.backend()
    try:
        backend.submit(Batch("pulled", image=built.tag, command=["cat", "/opt/app/id"]), {})
        assert wait_for_job(backend, "pulled", timeout=120).phase == "succeeded"
        store = open_log_store(backend.log_store)
        try:
            lines = [ln.message for ln in store.query(LogQuery(job="pulled"))]
        finally:
            store.close()
        assert lines == [docker_labels[TEST_LABEL]]
        assert docker_client.images.get(built.tag).labels[TEST_LABEL] == docker_labels[TEST_LABEL]
    finally:
        for job in backend.jobs():
            backend.delete(job.name, force=True)
        backend.close()


@pytest.mark.docker
def test_a_wrong_registry_password_fails_naming_the_registry(
    auth_registry: AuthRegistry,
    base_image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    juliarun_home: Path,
) -> None:
    spec = _spec(base_image, docker_labels)
    wrong = auth_registry.auth("not-the-password")
    with pytest.raises(BuildError) as push:
        build_image(docker_client, spec, auth_registry.name, auth=wrong)
    assert push.value.step == "push"
    assert push.value.what.startswith(f"push of {auth_registry.name}/juliarun/auth-test:")
    assert push.value.output[-1] == "unauthorized: authentication required"
    assert "check the registry credentials" in (push.value.hint or "")
    assert f"registry {auth_registry.name} refused the login" in (push.value.hint or "")
    assert auth_registry.tags("juliarun/auth-test").count(push.value.what.rsplit(":", 1)[1]) == 0

    # The right password pushes it; a job of a block with the wrong one cannot pull it.
    built = build_image(docker_client, spec, auth_registry.name, auth=auth_registry.auth())
    assert built.pushed
    docker_client.images.remove(built.tag, force=True)
    cluster = DockerCluster(
        home=str(juliarun_home),
        image=base_image,
        labels=docker_labels,
        registry_credentials=DockerRegistryCredentials(
            registry_url=auth_registry.name,
            username=auth_registry.user,
            password=SecretStr("not-the-password"),
        ),
    )
    backend = cluster.backend()
    try:
        with pytest.raises(SpecError) as pull:
            backend.submit(Batch("refused", image=built.tag, command=["true"]), {})
        message = str(pull.value)
        assert f"{built.tag!r} is not on the Docker engine and cannot be pulled" in message
        assert "unauthorized" in message
        assert "registry credentials" in (pull.value.hint or "")
        assert [job.name for job in backend.jobs()] == []  # refused before anything ran
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(built.tag)
    finally:
        for job in backend.jobs():
            backend.delete(job.name, force=True)
        backend.close()


# -- InfluxDB ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def auth_influx() -> tuple[str, str]:
    """The InfluxDB with auth on: its URL and token ``user:password``."""
    url, token = env("JULIARUN_AUTH_INFLUX_URL"), env("JULIARUN_AUTH_INFLUX_TOKEN")

    def probe() -> str | None:
        if not (url and ":" in token):
            return "JULIARUN_AUTH_INFLUX_URL and JULIARUN_AUTH_INFLUX_TOKEN are not set"
        anonymous = _http_status(f"{url}/query?q=SHOW+DATABASES")
        if anonymous != 401:
            return f"/query without credentials answered {anonymous}, not 401"
        user, _, password = token.partition(":")
        signed = _http_status(f"{url}/query?q=SHOW+DATABASES", user, password)
        return None if signed == 200 else f"/query with the credentials answered {signed}"

    require("influxdb", probe)
    return url, token


@pytest.fixture
def auth_influx_bucket(auth_influx: tuple[str, str]) -> Iterator[str]:
    url, token = auth_influx
    user, _, password = token.partition(":")
    database = f"juliarun_auth_{uuid.uuid4().hex[:12]}"

    def influxql(statement: str) -> None:
        request = urllib.request.Request(
            f"{url}/query", data=urllib.parse.urlencode({"q": statement}).encode()
        )
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    influxql(f'CREATE DATABASE "{database}"')
    try:
        yield f"{database}/autogen"
    finally:
        influxql(f'DROP DATABASE "{database}"')


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.influxdb
def test_the_influx_metric_block_writes_and_reads_with_the_right_token(
    auth_influx: tuple[str, str], auth_influx_bucket: str, tmp_path: Path
) -> None:
    url, token = auth_influx
    block = InfluxMetrics(url=url, token=SecretStr(token), org="-", bucket=auth_influx_bucket)
    store = open_metric_store(block.config(spool=tmp_path / "spool"))
    try:
        for i, value in enumerate([3.0, 7.0, 5.0]):
            store.record("loss", value, {"job": "j"}, T0 + timedelta(seconds=i))
        rows = store.query(MetricQuery(name="loss", agg="last", group_by=("job",)))
        assert [(r.group, r.value, r.start) for r in rows] == [({"job": "j"}, 5.0, T0)]
        rows = store.query(MetricQuery(name="loss", agg="max"))
        assert [r.value for r in rows] == [7.0]
    finally:
        store.close()
    assert list((tmp_path / "spool").rglob("*.lp")) == []  # nothing waited for the server


@pytest.mark.influxdb
def test_a_wrong_influx_token_fails_naming_the_server(
    auth_influx: tuple[str, str],
    auth_influx_bucket: str,
    tmp_path: Path,
) -> None:
    url, token = auth_influx
    user = token.partition(":")[0]
    block = InfluxMetrics(
        url=url, token=SecretStr(f"{user}:wrong"), org="-", bucket=auth_influx_bucket
    )
    store = open_metric_store(block.config(spool=tmp_path / "spool"))
    try:
        with pytest.raises(StoreError) as err:
            store.query(MetricQuery(name="loss", agg="last"))
        message = str(err.value)
        assert message.startswith(f"InfluxDB at {url} cannot query 'loss': HTTP 401: Unauthorized")
        assert "InfluxDB refused the token" in (err.value.hint or "")
    finally:
        store.close()
    # Nothing was written with the wrong token; the right one reads nothing back.
    right = open_metric_store(
        InfluxMetrics(url=url, token=SecretStr(token), org="-", bucket=auth_influx_bucket).config(
            spool=tmp_path / "spool-right"
        )
    )
    try:
        assert right.query(MetricQuery(name="loss", agg="last")) == []
    finally:
        right.close()


@pytest.mark.influxdb
def test_points_written_with_a_wrong_influx_token_are_spooled_not_lost(
    auth_influx: tuple[str, str],
    auth_influx_bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, token = auth_influx
    user = token.partition(":")[0]
    spool = tmp_path / "spool"
    config = InfluxMetrics(
        url=url, token=SecretStr(f"{user}:wrong"), org="-", bucket=auth_influx_bucket
    ).config(spool=spool)
    store = open_metric_store({**config, "max_retries": 0, "close_timeout": 1.0})
    with caplog.at_level(logging.WARNING, logger="juliarun.metrics.influxdb"):
        store.record("loss", 1.5, {"job": "j"}, T0)
        store.close()
    assert [p.read_text() for p in spool.rglob("*.lp")] == [
        f"loss,job=j value=1.5 {int(T0.timestamp()) * 10**9}\n"
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(
        "InfluxDB unavailable (HTTP 401: Unauthorized): 1 points spooled" in w for w in warnings
    ), warnings

    # The right token drains the spool (its background thread adopts it): the point arrives once.
    right = open_metric_store({**config, "token": token})
    try:
        deadline = time.monotonic() + 20
        while right.stats.drained < 1 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.1)
        assert right.stats.drained == 1  # type: ignore[attr-defined]
        assert list(spool.rglob("*.lp")) == []
        rows = right.query(MetricQuery(name="loss", agg="count"))
    finally:
        right.close()
    assert [r.value for r in rows] == [1.0]
