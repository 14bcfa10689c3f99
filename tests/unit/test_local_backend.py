"""The local backend on real processes: each job a detached supervisor running one process group
per worker, its state shared through files and its output through a real SQLite log store."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from juliarun.backends.base import Backend, DiagnosisCategory, JobStatus, wait_for_job
from juliarun.backends.local import LocalBackend
from juliarun.errors import BackendError, JobExistsError, JobNotFoundError, SpecError
from juliarun.logs import LogQuery, LogStore, open_log_store
from juliarun.specs import Batch, JuliaBatch, JuliaParBatchWorkers, StorageSpec
from tests.unit.local_jobs import alive, eventually, group_alive, processes_of


@pytest.fixture
def backend(local_home: Path) -> LocalBackend:
    return LocalBackend(local_home, kill_grace=5)


@pytest.fixture
def logs(backend: LocalBackend) -> Iterator[LogStore]:
    store = open_log_store(backend.log_store)
    yield store
    store.close()


def sh(name: str, script: str, *args: str, **fields: object) -> Batch:
    """A Batch running ``script`` under bash, with ``args`` as $1, $2, ..."""
    return Batch(name, command=["bash", "-c", script, "bash", *args], **fields)


def finish(backend: LocalBackend, name: str, timeout: float = 20) -> JobStatus:
    return wait_for_job(backend, name, timeout=timeout, poll_interval=0.02)


def until(
    backend: LocalBackend, name: str, ok: Callable[[JobStatus], bool], what: str
) -> JobStatus:
    """Poll the status of ``name`` until ``ok`` holds for it; returns that status."""

    def check() -> JobStatus | None:
        status = backend.status(name)
        return status if ok(status) else None

    return eventually(check, what=f"{name}: {what}")


def running(backend: LocalBackend, name: str) -> JobStatus:
    """Wait until every desired worker of ``name`` runs; returns that status."""
    return until(backend, name, lambda s: str(s) == "running", "running")


def messages(logs: LogStore, job: str) -> list[str]:
    return [line.message for line in logs.query(LogQuery(job=job))]


def test_is_a_backend(backend: LocalBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.kind == "local"


# -- lifecycle --------------------------------------------------------------------------------


def test_batch_goes_created_running_succeeded(backend: LocalBackend, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = sh("life", 'echo started; while [ ! -e "$1" ]; do sleep 0.02; done; echo done', str(gate))

    created = backend.submit(job, {})
    assert str(created) == "created, 1 processes waiting"
    assert created.phase == "created" and not created.done

    status = running(backend, "life")
    [worker] = status.workers
    assert (worker.id, worker.state, worker.restarts) == ("life-0", "running", 0)
    assert worker.pid is not None and alive(worker.pid)

    gate.touch()
    final = finish(backend, "life")
    assert str(final) == "succeeded" and final.done
    [worker] = final.workers
    assert (worker.state, worker.exit_code, worker.pid) == ("succeeded", 0, None)
    assert worker.duration is not None and worker.duration > 0
    assert final.finished_at is not None
    assert [s.name for s in backend.jobs()] == ["life"]
    backend.delete("life")


def test_all_output_is_stored_by_the_time_the_job_reads_done(
    backend: LocalBackend, logs: LogStore
) -> None:
    """The supervisor flushes its log writer before it publishes the final state."""
    for i in range(2):
        name = f"burst-{i}"
        backend.submit(sh(name, "seq 1 5000"), {})
        assert str(finish(backend, name)) == "succeeded"
        assert messages(logs, name) == [str(n) for n in range(1, 5001)]
        backend.delete(name)


# -- failures ---------------------------------------------------------------------------------


def test_nonzero_exit_fails_with_the_worker_code_and_last_lines(backend: LocalBackend) -> None:
    backend.submit(sh("fails", "echo one; echo two >&2; exit 3"), {})
    status = finish(backend, "fails")
    assert status.phase == "failed"
    assert str(status) == "failed: worker fails-0 exit code 3"
    assert sorted(status.last_lines) == ["one", "two"]
    assert status.hint is not None and "juliarun tail fails" in status.hint
    assert status.workers[0].exit_code == 3
    assert "fails-0: failed exit=3 (exit code 3)" in status.describe()
    assert status.category == DiagnosisCategory.EXIT_CODE
    backend.delete("fails")


def test_on_failure_restarts_until_the_worker_succeeds(
    backend: LocalBackend, logs: LogStore, tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    script = (
        'n=$(( $(cat "$1" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$1"; '
        'echo "attempt $n restarts $JULIARUN_RESTARTS"; [ "$n" -ge 3 ]'
    )
    job = sh("flaky", script, str(counter), restart="OnFailure", backoff_limit=2)
    backend.submit(job, {})
    status = finish(backend, "flaky")
    assert str(status) == "succeeded"
    assert status.workers[0].restarts == 2
    assert counter.read_text().strip() == "3"
    assert messages(logs, "flaky") == [
        "attempt 1 restarts 0",
        "attempt 2 restarts 1",
        "attempt 3 restarts 2",
    ]
    backend.delete("flaky")


def test_exhausted_backoff_fails_after_the_restarts(backend: LocalBackend) -> None:
    backend.submit(sh("doomed", "echo trying; exit 1", restart="OnFailure", backoff_limit=2), {})
    status = finish(backend, "doomed")
    assert str(status) == "failed: worker doomed-0 exit code 1 after 2 restarts"
    assert status.workers[0].restarts == 2
    assert status.last_lines[-1] == "trying"
    assert status.category == DiagnosisCategory.EXIT_CODE
    backend.delete("doomed")


def test_a_command_that_does_not_exist_fails_with_the_reason(backend: LocalBackend) -> None:
    backend.submit(Batch("nocmd", command=["no-such-command-juliarun"]), {})
    status = finish(backend, "nocmd")
    assert status.phase == "failed"
    assert status.reason is not None
    assert "cannot start no-such-command-juliarun: No such file or directory" in status.reason
    assert status.reason.startswith("worker nocmd-0 ")
    assert status.category == DiagnosisCategory.WORKER_START_FAILED
    backend.delete("nocmd")


def test_a_killed_worker_fails_the_job_with_the_signal(backend: LocalBackend) -> None:
    backend.submit(sh("victim", "exec sleep 600"), {})
    pid = running(backend, "victim").workers[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    status = finish(backend, "victim")
    assert str(status) == "failed: worker victim-0 killed by signal 9"
    assert status.workers[0].exit_code == -9
    assert status.category == DiagnosisCategory.KILLED_BY_SIGNAL
    backend.delete("victim")


def test_a_supervisor_that_dies_is_reported(backend: LocalBackend) -> None:
    backend.submit(sh("orphan", "exec sleep 600"), {})
    status = running(backend, "orphan")
    pid = status.workers[0].pid
    supervisor = backend._jobdir("orphan").read_state()["supervisor"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    status = until(backend, "orphan", lambda s: s.done, "done")
    assert str(status) == (
        "failed: the job's supervisor exited unexpectedly; its workers were stopped"
    )
    assert status.hint is not None and "supervisor.log" in status.hint
    assert [(w.state, w.pid) for w in status.workers] == [("failed", None)]
    assert status.category == DiagnosisCategory.SUPERVISOR_CRASHED
    # Read again from its files (written final): still the same diagnosis.
    assert backend.status("orphan").category == DiagnosisCategory.SUPERVISOR_CRASHED
    backend.delete("orphan", force=True)
    assert pid is not None
    eventually(lambda: not alive(pid), what="the orphaned worker to be killed")


def test_a_job_that_ends_as_its_supervisor_exits_is_not_taken_for_a_crash(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor writes the final state, then exits; a status read that saw the state
    before and the supervisor gone after must read the state again."""
    import juliarun.backends.supervised.backend as supervised

    backend.submit(sh("ending", "exit 3"), {})
    final = finish(backend, "ending")
    assert str(final) == "failed: worker ending-0 exit code 3"
    reads = iter([dataclasses.replace(final, phase="running", reason=None), final])
    with monkeypatch.context() as patch:
        patch.setattr(supervised, "status_from_files", lambda jobdir: next(reads))
        patch.setattr(LocalBackend, "_supervisor_alive", staticmethod(lambda sup: False))
        assert str(backend.status("ending")) == "failed: worker ending-0 exit code 3"
    backend.delete("ending")


def test_what_a_worker_leaves_running_ends_with_it(backend: LocalBackend, tmp_path: Path) -> None:
    """A background process of a worker holds its output open; it ends when the worker does."""
    pidfile = tmp_path / "bg.pid"
    backend.submit(sh("leaves", 'sleep 600 & echo $! > "$1"; echo bye', str(pidfile)), {})
    status = finish(backend, "leaves", timeout=8)
    assert str(status) == "succeeded"
    background = int(pidfile.read_text())
    eventually(lambda: not alive(background), timeout=5, what="the background sleep to end")
    backend.delete("leaves")


# -- delete -----------------------------------------------------------------------------------


def test_delete_stops_a_running_job_and_forgets_it(
    backend: LocalBackend, logs: LogStore, local_home: Path
) -> None:
    backend.submit(sh("sleeper", "echo napping; exec sleep 600"), {})
    status = running(backend, "sleeper")
    pid = status.workers[0].pid
    supervisor = backend._jobdir("sleeper").read_state()["supervisor"]["pid"]
    assert pid is not None and group_alive(pid)

    assert backend.delete("sleeper") is True
    assert not alive(pid) and not group_alive(pid)
    assert not alive(supervisor)
    assert backend.jobs() == []
    with pytest.raises(JobNotFoundError):
        backend.status("sleeper")
    assert not (local_home / "clusters" / "local" / "jobs" / "sleeper").exists()
    assert messages(logs, "sleeper") == ["napping"]  # the output outlives the job


def test_delete_is_graceful_and_force_is_immediate(
    local_home: Path, logs: LogStore, tmp_path: Path
) -> None:
    """A graceful delete lets the worker's SIGTERM handler run; force kills it at once (a
    30 s grace period would otherwise show)."""
    backend = LocalBackend(local_home, kill_grace=30)
    script = "trap 'echo got TERM; exit 0' TERM; echo up; sleep 600 & wait"
    for name in ("polite", "forced"):
        backend.submit(sh(name, script), {})
    for name in ("polite", "forced"):
        eventually(lambda n=name: "up" in messages(logs, n), what=f"{name} to trap TERM")
    pids = {name: backend.status(name).workers[0].pid for name in ("polite", "forced")}

    assert backend.delete("polite") is True
    assert messages(logs, "polite") == ["up", "got TERM"]

    started = time.monotonic()
    assert backend.delete("forced", force=True) is True
    assert time.monotonic() - started < 30
    assert messages(logs, "forced") == ["up"]
    for pid in pids.values():
        assert pid is not None and not group_alive(pid)


def test_delete_right_after_submit_stops_the_starting_supervisor(
    backend: LocalBackend, local_home: Path
) -> None:
    """Before its supervisor has written any state, a job can still be deleted: nothing of it
    keeps running (the supervisor would otherwise go on to start its workers)."""
    backend.submit(sh("hasty", "exec sleep 600"), {})
    assert backend.delete("hasty") is True
    assert processes_of(local_home) == []
    assert backend.jobs() == []


def test_unknown_jobs_raise_not_found(backend: LocalBackend) -> None:
    with pytest.raises(JobNotFoundError) as err:
        backend.delete("ghost")
    assert err.value.name == "ghost" and err.value.cluster == "local"
    assert "juliarun list" in str(err.value)
    with pytest.raises(JobNotFoundError):
        backend.status("ghost")
    with pytest.raises(JobNotFoundError):
        backend.scale("ghost", 2)


# -- scale ------------------------------------------------------------------------------------


@pytest.mark.julia
def test_scale_workers_up_and_down(
    local_home: Path, julia: str, tmp_path: Path, logs: LogStore
) -> None:
    backend = LocalBackend(local_home, julia=julia, kill_grace=5)
    code = tmp_path / "code"
    code.mkdir()
    (code / "idle.jl").write_text(
        'println("up ", ENV["JULIARUN_WORKER"]); flush(stdout); sleep(600)\n'
    )
    storage = {"code": StorageSpec(name="code", kind="host", path=str(code))}
    job = JuliaParBatchWorkers("pool", "/mnt/code/idle.jl", "code", nworkers=1)
    assert str(backend.submit(job, storage)) == "created, 1 processes waiting"
    running(backend, "pool")

    up = backend.scale("pool", 3)
    assert up.desired_workers == 3
    status = running(backend, "pool")
    assert [w.id for w in status.workers] == ["pool-0", "pool-1", "pool-2"]
    removed = [w.pid for w in status.workers[1:]]
    # Scale down once every worker is up: a SIGTERM racing Julia's startup can take the whole
    # grace period.
    eventually(lambda: len(messages(logs, "pool")) == 3, what="3 workers up")
    assert [s.nworkers for s in backend.jobs() if isinstance(s, JuliaParBatchWorkers)] == [3]

    backend.scale("pool", 1)
    status = until(
        backend,
        "pool",
        lambda s: [w.state for w in s.workers[1:]] == ["removed", "removed"],
        "two workers removed",
    )
    assert str(status) == "running"
    assert [w.reason for w in status.workers[1:]] == ["scaled down", "scaled down"]
    assert [s.nworkers for s in backend.jobs() if isinstance(s, JuliaParBatchWorkers)] == [1]
    assert sum(1 for w in status.workers if w.state == "running") == 1
    assert all(pid is not None and not group_alive(pid) for pid in removed)
    assert status.workers[0].pid is not None and alive(status.workers[0].pid)
    backend.delete("pool", force=True)


def test_only_worker_pools_scale(backend: LocalBackend, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    backend.submit(sh("single", 'while [ ! -e "$1" ]; do sleep 0.02; done', str(gate)), {})
    with pytest.raises(SpecError) as err:
        backend.scale("single", 2)
    assert err.value.errors == [("nworkers", "only JuliaParBatchWorkers jobs can be scaled")]
    gate.touch()
    finish(backend, "single")
    backend.delete("single")


@pytest.mark.julia
def test_scale_bounds_and_finished_jobs(local_home: Path, julia: str, tmp_path: Path) -> None:
    backend = LocalBackend(local_home, julia=julia, kill_grace=5)
    code = tmp_path / "code"
    code.mkdir()
    (code / "quick.jl").write_text("exit(0)\n")
    storage = {"code": StorageSpec(name="code", kind="host", path=str(code))}
    backend.submit(JuliaParBatchWorkers("brief", "/mnt/code/quick.jl", "code"), storage)
    with pytest.raises(SpecError) as err:
        backend.scale("brief", -1)
    assert err.value.errors[0][0] == "nworkers"
    assert str(finish(backend, "brief")) == "succeeded"
    with pytest.raises(BackendError, match="already succeeded"):
        backend.scale("brief", 2)
    backend.delete("brief")


# -- submit -----------------------------------------------------------------------------------


def test_submitting_the_same_spec_again_is_a_no_op(backend: LocalBackend, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = sh("twice", 'while [ ! -e "$1" ]; do sleep 0.02; done', str(gate))
    backend.submit(job, {})
    running(backend, "twice")
    again = backend.submit(sh("twice", 'while [ ! -e "$1" ]; do sleep 0.02; done', str(gate)), {})
    assert again.name == "twice" and not again.done
    assert [s.name for s in backend.jobs()] == ["twice"]

    with pytest.raises(JobExistsError) as err:
        backend.submit(sh("twice", "echo something else"), {})
    assert err.value.name == "twice"
    assert "juliarun delete twice" in str(err.value)
    gate.touch()
    assert str(finish(backend, "twice")) == "succeeded"
    assert len(backend.status("twice").workers) == 1  # it ran once
    backend.delete("twice")


def test_a_job_larger_than_the_machine_is_refused_before_anything_is_created(
    backend: LocalBackend,
) -> None:
    cores = os.cpu_count() or 1
    with pytest.raises(SpecError) as err:
        backend.submit(sh("huge", "true", cpu=str(cores + 1), memory="1Ei", gpu=1), {})
    fields = [field for field, _ in err.value.errors]
    assert fields == ["resources.cpu", "resources.memory", "resources.gpu"]
    assert f"this machine has {cores} cores" in err.value.errors[0][1]
    assert backend.jobs() == []
    assert not backend.jobs_dir.exists() or list(backend.jobs_dir.iterdir()) == []


@pytest.mark.julia
def test_a_missing_script_is_refused_before_anything_is_created(
    local_home: Path, julia: str, tmp_path: Path
) -> None:
    backend = LocalBackend(local_home, julia=julia)
    data = tmp_path / "data"
    storage = {"data": StorageSpec(name="data", kind="host", path=str(data))}
    with pytest.raises(SpecError) as err:
        backend.submit(JuliaBatch("noscript", "/mnt/data/missing.jl", "data"), storage)
    [(field, rule)] = err.value.errors
    assert field == "script"
    assert str(data / "missing.jl") in rule
    assert backend.jobs() == []
    assert not backend.jobs_dir.exists() or list(backend.jobs_dir.iterdir()) == []


def test_julia_jobs_need_the_julia_executable(local_home: Path) -> None:
    backend = LocalBackend(local_home, julia="no-such-julia")
    with pytest.raises(BackendError, match="'no-such-julia' not found"):
        backend.submit(JuliaBatch("nojulia", "/tmp/x.jl"), {})
    assert backend.jobs() == []


def test_storage_must_be_resolved_before_submit(backend: LocalBackend) -> None:
    with pytest.raises(BackendError, match="storage 'data' was not resolved"):
        backend.submit(sh("unresolved", "true", storage=["data"]), {})
    assert backend.jobs() == []


def test_the_worker_limit_is_enforced(local_home: Path) -> None:
    backend = LocalBackend(local_home, max_workers=1)
    backend.submit(sh("first", "exec sleep 600"), {})
    running(backend, "first")
    with pytest.raises(BackendError, match="at most 1 workers"):
        backend.submit(sh("second", "true"), {})
    assert [s.name for s in backend.jobs()] == ["first"]
    backend.delete("first", force=True)
