"""The Docker backend on the real engine: jobs as labelled containers run by a supervisor process
on this machine, with real Julia in the Julia image and shell jobs in the bookworm base image.

Every test has its own JULIARUN_HOME; everything it creates carries its ``docker_labels`` and is
removed by them at teardown (after the ``backend`` fixture force-deleted the jobs)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from docker.types import Mount
from prefect.blocks.core import Block
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import SecretStr

import juliarun
from juliarun.backends.base import Backend, JobStatus, wait_for_job
from juliarun.backends.docker import DockerBackend
from juliarun.backends.docker.engine import (
    ATTEMPT,
    CLUSTER,
    JOB,
    MANAGED_BY,
    SCOPE,
    TENANT,
    WORKER,
)
from juliarun.backends.docker.runtime import DockerRuntime
from juliarun.backends.supervised.runtime import WorkerLaunch, WorkerStartError
from juliarun.errors import ConfigError, SpecError, StorageError
from juliarun.logs import LogQuery, LogStore, open_log_store
from juliarun.metrics import MetricQuery, open_metric_store
from juliarun.specs import Batch, JuliaBatch, JuliaParBatchWorkers, StorageSpec
from tests.integration.fixtures.docker import TEST_LABEL
from tests.integration.git_repos import commit, git, make_repo
from tests.unit.local_jobs import alive, eventually

pytestmark = pytest.mark.docker


@pytest.fixture
def backend(
    juliarun_home: Path,
    docker_client: docker.DockerClient,
    julia_image: str,
    docker_labels: dict[str, str],
) -> Iterator[DockerBackend]:
    """A Docker backend on the test's home (cluster ``docker``, as ``init("docker")`` uses),
    labelling everything with the test's labels; its jobs are force-deleted at teardown."""
    backend = DockerBackend(juliarun_home, image=julia_image, labels=docker_labels, kill_grace=5)
    yield backend
    for job in backend.jobs():
        backend.delete(job.name, force=True)
    backend.close()


@pytest.fixture
def logs(backend: DockerBackend) -> Iterator[LogStore]:
    store = open_log_store(backend.log_store)
    yield store
    store.close()


@pytest.fixture
def code(tmp_path: Path) -> Path:
    path = tmp_path / "code"
    path.mkdir()
    return path


def host(name: str, path: Path) -> dict[str, StorageSpec]:
    return {name: StorageSpec(name=name, kind="host", path=str(path))}


def sh(name: str, image: str, script: str, **fields: object) -> Batch:
    """A Batch running ``script`` under sh in ``image`` (the bookworm base image)."""
    return Batch(name, command=["sh", "-c", script], image=image, **fields)


def finish(backend: Backend, name: str, timeout: float = 120) -> JobStatus:
    return wait_for_job(backend, name, timeout=timeout, poll_interval=0.1)


def until(backend: Backend, name: str, ok: Callable[[JobStatus], bool], what: str) -> JobStatus:
    def check() -> JobStatus | None:
        status = backend.status(name)
        return status if ok(status) else None

    return eventually(check, timeout=120, interval=0.1, what=f"{name}: {what}")


def messages(logs: LogStore, job: str, **query: object) -> list[str]:
    return [line.message for line in logs.query(LogQuery(job=job, **query))]  # type: ignore[arg-type]


def containers(client: docker.DockerClient, labels: dict[str, str], **more: str) -> list[Container]:
    selector = [f"{TEST_LABEL}={labels[TEST_LABEL]}", *(f"{k}={v}" for k, v in more.items())]
    found: list[Container] = client.containers.list(all=True, filters={"label": selector})
    return found


# -- the seed session -------------------------------------------------------------------------


def test_seed_session_on_docker_with_real_julia(
    juliarun_home: Path,
    backend: DockerBackend,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    code: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JULIARUN_DOCKER_LABELS", json.dumps(docker_labels))
    (code / "hello.jl").write_text('println("hello world!")\n')
    with juliarun.init("docker") as ctx:
        assert ctx.backend.kind == "docker"
        out = io.StringIO()
        cluster = juliarun.status(ctx, verbose=True, out=out)
        assert cluster.healthy, out.getvalue()
        assert [c.name for c in cluster.components][:2] == [
            "docker-engine",
            f"registry {os.environ['JULIARUN_REGISTRY']}",
        ]
        [node] = cluster.nodes
        assert node.name == docker_client.info()["Name"]
        assert "Compute cluster: docker (docker) at " in out.getvalue()

        juliarun.define_storage(ctx, name="code", kind="host", path=str(code))
        job = juliarun.JuliaBatch("helloworld", "/mnt/code/hello.jl", "code", memory="512Mi")
        assert str(juliarun.submit(ctx, job)) == "created, 1 processes waiting"
        assert juliarun.list(ctx) == [job]
        assert str(juliarun.wait(ctx, job, timeout=120)) == "succeeded"
        text = io.StringIO()
        assert juliarun.tail(ctx, job=job, out=text) == 1
        assert text.getvalue().rstrip().endswith(", helloworld-0, hello world!")

        [container] = containers(docker_client, docker_labels, **{JOB: "helloworld"})
        assert container.name == backend.names.container("helloworld-0")
        assert container.labels[MANAGED_BY] == "juliarun"
        assert container.labels[TENANT] == "default"
        assert container.labels[WORKER] == "helloworld-0"
        assert container.labels[CLUSTER] == "docker"
        assert container.labels[SCOPE] == backend.names.scope  # the same home and cluster
        config = container.attrs
        assert config["Config"]["Image"] == os.environ["JULIARUN_JULIA_IMAGE"]
        assert config["Config"]["Cmd"] == [
            "julia",
            "--startup-file=no",
            "--color=no",
            "/mnt/code/hello.jl",
        ]
        assert config["HostConfig"]["NanoCpus"] == 1_000_000_000
        assert config["HostConfig"]["Memory"] == 512 * 2**20
        assert config["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")

        # Another Python process on the machine sees the same job.
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import juliarun; ctx = juliarun.init('docker'); "
                "print(juliarun.list(ctx), juliarun.status(ctx, 'helloworld'))",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        assert other.stdout.strip() == "[JuliaBatch('helloworld')] succeeded"

        assert juliarun.delete(ctx, job) is True
        assert juliarun.list(ctx) == []
    assert containers(docker_client, docker_labels) == []


def test_a_julia_metric_recorded_in_the_container_is_queryable(
    backend: DockerBackend, code: Path, logs: LogStore
) -> None:
    (code / "metric.jl").write_text(
        'include(ENV["JULIARUN_JL"])\n'
        'JuliaRun.record("files_processed", 42; stage="parse")\n'
        'println(ENV["JULIARUN_METRICS_FILE"], " ", ENV["JULIARUN_MNT"], " ", pwd())\n'
    )
    backend.submit(JuliaBatch("metric", "/mnt/code/metric.jl", "code"), host("code", code))
    assert str(finish(backend, "metric")) == "succeeded"
    assert messages(logs, "metric") == ["/opt/juliarun/metrics/metric-0.lp /mnt /mnt/code"]
    store = open_metric_store(backend.metric_store)
    try:
        [row] = store.query(
            MetricQuery(name="files_processed", tags={"job": "metric"}, group_by=("worker",))
        )
    finally:
        store.close()
    assert (row.value, row.group) == (42.0, {"worker": "metric-0"})


# -- workers ----------------------------------------------------------------------------------


def test_workers_get_distinct_ids_scale_and_are_removed_by_force_delete(
    backend: DockerBackend,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    code: Path,
    logs: LogStore,
) -> None:
    (code / "idle.jl").write_text(
        'println("up ", ENV["JULIARUN_WORKER"], " of ", ENV["JULIARUN_NWORKERS"]); '
        "flush(stdout); sleep(600)\n"
    )
    job = JuliaParBatchWorkers(
        "pool", "/mnt/code/idle.jl", "code", nworkers=3, cpu="250m", memory="512Mi"
    )
    assert str(backend.submit(job, host("code", code))) == "created, 3 processes waiting"
    eventually(lambda: len(messages(logs, "pool")) == 3, timeout=120, what="3 workers up")
    assert sorted(messages(logs, "pool")) == [f"up pool-{i} of 3" for i in range(3)]
    assert sorted({line.worker for line in logs.query(LogQuery(job="pool"))}) == [
        "pool-0",
        "pool-1",
        "pool-2",
    ]
    status = until(backend, "pool", lambda s: str(s) == "running", "running")
    assert [w.id for w in status.workers] == ["pool-0", "pool-1", "pool-2"]
    running = containers(docker_client, docker_labels, **{JOB: "pool"})
    assert sorted(c.labels[WORKER] for c in running) == ["pool-0", "pool-1", "pool-2"]
    assert all(c.status == "running" for c in running)

    backend.scale("pool", 1)
    status = until(
        backend,
        "pool",
        lambda s: [w.state for w in s.workers[1:]] == ["removed", "removed"],
        "two workers removed",
    )
    assert str(status) == "running"
    assert [w.reason for w in status.workers[1:]] == ["scaled down", "scaled down"]
    [left] = containers(docker_client, docker_labels, **{JOB: "pool"})
    assert left.labels[WORKER] == "pool-0"
    assert [s.nworkers for s in backend.jobs() if isinstance(s, JuliaParBatchWorkers)] == [1]

    backend.scale("pool", 2)
    eventually(lambda: "up pool-1 of 2" in messages(logs, "pool"), timeout=120, what="pool-1")
    assert len(containers(docker_client, docker_labels, **{JOB: "pool"})) == 2

    started = time.monotonic()
    assert backend.delete("pool", force=True) is True
    assert time.monotonic() - started < 5  # the grace period (5 s) did not apply
    assert containers(docker_client, docker_labels) == []
    assert backend.jobs() == []


def test_graceful_delete_lets_the_worker_handle_sigterm(
    backend: DockerBackend,
    base_image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    logs: LogStore,
) -> None:
    script = "trap 'echo got TERM; exit 0' TERM; echo up; sleep 600 & wait"
    backend.submit(sh("polite", base_image, script), {})
    eventually(lambda: messages(logs, "polite") == ["up"], timeout=60, what="polite up")
    assert backend.delete("polite") is True
    assert messages(logs, "polite") == ["up", "got TERM"]
    assert containers(docker_client, docker_labels) == []


# -- failures ---------------------------------------------------------------------------------


def test_nonzero_exit_fails_with_the_worker_code_and_last_lines(
    backend: DockerBackend, base_image: str, logs: LogStore
) -> None:
    backend.submit(sh("fails", base_image, "echo one; echo two >&2; exit 3"), {})
    status = finish(backend, "fails")
    assert str(status) == "failed: worker fails-0 exit code 3"
    assert sorted(status.last_lines) == ["one", "two"]
    assert status.workers[0].exit_code == 3
    assert messages(logs, "fails", stream="stderr") == ["two"]
    assert messages(logs, "fails", stream="stdout") == ["one"]


def test_on_failure_restarts_until_the_worker_succeeds(
    backend: DockerBackend,
    base_image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    tmp_path: Path,
    logs: LogStore,
) -> None:
    state = tmp_path / "state"
    script = (
        "n=$(( $(cat /mnt/state/counter 2>/dev/null || echo 0) + 1 )); "
        'echo "$n" > /mnt/state/counter; '
        'echo "attempt $n restarts $JULIARUN_RESTARTS"; [ "$n" -ge 3 ]'
    )
    job = sh("flaky", base_image, script, storage="state", restart="OnFailure", backoff_limit=2)
    backend.submit(job, host("state", state))
    status = finish(backend, "flaky")
    assert str(status) == "succeeded"
    assert status.workers[0].restarts == 2
    assert messages(logs, "flaky") == [
        "attempt 1 restarts 0",
        "attempt 2 restarts 1",
        "attempt 3 restarts 2",
    ]
    # Each attempt replaced the previous attempt's container.
    [container] = containers(docker_client, docker_labels, **{JOB: "flaky"})
    assert container.labels[ATTEMPT] == "2"


def test_a_worker_over_its_memory_limit_is_oom_killed(
    backend: DockerBackend, base_image: str
) -> None:
    backend.submit(sh("hog", base_image, "head -c 200m /dev/zero | tail", memory="32Mi"), {})
    status = finish(backend, "hog")
    assert status.phase == "failed"
    assert status.reason == "worker hog-0 OOMKilled (exit code 137)"
    assert status.workers[0].exit_code == 137


def test_a_dead_supervisor_is_reported_and_delete_still_removes_its_containers(
    backend: DockerBackend,
    base_image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    backend.submit(sh("orphan", base_image, "exec sleep 600"), {})
    until(backend, "orphan", lambda s: str(s) == "running", "running")
    supervisor = backend._jobdir("orphan").read_state()["supervisor"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    eventually(lambda: not alive(supervisor), what="the supervisor to die")
    status = until(backend, "orphan", lambda s: s.done, "done")
    assert str(status) == (
        "failed: the job's supervisor exited unexpectedly; its workers were stopped"
    )
    # No worker runs on unwatched (issue 13): the status that found the supervisor dead
    # removed its containers.
    assert containers(docker_client, docker_labels, **{JOB: "orphan"}) == []
    assert backend.delete("orphan", force=True) is True
    assert containers(docker_client, docker_labels) == []


def test_container_creation_is_idempotent_and_never_takes_a_foreign_name(
    backend: DockerBackend,
    base_image: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
    tmp_path: Path,
) -> None:
    """A create that meets 409 for this very attempt is success; an earlier attempt's (or a
    deleted job's) container is replaced; a container juliarun does not manage is left alone."""
    job = sh("named", base_image, "true")
    plan = backend._plan(job, {})
    runtime = DockerRuntime({"runtime": plan.runtime, "uid": "uid-1"})
    launch = WorkerLaunch("named-0", 0, 0, {}, tmp_path / "metrics" / "named-0.lp")
    (tmp_path / "metrics").mkdir()
    try:
        options = runtime._options(launch)
        first = runtime._create(options, "0")
        assert runtime._create(options, "0").id == first.id  # 409, same attempt: success
        retried = runtime._create(runtime._options(replace(launch, restarts=1)), "1")
        assert retried.id != first.id and retried.labels[ATTEMPT] == "1"
        assert [c.id for c in containers(docker_client, docker_labels)] == [retried.id]

        retried.remove(force=True)
        foreign = docker_client.containers.create(
            base_image,
            ["true"],
            name=options["name"],
            labels={TEST_LABEL: docker_labels[TEST_LABEL]},
        )
        with pytest.raises(WorkerStartError, match="does not manage") as err:
            runtime._create(options, "0")
        assert f"docker rm -f {options['name']}" in str(err.value.hint)
        foreign.reload()  # still there
    finally:
        runtime.close()


# -- storage ----------------------------------------------------------------------------------


def test_ramdisk_and_git_storage_are_mounted_in_the_container(
    backend: DockerBackend, base_image: str, tmp_path: Path, logs: LogStore
) -> None:
    specs = {
        "scratch": StorageSpec(name="scratch", kind="ramdisk", size="16Mi"),
        "repo": StorageSpec(name="repo", kind="git", url=make_repo(tmp_path / "origin")),
    }
    first = {name: backend.provision_storage(spec) for name, spec in specs.items()}
    assert first == {name: backend.provision_storage(spec) for name, spec in specs.items()}
    assert first["repo"].startswith(f"juliarun-{backend.names.scope}-git-repo-")  # a volume
    script = (
        "grep ' /mnt/scratch ' /proc/mounts | cut -d' ' -f1,3; "
        "df -k /mnt/scratch | tail -1 | awk '{print $2}'; "
        "echo hi > /mnt/scratch/x && cat /mnt/scratch/x; "
        "cat /mnt/repo/data.txt; "
        "touch /mnt/repo/new 2>/dev/null || echo read-only; "
        'echo "$JULIARUN_STORAGE_SCRATCH $JULIARUN_STORAGE_REPO $(pwd)"'
    )
    backend.submit(sh("mounts", base_image, script, storage=["scratch", "repo"]), specs)
    assert str(finish(backend, "mounts")) == "succeeded"
    assert messages(logs, "mounts") == [
        "tmpfs tmpfs",
        "16384",
        "hi",
        "from git",
        "read-only",
        "/mnt/scratch /mnt/repo /mnt/scratch",
    ]


def test_git_storage_is_a_volume_per_commit_filled_once_and_refilled_when_incomplete(
    backend: DockerBackend,
    base_image: str,
    tmp_path: Path,
    logs: LogStore,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    origin = Path(make_repo(tmp_path / "origin"))
    first_commit = git(origin, "rev-parse", "HEAD")
    specs = {"repo": StorageSpec(name="repo", kind="git", url=str(origin), ref="main")}
    script = (
        "cat /mnt/repo/data.txt; "
        "stat -c '%U %a' /mnt/repo/data.txt; "
        "test -f /mnt/repo/.git/HEAD && echo has-git; "
        "cat /mnt/repo/.git/juliarun-complete; "
        "stat -c %Y /mnt/repo/.git/juliarun-complete; "
        "touch /mnt/repo/new 2>/dev/null || echo read-only; "
        "rm /mnt/repo/data.txt 2>/dev/null || echo still-read-only"
    )

    def run(job: str) -> list[str]:
        backend.submit(sh(job, base_image, script, storage=["repo"]), specs)
        assert str(finish(backend, job)) == "succeeded", messages(logs, job)
        return messages(logs, job)

    def volume_of(commit: str) -> dict[str, object]:
        name = f"juliarun-{backend.names.scope}-git-repo-{commit[:12]}"
        attrs: dict[str, object] = docker_client.volumes.get(name).attrs
        return attrs

    seen = run("first")
    assert seen[:4] == ["from git", "root 644", "has-git", first_commit]
    assert seen[5:] == ["read-only", "still-read-only"]
    volume = volume_of(first_commit)
    labels = volume["Labels"]
    assert isinstance(labels, dict)
    assert labels["juliarun.io/git-commit"] == first_commit
    assert labels["juliarun.io/storage"] == "repo"
    assert labels[SCOPE] == backend.names.scope and labels[CLUSTER] == backend.cluster
    assert labels[MANAGED_BY] == "juliarun"
    # Readable by any user, not only by root (what the job ran as).
    as_nobody = docker_client.containers.run(
        base_image,
        ["sh", "-c", "cat /r/data.txt && ls /r/.git/HEAD"],
        user="65534:65534",
        mounts=[Mount("/r", str(volume["Name"]), type="volume", read_only=True)],
        labels=docker_labels,
        remove=True,
    )
    assert as_nobody.decode().split() == ["from", "git", "/r/.git/HEAD"]
    # No helper container is left behind.
    assert containers(docker_client, docker_labels, **{"juliarun.io/helper": "git-fill"}) == []

    # Submitted again: the same volume, not filled again.
    again = run("again")
    assert again == seen
    assert volume_of(first_commit)["CreatedAt"] == volume["CreatedAt"]

    # A new commit on the ref: a new volume with it; the old one is kept.
    second_commit = commit(origin, "data.txt", "second\n")
    moved = run("moved")
    assert moved[0] == "second" and moved[3] == second_commit
    assert second_commit in str(volume_of(second_commit)["Labels"])
    assert volume_of(first_commit)["CreatedAt"] == volume["CreatedAt"]

    # A fill that was interrupted: part of the tree, no marker, its helper container left.
    third_commit = commit(origin, "data.txt", "third\n")
    name = f"juliarun-{backend.names.scope}-git-repo-{third_commit[:12]}"
    docker_client.volumes.create(name, labels=docker_labels)
    docker_client.containers.run(
        base_image,
        ["sh", "-c", "echo partial > /v/data.txt"],
        mounts=[Mount("/v", name, type="volume")],
        labels=docker_labels,
        remove=True,
    )
    docker_client.containers.create(
        base_image,
        ["true"],
        mounts=[Mount("/juliarun-fill", name, type="volume")],
        labels={**docker_labels, "juliarun.io/helper": "git-fill"},
    )
    created = volume_of(third_commit)["CreatedAt"]
    time.sleep(1.1)  # CreatedAt has whole seconds
    refilled = run("refilled")
    assert refilled[:4] == ["third", "root 644", "has-git", third_commit]
    assert volume_of(third_commit)["CreatedAt"] != created
    assert third_commit in str(volume_of(third_commit)["Labels"])
    assert containers(docker_client, docker_labels, **{"juliarun.io/helper": "git-fill"}) == []


def test_prune_storage_removes_replaced_git_volumes_that_no_container_uses(
    backend: DockerBackend,
    base_image: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    origin = Path(make_repo(tmp_path / "origin"))
    spec = StorageSpec(name="repo", kind="git", url=str(origin))
    first = backend.provision_storage(spec)
    commit(origin, "data.txt", "second\n")
    second = backend.provision_storage(spec)
    commit(origin, "data.txt", "third\n")
    newest = backend.provision_storage(spec)
    assert len({first, second, newest}) == 3
    # An exited (here: never started) container still refers to the second volume.
    holder = docker_client.containers.create(
        base_image, ["true"], mounts=[Mount("/r", second, type="volume")], labels=docker_labels
    )

    def exists(name: str) -> bool:
        return bool(docker_client.volumes.list(filters={"name": name}))

    assert backend.prune_storage() == [first]
    assert (exists(first), exists(second), exists(newest)) == (False, True, True)
    holder.remove()
    assert backend.prune_storage() == [second]
    assert backend.prune_storage() == []
    assert exists(newest)  # the current commit's volume always stays


def test_a_missing_git_ref_fails_naming_it_before_anything_is_created(
    backend: DockerBackend,
    base_image: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    specs = {
        "repo": StorageSpec(
            name="repo", kind="git", url=make_repo(tmp_path / "origin"), ref="no-such-ref"
        )
    }
    with pytest.raises(StorageError, match="git ref 'no-such-ref' not found"):
        backend.submit(sh("ghost", base_image, "true", storage=["repo"]), specs)
    selector = {"label": f"{TEST_LABEL}={docker_labels[TEST_LABEL]}"}
    assert docker_client.volumes.list(filters=selector) == []
    assert containers(docker_client, docker_labels) == []
    assert backend.jobs() == []

    # A script the commit does not have is refused too (its volume, being storage, is made).
    specs = {"repo": StorageSpec(name="repo", kind="git", url=str(tmp_path / "origin"))}
    with pytest.raises(SpecError) as err:
        backend.submit(JuliaBatch("ghost", "/mnt/repo/missing.jl", "repo"), specs)
    [(field, rule)] = err.value.errors
    assert field == "script" and "not in commit" in rule and "'repo'" in rule
    assert backend.jobs() == []
    assert containers(docker_client, docker_labels) == []


# -- bad input --------------------------------------------------------------------------------


def test_an_image_that_cannot_be_pulled_is_refused_before_anything_is_created(
    backend: DockerBackend,
    juliarun_home: Path,
    registry: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    missing = f"{registry}/juliarun/no-such-image:missing"
    with pytest.raises(SpecError) as err:
        backend.submit(Batch("ghost", command=["true"], image=missing), {})
    [(field, rule)] = err.value.errors
    assert field == "image"
    assert missing in rule and "cannot be pulled" in rule
    assert "build" in str(err.value.hint)

    default_missing = DockerBackend(juliarun_home, image=missing, labels=docker_labels)
    with pytest.raises(SpecError) as err:
        default_missing.submit(JuliaBatch("ghost", "/opt/x.jl"), {})
    assert err.value.errors[0][0] == "image"
    assert "JULIARUN_JULIA_IMAGE" in err.value.errors[0][1]
    default_missing.close()

    assert backend.jobs() == []
    assert not backend.jobs_dir.exists() or list(backend.jobs_dir.iterdir()) == []
    assert containers(docker_client, docker_labels) == []


def test_requests_the_engine_cannot_meet_are_refused_before_anything_is_created(
    backend: DockerBackend, base_image: str, docker_client: docker.DockerClient, code: Path
) -> None:
    cores = docker_client.info()["NCPU"]
    with pytest.raises(SpecError) as err:
        backend.submit(sh("huge", base_image, "true", cpu=str(cores + 1), gpu=1), {})
    fields = [field for field, _ in err.value.errors]
    assert fields == ["resources.cpu", "resources.gpu"]
    assert f"the engine has {cores} cpus" in err.value.errors[0][1]
    assert "has no GPU runtime" in err.value.errors[1][1]
    with pytest.raises(SpecError) as err:
        backend.submit(JuliaBatch("noscript", "/mnt/code/missing.jl", "code"), host("code", code))
    [(field, rule)] = err.value.errors
    assert field == "script" and str(code / "missing.jl") in rule
    assert backend.jobs() == []


# -- the DockerCluster block ------------------------------------------------------------------


@pytest.fixture
def saved_blocks(prefect_api_url: str) -> Iterator[list[tuple[type[Block], str]]]:
    """Blocks a test saves on the shared Prefect server, deleted afterwards (parents first)."""
    saved: list[tuple[type[Block], str]] = []
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield saved
        for block_type, name in reversed(saved):
            block_type.delete(name)


@pytest.mark.prefect_server
def test_a_saved_docker_cluster_block_runs_jobs(
    saved_blocks: list[tuple[type[Block], str]],
    juliarun_home: Path,
    julia_image: str,
    base_image: str,
    registry: str,
    docker_client: docker.DockerClient,
    docker_labels: dict[str, str],
) -> None:
    from juliarun.blocks import DockerCluster

    suffix = uuid.uuid4().hex[:8]
    host_block = DockerHost(base_url=os.environ["DOCKER_HOST"], timeout=30)
    host_block.save(f"engine-{suffix}")
    saved_blocks.append((DockerHost, f"engine-{suffix}"))
    creds = DockerRegistryCredentials(
        username="juliarun", password=SecretStr("not-logged"), registry_url=registry
    )
    creds.save(f"registry-{suffix}")
    saved_blocks.append((DockerRegistryCredentials, f"registry-{suffix}"))
    name = f"engine-{suffix}"
    DockerCluster(
        home=str(juliarun_home),
        docker_host=DockerHost.load(f"engine-{suffix}"),
        registry_credentials=DockerRegistryCredentials.load(f"registry-{suffix}"),
        image=julia_image,
        labels=docker_labels,
        kill_grace=1,
    ).save(name)
    saved_blocks.append((DockerCluster, name))

    with juliarun.init(name) as ctx:
        backend = ctx.backend
        assert isinstance(backend, DockerBackend)
        assert (backend.kind, backend.cluster) == ("docker", name)
        assert backend.engine.base_url == os.environ["DOCKER_HOST"]
        assert backend.engine.timeout == 30
        assert backend.registry_auth is not None
        assert backend.registry_auth.applies_to(julia_image)
        assert isinstance(backend.registry_auth.password, SecretStr)
        assert "not-logged" not in repr(backend.registry_auth)
        juliarun.submit(ctx, sh("hi", base_image, "echo hi from the block"))
        assert str(juliarun.wait(ctx, "hi", timeout=120)) == "succeeded"
        assert [line.message for line in juliarun.search(ctx, "block", job="hi")] == [
            "hi from the block"
        ]
        [container] = containers(docker_client, docker_labels, **{JOB: "hi"})
        assert container.labels[CLUSTER] == name
        assert juliarun.delete(ctx, "hi") is True

    with pytest.raises(ConfigError, match="client_kwargs"):
        DockerCluster(docker_host=DockerHost(client_kwargs={"tls": True})).backend()
