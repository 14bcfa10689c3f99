"""Issue 13 on the local backend: what a job can see (environment, store configs), job names as
paths, file modes, RAM-disk directories, workers outliving their supervisor, and odd input at
the command line getting one clear line."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from juliarun.backends.base import wait_for_job
from juliarun.backends.local import LocalBackend
from juliarun.backends.local import storage as local_storage
from juliarun.cli import app
from juliarun.errors import JobNotFoundError, StorageError
from juliarun.logs import LogQuery, open_log_store
from juliarun.specs import Batch, StorageSpec
from juliarun.storage import StorageCatalog
from tests.unit.local_jobs import alive, eventually, group_alive

runner = CliRunner()


@pytest.fixture
def backend(local_home: Path) -> Iterator[LocalBackend]:
    yield LocalBackend(local_home, kill_grace=2)


def output(backend: LocalBackend, job: str) -> list[str]:
    with open_log_store(backend.log_store) as logs:
        return [x.message for x in logs.query(LogQuery(job=job))]


def run_job(backend: LocalBackend, job: Batch) -> list[str]:
    backend.submit(job, {})
    status = wait_for_job(backend, job.name, timeout=30, poll_interval=0.05)
    assert status.phase == "succeeded", status
    return output(backend, job.name)


# -- what a job sees ------------------------------------------------------------------------


def test_workers_get_an_allow_listed_environment(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JULIARUN_INFLUX_TOKEN", "influx-token-from-the-submitter")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-from-the-submitter")
    monkeypatch.setenv("LC_TIME", "C")
    lines = run_job(backend, Batch("envy", command=["env"], env={"MINE": "1"}))
    names = {line.split("=", 1)[0] for line in lines}
    assert not [x for x in lines if "from-the-submitter" in x]
    assert {"PATH", "HOME", "LC_TIME", "MINE", "JULIARUN_JOB", "JULIARUN_METRICS_FILE"} <= names
    assert names - {"PATH", "HOME", "LC_TIME", "MINE", "PWD", "SHLVL", "_"} <= {
        n for n in names if n.startswith("JULIARUN_")
    } | {"USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "SHELL"}


def test_store_configs_are_in_no_file_of_the_job(backend: LocalBackend) -> None:
    lines = run_job(
        backend,
        Batch(
            "nosy", command=["bash", "-c", 'cat "$(dirname "$JULIARUN_METRICS_FILE")/../job.json"']
        ),
    )
    job = json.loads("\n".join(lines))
    assert "log_store" not in job and "metric_store" not in job
    assert backend.log_store["path"] not in "\n".join(lines)


# -- job names are not paths ----------------------------------------------------------------


@pytest.mark.parametrize("form", ["absolute", "relative", "dotdot"])
def test_a_job_name_that_is_not_a_label_names_no_job(
    backend: LocalBackend, tmp_path: Path, form: str
) -> None:
    """A directory outside the jobs holding a job's files is never taken for a job, however
    its path is given."""
    backend.jobs_dir.mkdir(parents=True)
    crafted = backend.jobs_dir.parent if form == "dotdot" else tmp_path / "crafted"
    crafted.mkdir(exist_ok=True)
    (crafted / "job.json").write_text(json.dumps({"spec": {"kind": "JuliaParBatchWorkers"}}))
    (crafted / "control.json").write_text('{"workers": 1}')
    name = {
        "absolute": str(crafted),
        "relative": os.path.relpath(crafted, backend.jobs_dir),
        "dotdot": "..",
    }[form]
    for call in (
        lambda: backend.status(name),
        lambda: backend.scale(name, 7),
        lambda: backend.delete(name, force=True),
    ):
        with pytest.raises(JobNotFoundError):
            call()
    assert (crafted / "control.json").read_text() == '{"workers": 1}'
    assert backend.jobs_dir.is_dir()


def test_delete_of_a_path_never_signals_what_a_crafted_state_names(
    backend: LocalBackend, tmp_path: Path
) -> None:
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        crafted = tmp_path / "crafted"
        crafted.mkdir()
        created = psutil.Process(victim.pid).create_time()
        (crafted / "job.json").write_text(json.dumps({"spec": {"kind": "Batch"}}))
        (crafted / "state.json").write_text(
            json.dumps({"supervisor": {"pid": victim.pid, "create_time": created}, "workers": []})
        )
        code = runner.invoke(app, ["delete", str(crafted)]).exit_code
        with pytest.raises(JobNotFoundError):
            backend.delete(os.path.relpath(crafted, backend.jobs_dir))
        with pytest.raises(JobNotFoundError):
            backend.scale(str(crafted), 7)
        assert code == 1 and alive(victim.pid)
        assert sorted(p.name for p in crafted.iterdir()) == ["job.json", "state.json"]
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize(
    "args", [["scale", "/tmp/x", "7"], ["delete", "../x"], ["tail", "a/b"], ["status", "."]]
)
def test_cli_job_arguments_are_labels(local_home: Path, args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        f"error: invalid arguments: job: must be a job name (a DNS-1123 label), got {args[1]!r}"
    )
    assert not (local_home / "clusters").exists()


# -- file modes -----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_and_every_file_of_a_job_are_private(
    backend: LocalBackend, local_home: Path, tmp_path: Path
) -> None:
    local_home.mkdir(mode=0o755)
    os.chmod(local_home, 0o755)
    StorageCatalog(local_home / "storage.json").define(
        StorageSpec(name="data", kind="host", path=str(tmp_path / "d"))
    )
    run_job(
        backend,
        Batch("modes", command=["bash", "-c", 'echo "m value=1" >> "$JULIARUN_METRICS_FILE"']),
    )
    jobdir = backend.jobs_dir / "modes"
    assert mode(local_home) == 0o700
    for path in (
        local_home / "logs.db",
        local_home / "metrics.db",
        local_home / "storage.json",
        jobdir / "job.json",
        jobdir / "supervisor.log",
        jobdir / "metrics" / "modes-0.lp",
    ):
        assert mode(path) == 0o600, path
    assert mode(jobdir) == 0o700 and mode(jobdir / "metrics") == 0o700
    with open_log_store(backend.log_store):  # SQLite gives -wal and -shm the database's mode
        sqlite_files = [p for p in local_home.iterdir() if p.name.endswith(("-wal", "-shm"))]
        assert sqlite_files and all(mode(p) == 0o600 for p in sqlite_files), sqlite_files


def test_ramdisk_root_is_unguessable_and_links_or_foreign_owners_are_refused(
    tmp_path: Path,
) -> None:
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    spec = StorageSpec(name="scratch", kind="ramdisk")
    path = local_storage.provision(spec, home_a)
    try:
        root = path.parent
        assert root.parent == Path("/dev/shm") and root.name.startswith(f"juliarun-{os.getuid()}-")
        assert (root.name.rsplit("-", 1)[1]) == (home_a / "ramdisk.id").read_text()
        assert local_storage.provision(spec, home_a) == path  # idempotent
        assert mode(root) == 0o700 and mode(path) == 0o700
        other = local_storage.ram_root(home_b)
        assert other != root  # not derived from the home's path
        # A link planted where a RAM disk goes is refused, not followed.
        target = tmp_path / "target"
        target.mkdir()
        (root / "planted").symlink_to(target)
        with pytest.raises(StorageError, match="is not a directory of this user"):
            local_storage.provision(StorageSpec(name="planted", kind="ramdisk"), home_a)
        # So is a directory of another user.
        (root / "foreign").mkdir()
        os.chown(root / "foreign", os.getuid() + 4242, -1)
        with pytest.raises(StorageError, match="is not a directory of this user"):
            local_storage.provision(StorageSpec(name="foreign", kind="ramdisk"), home_a)
    finally:
        import shutil

        shutil.rmtree(path.parent, ignore_errors=True)


# -- git urls are never options -------------------------------------------------------------


def test_a_git_url_starting_with_a_dash_reaches_git_as_a_url(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # Built without validation (the spec refuses it: test_hardening_specs.py): the git call
    # itself must not take it for an option either.
    spec = StorageSpec.model_construct(
        name="code", kind="git", url=f"--upload-pack=touch {marker};true", ref=None
    )
    with pytest.raises(StorageError, match="git clone") as info:
        local_storage.provision(spec, tmp_path / "home")
    # git took it for the repository (after "--"), not for an option
    assert "repository '--upload-pack=touch" in info.value.message
    assert not marker.exists()


# -- a killed supervisor --------------------------------------------------------------------


def test_workers_die_with_their_supervisor(backend: LocalBackend) -> None:
    backend.submit(Batch("orphan", command=["bash", "-c", "sleep 600 & sleep 600; wait"]), {})
    status = eventually(
        lambda: (s := backend.status("orphan")).workers and s.workers[0].pid and s,
        what="the worker to run",
    )
    worker = status.workers[0].pid
    assert worker is not None
    supervisor = backend._jobdir("orphan").read_launch()["pid"]
    os.kill(supervisor, signal.SIGKILL)
    # The worker's main process goes by itself (no status, no delete needed)...
    eventually(lambda: not alive(worker), what="the worker to die with its supervisor")
    # ...and the first status read stops whatever it left in its group, saying so.
    status = backend.status("orphan")
    assert str(status) == (
        "failed: the job's supervisor exited unexpectedly; its workers were stopped"
    )
    eventually(lambda: not group_alive(worker), what="the worker's group to be stopped")
    backend.delete("orphan", force=True)


def test_a_dead_supervisors_worker_pid_now_another_process_is_not_signalled(
    backend: LocalBackend,
) -> None:
    """Pids wrap (at 32768 on this machine): by the time a status read finds the supervisor
    dead, the pid its state gives a worker may be another process's, here a session leader
    like any other job's supervisor. That process is left alone."""
    backend.submit(Batch("reused", command=["sleep", "600"]), {})
    status = eventually(
        lambda: (s := backend.status("reused")).workers and s.workers[0].pid and s,
        what="the worker to run",
    )
    worker = status.workers[0].pid
    jobdir = backend._jobdir("reused")
    os.kill(jobdir.read_launch()["pid"], signal.SIGKILL)
    eventually(lambda: worker is not None and not group_alive(worker), what="the worker to die")
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state_file = jobdir.path / "state.json"
        state = json.loads(state_file.read_text())
        state["workers"][0]["pid"] = other.pid  # what a wrapped pid looks like
        state_file.write_text(json.dumps(state))
        assert str(backend.status("reused")) == (
            "failed: the job's supervisor exited unexpectedly; its workers were stopped"
        )
        assert other.poll() is None and alive(other.pid)
    finally:
        other.kill()
        other.wait()
    backend.delete("reused", force=True)


# -- odd input, one line --------------------------------------------------------------------


def test_one_broken_job_directory_does_not_break_list(
    backend: LocalBackend, local_home: Path
) -> None:
    run_job(backend, Batch("fine", command=["true"]))
    for name, text in (("broken", "{"), ("empty", "{}"), ("badspec", '{"spec": {"kind": 3}}')):
        (backend.jobs_dir / name).mkdir()
        (backend.jobs_dir / name / "job.json").write_text(text)
    (backend.jobs_dir / "fine" / "state.json").write_bytes(b"\xff[")
    assert [j.name for j in backend.jobs()] == ["fine"]
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and "fine" in result.output, result.output
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0 and "Components" in result.output, result.output
    run_job(backend, Batch("after", command=["true"]))


def test_a_corrupt_storage_catalog_is_one_line(local_home: Path) -> None:
    local_home.mkdir()
    (local_home / "storage.json").write_bytes(b"\xff{not json")
    result = runner.invoke(app, ["storage", "list"])
    assert result.exit_code == 1
    first = result.output.splitlines()[0]
    assert first.startswith(f"error: the storage catalog {local_home / 'storage.json'} ")
    (local_home / "storage.json").write_text("[1, 2]")
    result = runner.invoke(app, ["storage", "list"])
    assert result.output.splitlines()[0] == (
        f"error: the storage catalog {local_home / 'storage.json'} "
        "is not a mapping of storage specs"
    )


def test_terminal_escapes_from_a_job_are_not_printed_raw(
    backend: LocalBackend, local_home: Path
) -> None:
    run_job(backend, Batch("escapes", command=["printf", "a\\033]0;title\\007\\033[2Jb\\n"]))
    for args in (["tail", "escapes"], ["logs", "search", "title"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert "a\\x1b]0;title\\x07\\x1b[2Jb" in result.output


def test_the_supervisor_takes_no_configs_but_from_submit(local_home: Path) -> None:
    """A supervisor started by hand (no store configs on its stdin) refuses to run."""
    jobdir = local_home / "j"
    jobdir.mkdir(parents=True)
    (jobdir / "job.json").write_text(json.dumps({"spec": {"kind": "Batch"}, "runtime": {}}))
    proc = subprocess.run(
        [sys.executable, "-m", "juliarun.backends.supervised.supervisor", str(jobdir)],
        stdin=subprocess.DEVNULL,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "the supervisor got no store configs on its stdin" in proc.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("kind: Batch\nname: caf\xe9\ncommand: [echo]\n".encode("latin-1"), "is not UTF-8 text"),
        (b"kind: Batch\nname: a\nname: b\ncommand: [echo]\n", "key 'name' is given twice"),
        (b"kind: Batch\nmemory: " + b"1" * 5000 + b"\n", "an integer too long to be a number"),
        (b"kind: Batch\ncommand: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests deeper than 64"),
        (b"kind: {JuliaBatch: 1}\nname: a\n", "kind: must be one of Batch, JuliaBatch"),
        (b"kind: [Batch]\nname: a\n", "kind: must be one of Batch, JuliaBatch"),
        (b'kind: Batch\nname: a\ncommand: [echo]\n"\\e[31mx": 1\n', "\\x1b[31mx: unknown field"),
        (b"- a\n- b\n", "(spec): must be a mapping of fields"),
    ],
)
def test_odd_spec_files_are_one_clear_line(
    local_home: Path, tmp_path: Path, content: bytes, says: str
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_bytes(content)
    result = runner.invoke(app, ["submit", str(spec)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    assert (
        len(lines) == 2 and lines[0].startswith("error: invalid ") and lines[1].startswith("hint:")
    )
    assert says in lines[0], lines[0]
    assert "\x1b" not in result.output
    assert not (local_home / "clusters").exists()


def test_utf16_spec_files_are_read(local_home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_bytes("kind: Batch\nname: wide\ncommand: [echo, h\u00e9]\n".encode("utf-16"))
    result = runner.invoke(app, ["submit", str(spec), "--wait"])
    assert result.exit_code == 0, result.output
    assert "wide: succeeded" in result.output and ", wide-0, h\u00e9" in result.output
    LocalBackend(local_home).delete("wide")


def test_a_fresh_home_is_private_from_the_first_command(local_home: Path) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert mode(local_home) == 0o700
    assert mode(local_home / "logs.db") == 0o600 and mode(local_home / "metrics.db") == 0o600
