"""The seed's session API (init / submit / status / list / tail / delete, plus wait, scale,
metrics, search and define_storage) on the embedded local default: real processes, real
SQLite stores, one private JULIARUN_HOME per test."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import juliarun
from juliarun.backends.base import ClusterStatus, JobStatus
from juliarun.errors import (
    JobExistsError,
    JobNotFoundError,
    JobTimeoutError,
    JuliaRunError,
    SpecError,
    StorageNotFoundError,
)
from juliarun.logs import LogQuery
from tests.unit.local_jobs import alive, eventually

TAIL_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00, (?P<worker>[a-z0-9-]+), (?P<msg>.*)$"
)


@pytest.fixture
def ctx(local_home: Path) -> Iterator[juliarun.Context]:
    with juliarun.init() as context:
        yield context


@pytest.fixture
def jctx(
    local_home: Path, julia: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[juliarun.Context]:
    """A context whose backend runs the julia found on this machine."""
    monkeypatch.setenv("JULIARUN_JULIA", julia)
    with juliarun.init() as context:
        yield context


def sh(name: str, script: str, *args: str, **fields: object) -> juliarun.Batch:
    return juliarun.Batch(name, command=["bash", "-c", script, "bash", *args], **fields)


def tail_text(ctx: juliarun.Context, job: str, **kwargs: object) -> list[str]:
    buf = io.StringIO()
    printed = juliarun.tail(ctx, job, out=buf, **kwargs)  # type: ignore[arg-type]
    lines = buf.getvalue().splitlines()
    assert printed == len(lines)
    return lines


def parsed(lines: list[str]) -> list[tuple[str, str]]:
    """``(worker, message)`` of tail lines, checking each has the seed's format."""
    out = []
    for line in lines:
        match = TAIL_LINE.match(line)
        assert match, f"not `timestamp, worker-id, line`: {line!r}"
        out.append((match["worker"], match["msg"]))
    return out


def code_storage(ctx: juliarun.Context, tmp_path: Path, **scripts: str) -> Path:
    """Define host storage ``code`` holding ``<name>.jl`` for each script given."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (code / f"{name}.jl").write_text(textwrap.dedent(text))
    juliarun.define_storage(ctx, name="code", kind="host", path=str(code))
    return code


# -- submit, status, wait, tail ---------------------------------------------------------------


def test_submit_wait_and_tail_both_streams(ctx: juliarun.Context) -> None:
    job = sh("hello", "echo 'hello world!'; echo 'oops' >&2; echo bye")
    assert str(juliarun.submit(ctx, job)) == "created, 1 processes waiting"

    final = juliarun.wait(ctx, job, timeout=20)
    assert isinstance(final, JobStatus)
    assert str(final) == "succeeded"
    assert str(juliarun.status(ctx, job)) == "succeeded"
    assert str(juliarun.status(ctx, "hello")) == "succeeded"

    lines = tail_text(ctx, "hello")
    assert sorted(parsed(lines)) == [
        ("hello-0", "bye"),
        ("hello-0", "hello world!"),
        ("hello-0", "oops"),
    ]
    assert parsed(tail_text(ctx, "hello", stream="stderr")) == [("hello-0", "oops")]
    assert parsed(tail_text(ctx, "hello", stream="stdout")) == [
        ("hello-0", "hello world!"),
        ("hello-0", "bye"),
    ]
    stored = {(line.stream, line.message) for line in ctx.logs.query(LogQuery(job="hello"))}
    assert stored == {("stdout", "hello world!"), ("stderr", "oops"), ("stdout", "bye")}

    buf = io.StringIO()
    juliarun.status(ctx, job, verbose=True, out=buf)
    assert buf.getvalue().splitlines() == ["Batch(hello): succeeded", "  hello-0: succeeded exit=0"]
    assert juliarun.delete(ctx, job) is True


def test_tail_follow_prints_until_the_job_ends(ctx: juliarun.Context) -> None:
    juliarun.submit(ctx, sh("ticker", "echo tick; sleep 0.3; echo tock"))
    lines = tail_text(ctx, "ticker", follow=True, timeout=20)
    assert [msg for _, msg in parsed(lines)] == ["tick", "tock"]
    assert juliarun.status(ctx, "ticker").done
    juliarun.delete(ctx, "ticker")


def test_wait_times_out_and_leaves_the_job_running(ctx: juliarun.Context) -> None:
    juliarun.submit(ctx, sh("slow", "exec sleep 600"))
    with pytest.raises(JobTimeoutError) as err:
        juliarun.wait(ctx, "slow", timeout=0.2)
    assert err.value.name == "slow"
    assert not juliarun.status(ctx, "slow").done
    juliarun.delete(ctx, "slow", force=True)


def test_a_failure_reads_like_the_seed(ctx: juliarun.Context) -> None:
    juliarun.submit(ctx, sh("broken", "echo 'about to fail'; exit 3"))
    final = juliarun.wait(ctx, "broken", timeout=20)
    assert str(final) == "failed: worker broken-0 exit code 3"
    assert final.last_lines == ["about to fail"]
    buf = io.StringIO()
    juliarun.status(ctx, "broken", verbose=True, out=buf)
    assert "hint: see its output with `juliarun tail broken`" in buf.getvalue()
    juliarun.delete(ctx, "broken")


@pytest.mark.julia
def test_lines_of_parallel_workers_carry_their_worker_ids(
    jctx: juliarun.Context, tmp_path: Path
) -> None:
    code_storage(
        jctx,
        tmp_path,
        who="""
        me = ENV["JULIARUN_WORKER"]
        println("I am ", me, " of ", ENV["JULIARUN_NWORKERS"])
        println(stderr, "stderr of ", me)
        """,
    )
    job = juliarun.JuliaParBatchWorkers("trio", "/mnt/code/who.jl", "code", nworkers=3)
    assert str(juliarun.submit(jctx, job)) == "created, 3 processes waiting"
    final = juliarun.wait(jctx, job, timeout=30)
    assert str(final) == "succeeded"
    assert [w.id for w in final.workers] == ["trio-0", "trio-1", "trio-2"]

    lines = parsed(tail_text(jctx, "trio"))
    assert len(lines) == 6
    for worker, message in lines:
        assert message in (f"I am {worker} of 3", f"stderr of {worker}")
    assert {worker for worker, _ in lines} == {"trio-0", "trio-1", "trio-2"}
    assert sorted(parsed(tail_text(jctx, "trio", worker="trio-1"))) == [
        ("trio-1", "I am trio-1 of 3"),
        ("trio-1", "stderr of trio-1"),
    ]
    streams = {line.message: line.stream for line in jctx.logs.query(LogQuery(job="trio"))}
    assert streams["stderr of trio-2"] == "stderr"
    assert streams["I am trio-2 of 3"] == "stdout"
    juliarun.delete(jctx, job)


# -- several processes, one home --------------------------------------------------------------


def test_another_python_process_sees_the_same_jobs(ctx: juliarun.Context) -> None:
    juliarun.submit(ctx, sh("finished", "echo from the first process"))
    juliarun.wait(ctx, "finished", timeout=20)
    juliarun.submit(ctx, sh("ongoing", "exec sleep 600"))
    eventually(lambda: str(juliarun.status(ctx, "ongoing")) == "running", what="ongoing running")

    program = textwrap.dedent(
        """
        import io, json, juliarun
        ctx = juliarun.init()
        buf = io.StringIO()
        juliarun.tail(ctx, "finished", out=buf)
        jobs = [job.name for job in juliarun.list(ctx)]
        juliarun.submit(ctx, juliarun.Batch("second", command=["echo", "from the second"]))
        print(json.dumps({
            "jobs": jobs,
            "finished": str(juliarun.status(ctx, "finished")),
            "ongoing": str(juliarun.status(ctx, "ongoing")),
            "tail": buf.getvalue(),
        }))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["jobs"] == ["finished", "ongoing"]
    assert seen["finished"] == "succeeded"
    assert seen["ongoing"] == "running"
    assert parsed(seen["tail"].splitlines()) == [("finished-0", "from the first process")]

    # ... and this process sees the job the other one submitted.
    assert [job.name for job in juliarun.list(ctx)] == ["finished", "ongoing", "second"]
    assert str(juliarun.wait(ctx, "second", timeout=20)) == "succeeded"
    assert parsed(tail_text(ctx, "second")) == [("second-0", "from the second")]
    for name in ("finished", "ongoing", "second"):
        juliarun.delete(ctx, name, force=True)
    assert juliarun.list(ctx) == []


# -- delete -----------------------------------------------------------------------------------


def test_delete_running_job_and_search_its_output_after(ctx: juliarun.Context) -> None:
    juliarun.submit(ctx, sh("haystack", "echo 'a needle in the haystack'; exec sleep 600"))
    found = eventually(lambda: juliarun.search(ctx, "needle"), what="the needle line")
    assert [(line.job, line.worker) for line in found] == [("haystack", "haystack-0")]
    status = juliarun.status(ctx, "haystack")
    assert str(status) == "running"
    pid = status.workers[0].pid
    assert pid is not None

    assert juliarun.delete(ctx, "haystack") is True
    assert not alive(pid)
    assert juliarun.list(ctx) == []
    with pytest.raises(JobNotFoundError):
        juliarun.status(ctx, "haystack")
    after = juliarun.search(ctx, "needle haystack", job="haystack")
    assert [line.message for line in after] == ["a needle in the haystack"]
    assert [line.message for line in juliarun.search(ctx, regex=r"ne+dle\b")] == [
        "a needle in the haystack"
    ]
    assert juliarun.search(ctx, "thimble") == []


def test_delete_an_unknown_job(ctx: juliarun.Context) -> None:
    with pytest.raises(JobNotFoundError, match="job 'nope' not found on cluster 'local'"):
        juliarun.delete(ctx, "nope")


def test_search_needs_text_or_regex(ctx: juliarun.Context) -> None:
    with pytest.raises(JuliaRunError, match="search needs text or regex"):
        juliarun.search(ctx)


# -- scale ------------------------------------------------------------------------------------


@pytest.mark.julia
def test_scale_through_the_api(jctx: juliarun.Context, tmp_path: Path) -> None:
    code_storage(jctx, tmp_path, idle='println("up"); flush(stdout); sleep(600)\n')
    job = juliarun.JuliaParBatchWorkers("crew", "/mnt/code/idle.jl", "code", nworkers=1)
    juliarun.submit(jctx, job)

    def running() -> int:
        return sum(1 for w in juliarun.status(jctx, job).workers if w.state == "running")

    eventually(lambda: running() == 1, what="one worker")
    juliarun.scale(jctx, job, 3)
    eventually(lambda: running() == 3, what="three workers")
    # Scale down once every worker is up: a SIGTERM racing Julia's startup can take the whole
    # grace period.
    eventually(lambda: len(juliarun.search(jctx, "up", job="crew")) == 3, what="3 workers up")
    assert [(j.name, getattr(j, "nworkers", None)) for j in juliarun.list(jctx)] == [("crew", 3)]
    juliarun.scale(jctx, "crew", 1)
    eventually(lambda: running() == 1, what="back to one worker")
    assert [getattr(j, "nworkers", None) for j in juliarun.list(jctx)] == [1]
    assert str(juliarun.status(jctx, job)) == "running"

    juliarun.submit(jctx, sh("plain", "exec sleep 600"))
    with pytest.raises(SpecError, match="only JuliaParBatchWorkers"):
        juliarun.scale(jctx, "plain", 2)
    juliarun.delete(jctx, "plain", force=True)
    juliarun.delete(jctx, job, force=True)


# -- refusals before any side effect ----------------------------------------------------------


def test_idempotent_submit_and_a_clashing_spec(ctx: juliarun.Context) -> None:
    job = sh("once", "exec sleep 600")
    juliarun.submit(ctx, job)
    again = juliarun.submit(ctx, sh("once", "exec sleep 600"))
    assert again.name == "once"
    assert [j.name for j in juliarun.list(ctx)] == ["once"]
    with pytest.raises(JobExistsError):
        juliarun.submit(ctx, sh("once", "exec sleep 601"))
    assert [j.name for j in juliarun.list(ctx)] == ["once"]
    juliarun.delete(ctx, job, force=True)


def test_unknown_storage_creates_nothing(
    ctx: juliarun.Context, local_home: Path, tmp_path: Path
) -> None:
    juliarun.define_storage(ctx, name="data", kind="host", path=str(tmp_path / "data"))
    with pytest.raises(StorageNotFoundError) as err:
        juliarun.submit(ctx, sh("lost", "true", storage=["nowhere"]))
    assert err.value.name == "nowhere" and err.value.known == ["data"]
    assert "define_storage(ctx, name='nowhere'" in str(err.value)
    assert juliarun.list(ctx) == []
    assert not (local_home / "clusters" / "local" / "jobs" / "lost").exists()


@pytest.mark.julia
def test_a_missing_script_names_the_field_and_creates_nothing(
    jctx: juliarun.Context, tmp_path: Path, local_home: Path
) -> None:
    code_storage(jctx, tmp_path)
    with pytest.raises(SpecError) as err:
        juliarun.submit(jctx, juliarun.JuliaBatch("ghost", "/mnt/code/absent.jl", "code"))
    assert [field for field, _ in err.value.errors] == ["script"]
    assert "'/mnt/code/absent.jl' does not exist" in str(err.value)
    assert juliarun.list(jctx) == []
    assert not (local_home / "clusters" / "local" / "jobs" / "ghost").exists()


def test_more_cpu_than_the_machine_names_resources_cpu(ctx: juliarun.Context) -> None:
    with pytest.raises(SpecError) as err:
        juliarun.submit(ctx, sh("greedy", "true", cpu="100000"))
    assert [field for field, _ in err.value.errors] == ["resources.cpu"]
    assert "resources.cpu: asks 100000 but this machine has" in str(err.value)
    assert juliarun.list(ctx) == []


# -- storage ----------------------------------------------------------------------------------


def test_storage_is_mounted_by_name(ctx: juliarun.Context, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("hello from storage\n")
    juliarun.define_storage(ctx, name="data", kind="host", path=str(data))
    script = """
        echo "arg=$1"
        echo "mnt=$(ls "$JULIARUN_MNT")"
        echo "link=$(readlink -f "$JULIARUN_MNT/data")"
        echo "env=$JULIARUN_STORAGE_DATA"
        echo "cwd=$(pwd -P)"
        cat "$1"
        echo written > out.txt
    """
    juliarun.submit(
        ctx, sh("mounted", textwrap.dedent(script), "/mnt/data/input.txt", storage="data")
    )
    assert str(juliarun.wait(ctx, "mounted", timeout=20)) == "succeeded"
    real = data.resolve()
    assert [msg for _, msg in parsed(tail_text(ctx, "mounted"))] == [
        f"arg={data}/input.txt",
        "mnt=data",
        f"link={real}",
        f"env={data}",
        f"cwd={real}",
        "hello from storage",
    ]
    assert (data / "out.txt").read_text() == "written\n"
    juliarun.delete(ctx, "mounted")


# -- metrics ----------------------------------------------------------------------------------


@pytest.mark.julia
def test_metrics_recorded_inside_a_julia_job(jctx: juliarun.Context, tmp_path: Path) -> None:
    code_storage(
        jctx,
        tmp_path,
        count="""
        include(ENV["JULIARUN_JL"])
        JuliaRun.record("files_processed", 1; stage="parse")
        JuliaRun.record("files_processed", 2; stage="parse")
        open(ENV["JULIARUN_METRICS_FILE"], "a") do io
            println(io, "not line protocol")
        end
        println("counted")
        """,
    )
    job = juliarun.JuliaBatch("counter", "/mnt/code/count.jl", "code")
    juliarun.submit(jctx, job)
    assert str(juliarun.wait(jctx, job, timeout=30)) == "succeeded"

    [total] = juliarun.metrics(jctx, "files_processed", agg="sum")
    assert total.value == 3
    rows = juliarun.metrics(
        jctx,
        "files_processed",
        tags={"job": "counter"},
        agg="sum",
        group_by=("job", "worker", "stage", "cluster", "tenant"),
    )
    assert [(dict(r.group), r.value) for r in rows] == [
        (
            {
                "job": "counter",
                "worker": "counter-0",
                "stage": "parse",
                "cluster": "local",
                "tenant": "default",
            },
            3.0,
        )
    ]
    assert juliarun.metrics(jctx, "files_processed", agg="count")[0].value == 2

    ignored = [
        line
        for line in jctx.logs.query(LogQuery(job="counter", stream="stderr"))
        if line.message.startswith("juliarun: ignored")
    ]
    # Counted with the rule broken, never echoed: the file could have been made a link to a
    # secret (see test_hardening_metrics.py).
    assert [x.message for x in ignored] == [
        "juliarun: ignored 1 metric line (field … must be key=value)"
    ]
    assert ignored[0].worker == "counter-0"
    juliarun.delete(jctx, job)


def test_record_and_query_a_metric_from_python(ctx: juliarun.Context) -> None:
    juliarun.record(ctx, "rows_loaded", 5, table="users")
    juliarun.record(ctx, "rows_loaded", 7, table="users")
    [row] = juliarun.metrics(ctx, "rows_loaded", agg="max", group_by=("cluster", "table"))
    assert (dict(row.group), row.value) == ({"cluster": "local", "table": "users"}, 7.0)


# -- the cluster ------------------------------------------------------------------------------


def test_cluster_status_prints_the_seed_sections(ctx: juliarun.Context) -> None:
    buf = io.StringIO()
    result = juliarun.status(ctx, verbose=True, out=buf)
    assert isinstance(result, ClusterStatus)
    text = buf.getvalue()
    assert text.startswith("Compute cluster: local (local) at file://")
    for section in ("Components", "Pods waiting", "Nodes (resource free pct)"):
        assert f"\n{section}\n" in text
    assert "for scheduler: 0" in text
    assert "julia" in text and "log-store" in text and "metric-store" in text
    assert len(result.nodes) == 1

    quiet = io.StringIO()
    assert isinstance(juliarun.status(ctx, out=quiet), ClusterStatus)
    assert quiet.getvalue() == ""
