"""Issue 13 on the Docker backend (real engine): a container that tries every metrics trick on
its bind-mounted metrics directory gets nothing it should not; it sees none of the submitter's
environment and no store credentials; a git url starting with '-' never reaches git as an
option; a killed supervisor takes its containers' output with it but the status says so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from juliarun.backends.base import wait_for_job
from juliarun.backends.docker import DockerBackend
from juliarun.errors import StorageError
from juliarun.logs import LogQuery, open_log_store
from juliarun.metrics import MetricQuery, open_metric_store
from juliarun.specs import Batch, StorageSpec

pytestmark = pytest.mark.docker

SECRET = "hunter2-docker-s3cr3t"


@pytest.fixture
def backend(
    juliarun_home: Path, docker_client: docker.DockerClient, docker_labels: dict[str, str]
) -> Iterator[DockerBackend]:
    backend = DockerBackend(juliarun_home, labels=docker_labels, kill_grace=2)
    yield backend
    for job in backend.jobs():
        backend.delete(job.name, force=True)
    backend.close()


TRICKS = r"""
d=/opt/juliarun/metrics
m="$JULIARUN_METRICS_FILE"
echo "load,job=victim,worker=victim-0,tenant=other,cluster=prod,run=7 value=5" >> "$m"
echo "juliarun.cpu_seconds value=1e9" >> "$m"
echo "password=$1 x" >> "$m"
sleep 1
: > "$m"
echo "after_truncate value=1" >> "$m"
sleep 1
ln -sf "$2" "$m"                        # a host path: must never be resolved on the host
sleep 1
rm -f "$m"; echo "x value=1" > "$d/other"; ln "$d/other" "$m"   # a second link to a file
sleep 1
rm -f "$m" "$d/other"; echo "last value=2" > "$m.new"; mv "$m.new" "$m"
sleep 1
ls -a "$d" | tr '\n' ' '; echo
env | cut -d= -f1 | sort | tr '\n' ' '; echo
"""


def test_a_container_trying_every_metrics_trick_gets_nothing(
    backend: DockerBackend, base_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JULIARUN_INFLUX_TOKEN", "influx-token-from-the-submitter")
    secret = tmp_path / "secret.txt"
    secret.write_text(f"store,password={SECRET} value=1\n")
    job = Batch(
        "tricks",
        command=["sh", "-c", TRICKS, "sh", SECRET, str(secret)],
        image=base_image,
    )
    backend.submit(job, {})
    assert str(wait_for_job(backend, "tricks", timeout=120, poll_interval=0.1)) == "succeeded"
    identity = {"job": "tricks", "worker": "tricks-0", "tenant": "default", "cluster": "docker"}
    by = ("cluster", "job", "tenant", "worker")
    with open_metric_store(backend.metric_store) as metrics:

        def rows(name: str, *extra: str, **tags: str) -> list[tuple[dict[str, str], float]]:
            q = MetricQuery(name=name, tags=tags, agg="sum", group_by=(*by, *extra))
            return [(dict(r.group), r.value) for r in metrics.query(q)]

        assert rows("load", "run") == [({**identity, "run": "7"}, 5.0)]
        assert rows("load", job="victim") == []
        assert rows("after_truncate") == [(identity, 1.0)]
        assert rows("last") == [(identity, 2.0)]
        assert rows("store") == [] and rows("x") == []
        cpu = metrics.query(MetricQuery(name="juliarun.cpu_seconds", agg="max"))
        assert all(r.value < 1e9 for r in cpu)
    with open_log_store(backend.log_store) as logs:
        lines = [x.message for x in logs.query(LogQuery(job="tricks"))]
    assert not [x for x in lines if SECRET in x or "from-the-submitter" in x]
    notes = [x for x in lines if x.startswith("juliarun:")]
    assert notes == [
        "juliarun: ignored 1 metric line (field … must be key=value); "
        "ignored 1 point with a reserved juliarun.* name",
        "juliarun: 1 metric point set the tags cluster, job, tenant, worker themselves: "
        "the platform's were kept",
        "juliarun: metrics file tricks-0.lp was truncated: reading it from the start",
        "juliarun: metrics file tricks-0.lp is a symbolic link: not read "
        "(metrics are read from a regular file only)",
        "juliarun: metrics file tricks-0.lp has other hard links: not read "
        "(metrics are read from a regular file only)",
        "juliarun: metrics file tricks-0.lp was replaced: reading it from the start",
    ]
    listing, env = [x for x in lines if not x.startswith("juliarun:")]
    assert listing.split() == [".", "..", "tricks-0.lp"]
    assert "JULIARUN_INFLUX_TOKEN" not in env.split()
    job_json = json.loads((backend.jobs_dir / "tricks" / "job.json").read_text())
    assert "log_store" not in job_json and "metric_store" not in job_json
    backend.delete("tricks")


def test_a_git_url_starting_with_a_dash_never_reaches_git_as_an_option(
    backend: DockerBackend, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    spec = StorageSpec.model_construct(
        name="code", kind="git", url=f"--upload-pack=touch {marker};true", ref=None
    )
    with pytest.raises(StorageError, match="git clone") as info:
        backend.provision_storage(spec)
    assert "repository '--upload-pack=touch" in info.value.message  # after "--"
    assert not marker.exists()
