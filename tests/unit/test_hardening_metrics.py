"""Issue 13, metrics: a worker's metrics file is read without trusting the worker. No link is
followed, a rewritten file is read again, nothing rejected is echoed, the identity tags and the
``juliarun.*`` names are the platform's. The reader alone, then real local jobs."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from juliarun.backends.base import wait_for_job
from juliarun.backends.local import LocalBackend
from juliarun.backends.supervised.metricsfile import MAX_READ, MetricsFile
from juliarun.logs import LogQuery, open_log_store
from juliarun.metrics import open_metric_store
from juliarun.metrics.base import MetricQuery
from juliarun.specs import Batch

SECRET = "hunter2-s3cr3t"


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    d = tmp_path / "metrics"
    d.mkdir()
    return d


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file the job must never get read for it: valid line protocol, so a reader that
    followed a link to it would store it."""
    path = tmp_path / "secret.txt"
    path.write_text(f"store,password={SECRET} value=1\npassword: {SECRET}\n")
    return path


def reader(metrics_dir: Path) -> MetricsFile:
    f = MetricsFile(metrics_dir / "w-0.lp", owners=frozenset({os.getuid()}))
    f.prepare()
    return f


def append(path: Path, text: str) -> None:
    with open(path, "a") as out:
        out.write(text)


def test_prepare_makes_a_private_regular_file(metrics_dir: Path) -> None:
    f = reader(metrics_dir)
    st = (metrics_dir / "w-0.lp").lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (f.offset, f.read(), f.notes) == (0, b"", [])


def test_a_symlink_is_never_followed(metrics_dir: Path, secret: Path) -> None:
    f = reader(metrics_dir)
    (metrics_dir / "w-0.lp").unlink()
    (metrics_dir / "w-0.lp").symlink_to(secret)
    assert f.read() == b""
    assert f.read() == b""  # reported once, not on every poll
    assert f.take_notes() == [
        "juliarun: metrics file w-0.lp is a symbolic link: not read "
        "(metrics are read from a regular file only)"
    ]


def test_a_linked_directory_is_never_followed(
    tmp_path: Path, metrics_dir: Path, secret: Path
) -> None:
    f = reader(metrics_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "w-0.lp").write_text(secret.read_text())
    (metrics_dir / "w-0.lp").unlink()
    metrics_dir.rmdir()
    metrics_dir.symlink_to(elsewhere)
    assert f.read() == b""
    assert [n.split(": not read")[0] for n in f.take_notes()] == [
        "juliarun: metrics file w-0.lp cannot be read: its directory is not a directory of the job"
    ]


def test_a_hard_link_to_another_file_is_refused(metrics_dir: Path, secret: Path) -> None:
    f = reader(metrics_dir)
    (metrics_dir / "w-0.lp").unlink()
    os.link(secret, metrics_dir / "w-0.lp")
    assert f.read() == b""
    assert "has other hard links: not read" in f.take_notes()[0]


def test_a_fifo_is_refused_without_blocking(metrics_dir: Path) -> None:
    f = reader(metrics_dir)
    (metrics_dir / "w-0.lp").unlink()
    os.mkfifo(metrics_dir / "w-0.lp")
    assert f.read() == b""  # O_NONBLOCK: no writer, no wait
    assert "is not a regular file: not read" in f.take_notes()[0]


def test_a_file_of_another_owner_is_refused(metrics_dir: Path) -> None:
    f = MetricsFile(metrics_dir / "w-0.lp", owners=frozenset({os.getuid() + 4242}))
    (metrics_dir / "w-0.lp").write_text("x value=1\n")
    assert f.read() == b""
    assert f"is owned by user id {os.getuid()}, not by the job" in f.take_notes()[0]


def test_prepare_replaces_what_an_earlier_attempt_left(metrics_dir: Path, secret: Path) -> None:
    (metrics_dir / "w-0.lp").symlink_to(secret)
    f = reader(metrics_dir)
    st = (metrics_dir / "w-0.lp").lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    assert secret.read_text().startswith("store,")  # the target was not touched
    append(metrics_dir / "w-0.lp", "a value=1\n")
    assert f.read() == b"a value=1\n"


def test_prepare_keeps_an_earlier_attempts_lines_read(metrics_dir: Path) -> None:
    append(metrics_dir / "w-0.lp", "old value=1\n")
    f = reader(metrics_dir)
    append(metrics_dir / "w-0.lp", "new value=2\n")
    assert f.read() == b"new value=2\n"


def test_truncation_is_read_from_the_start(metrics_dir: Path) -> None:
    f = reader(metrics_dir)
    path = metrics_dir / "w-0.lp"
    append(path, "a value=1\nb value=2\nc value=3\n")
    assert f.read().count(b"\n") == 3
    path.write_text("d value=4\n")  # truncated, then shorter than what was read
    assert f.read() == b"d value=4\n"
    assert f.take_notes() == [
        "juliarun: metrics file w-0.lp was truncated: reading it from the start"
    ]


def test_a_file_rewritten_longer_in_place_is_read_from_the_start(metrics_dir: Path) -> None:
    f = reader(metrics_dir)
    path = metrics_dir / "w-0.lp"
    append(path, "a value=1\n")
    assert f.read() == b"a value=1\n"
    path.write_text("b value=2\nc value=3\n")  # truncated and longer again between polls
    assert f.read() == b"b value=2\nc value=3\n"
    assert "was rewritten: reading it from the start" in f.take_notes()[0]


def test_a_replaced_file_is_read_from_the_start(metrics_dir: Path) -> None:
    f = reader(metrics_dir)
    path = metrics_dir / "w-0.lp"
    append(path, "a value=1\nb value=2\n")
    assert f.read()
    new = metrics_dir / "new"
    new.write_text("c value=3\nd value=4\ne value=5\n")
    os.replace(new, path)
    assert f.read() == b"c value=3\nd value=4\ne value=5\n"
    assert "was replaced: reading it from the start" in f.take_notes()[0]


def test_reads_are_bounded_and_an_endless_line_is_skipped(metrics_dir: Path) -> None:
    f = reader(metrics_dir)
    path = metrics_dir / "w-0.lp"
    append(path, "x" * (MAX_READ + 10) + "\nok value=1\n")
    assert f.read() == b""
    assert "has a line longer than 4 MiB: skipped" in f.take_notes()[0]
    assert f.read() == b"x" * 10 + b"\nok value=1\n"  # the rest of it, then the next line


# -- real local jobs ------------------------------------------------------------------------


@pytest.fixture
def backend(local_home: Path) -> Iterator[LocalBackend]:
    yield LocalBackend(local_home, kill_grace=2)


TRICKS = r"""
m="$JULIARUN_METRICS_FILE"
echo "load,job=victim,worker=victim-0,tenant=other,cluster=prod,run=7 value=5" >> "$m"
echo "juliarun.cpu_seconds value=1e9" >> "$m"
echo "password=$1 x" >> "$m"
sleep 0.6
: > "$m"                        # truncate: the next line must still be stored
echo "after_truncate value=1" >> "$m"
sleep 0.6
ln -sf "$2" "$m"                # a link to a secret: never read
sleep 0.6
rm -f "$m"; ln "$2" "$m"        # a hard link to it: never read
sleep 0.6
rm -f "$m"; echo "last value=2" > "$m.new"; mv "$m.new" "$m"   # replaced: read
sleep 0.6
"""


def test_a_job_trying_every_metrics_trick_gets_nothing(backend: LocalBackend, secret: Path) -> None:
    job = Batch("tricks", command=["bash", "-c", TRICKS, "bash", SECRET, str(secret)])
    backend.submit(job, {})
    assert str(wait_for_job(backend, "tricks", timeout=30, poll_interval=0.05)) == "succeeded"
    identity = {"job": "tricks", "worker": "tricks-0", "tenant": "default", "cluster": "local"}
    by = ("cluster", "job", "tenant", "worker")
    with open_metric_store(backend.metric_store) as metrics:

        def rows(name: str, *extra: str, **tags: str) -> list[tuple[dict[str, str], float]]:
            q = MetricQuery(name=name, tags=tags, agg="sum", group_by=(*by, *extra))
            return [(dict(r.group), r.value) for r in metrics.query(q)]

        assert rows("load", "run") == [({**identity, "run": "7"}, 5.0)]
        assert rows("load", job="victim") == []
        assert rows("after_truncate") == [(identity, 1.0)]
        assert rows("last") == [(identity, 2.0)]
        assert rows("store") == []
        cpu = metrics.query(MetricQuery(name="juliarun.cpu_seconds", agg="max"))
        assert all(r.value < 1e9 for r in cpu)
    with open_log_store(backend.log_store) as logs:
        lines = [x.message for x in logs.query(LogQuery(job="tricks"))]
    assert not [x for x in lines if SECRET in x]
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
    backend.delete("tricks")


JULIA_TRICKS = r"""
m = ENV["JULIARUN_METRICS_FILE"]
secret, neighbour = ARGS
put(text) = open(io -> println(io, text), m, "a")
put("load,job=victim,worker=victim-0,tenant=other,cluster=prod,run=7 value=5")
put("juliarun.cpu_seconds value=1e9")
put("password=$(ENV["SECRET_WORD"]) x")
sleep(0.6)
open(io -> nothing, m, "w")                       # truncate
put("after_truncate value=1")
sleep(0.6)
rm(m); symlink(secret, m)                         # a link to a secret
sleep(0.6)
rm(m); run(`ln $secret $m`)                       # a hard link to it
sleep(0.6)
rm(m); open(io -> println(io, "last value=2"), m * ".new", "w"); mv(m * ".new", m)
sleep(0.6)
# What a job can see: no store credentials in its neighbours' files or its environment.
println("neighbour: ", occursin("metric_store", read(neighbour, String)))
println("token: ", haskey(ENV, "JULIARUN_INFLUX_TOKEN"))
"""


@pytest.mark.julia
def test_a_julia_job_trying_every_trick_gets_nothing(
    local_home: Path, julia: str, secret: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from juliarun.specs import JuliaBatch, StorageSpec

    monkeypatch.setenv("JULIARUN_INFLUX_TOKEN", "influx-token-from-the-submitter")
    backend = LocalBackend(local_home, julia=julia, kill_grace=2)
    code = tmp_path / "code"
    code.mkdir()
    (code / "tricks.jl").write_text(JULIA_TRICKS)
    storage = {"code": StorageSpec(name="code", kind="host", path=str(code))}
    backend.submit(Batch("neighbour", command=["true"]), {})
    assert wait_for_job(backend, "neighbour", timeout=30, poll_interval=0.05).done
    neighbour = backend.jobs_dir / "neighbour" / "job.json"
    job = JuliaBatch(
        "jtricks",
        "/mnt/code/tricks.jl",
        "code",
        args=[str(secret), str(neighbour)],
        env={"SECRET_WORD": SECRET},
    )
    backend.submit(job, storage)
    status = wait_for_job(backend, "jtricks", timeout=60, poll_interval=0.05)
    assert str(status) == "succeeded"
    identity = {"job": "jtricks", "worker": "jtricks-0", "tenant": "default", "cluster": "local"}
    with open_metric_store(backend.metric_store) as metrics:
        q = MetricQuery(name="load", agg="sum", group_by=(*sorted(identity), "run"))
        assert [(dict(r.group), r.value) for r in metrics.query(q)] == [
            ({**identity, "run": "7"}, 5.0)
        ]
        for name, value in (("after_truncate", 1.0), ("last", 2.0)):
            assert [r.value for r in metrics.query(MetricQuery(name=name, agg="sum"))] == [value]
        assert metrics.query(MetricQuery(name="store", agg="count")) == []
    with open_log_store(backend.log_store) as logs:
        lines = [x.message for x in logs.query(LogQuery(job="jtricks"))]
    assert not [x for x in lines if SECRET in x]
    assert [x for x in lines if not x.startswith("juliarun:")] == [
        "neighbour: false",
        "token: false",
    ]
    assert len([x for x in lines if x.startswith("juliarun:")]) == 6
    for name in ("jtricks", "neighbour"):
        backend.delete(name)
