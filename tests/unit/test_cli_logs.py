"""`juliarun logs search|follow|collect` and `juliarun metrics [query]|plot` on the embedded SQLite
stores: every filter, time options, follow mode, and one-line errors."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from juliarun.cli import app, parse_when
from juliarun.errors import SpecError
from juliarun.logs import LogLine, open_log_store
from juliarun.logs.base import Stream
from juliarun.metrics import Point, open_metric_store
from juliarun.settings import load_settings

runner = CliRunner()
NOW = datetime.now(UTC)


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def line(
    minutes_ago: float,
    message: str,
    job: str = "alpha",
    worker: str = "alpha-0",
    stream: Stream = "stdout",
    tenant: str = "default",
) -> LogLine:
    stamp = NOW - timedelta(minutes=minutes_ago)
    return LogLine(stamp, job, worker, stream, message, "local", tenant)


@pytest.fixture
def home(local_home: Path) -> Path:
    # Relative times ("--until 15m") are read against the clock when the command runs, so the
    # lines are stamped relative to now at the start of each test, not at import.
    global NOW  # noqa: PLW0603
    NOW = datetime.now(UTC)
    store = open_log_store(load_settings().log_store_config())
    store.write(
        [
            line(120, "old hello from alpha"),
            line(30, "hello from alpha", worker="alpha-1"),
            line(20, "warning: hello disk", stream="stderr"),
            line(10, "hello from beta", job="beta", worker="beta-0", tenant="acme"),
            line(5, "goodbye from beta", job="beta", worker="beta-0", tenant="acme"),
        ]
    )
    store.close()
    return local_home


def messages(out: str) -> list[str]:
    return [ln.split(", ", 2)[2] for ln in out.splitlines() if ln.strip()]


def test_search_takes_every_filter(home: Path) -> None:
    code, out = run("logs", "search", "hello")
    assert code == 0, out
    assert len(messages(out)) == 4
    assert "alpha: " in out and "beta: " in out
    assert messages(run("logs", "search", "hello", "--job", "beta")[1]) == ["hello from beta"]
    assert messages(run("logs", "search", "hello", "--worker", "alpha-1")[1]) == [
        "hello from alpha"
    ]
    assert messages(run("logs", "search", "hello", "--stream", "stderr")[1]) == [
        "warning: hello disk"
    ]
    assert messages(run("logs", "search", "from", "--tenant", "acme")[1]) == [
        "hello from beta",
        "goodbye from beta",
    ]
    assert messages(run("logs", "search", "hello", "--since", "1h")[1]) == [
        "hello from alpha",
        "warning: hello disk",
        "hello from beta",
    ]
    assert messages(run("logs", "search", "hello", "--since", "1h", "--until", "15m")[1]) == [
        "hello from alpha",
        "warning: hello disk",
    ]
    until = (NOW - timedelta(minutes=60)).isoformat()
    assert messages(run("logs", "search", "hello", "--until", until)[1]) == ["old hello from alpha"]
    assert messages(run("logs", "search", "--regex", r"^(hello|goodbye) from b")[1]) == [
        "hello from beta",
        "goodbye from beta",
    ]
    assert messages(run("logs", "search", "from", "--limit", "1")[1]) == ["goodbye from beta"]


def test_search_refuses_bad_options_in_one_line(home: Path) -> None:
    code, out = run("logs", "search", "hello", "--stream", "stdmid")
    assert code == 1 and "stream" in out and "Traceback" not in out
    code, out = run("logs", "search", "hello", "--since", "yesterday-ish")
    assert code == 1 and "neither a duration" in out


def test_parse_when() -> None:
    t = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parse_when(None, t) is None
    assert parse_when("90s", t) == t - timedelta(seconds=90)
    assert parse_when("1.5h", t) == t - timedelta(minutes=90)
    assert parse_when("1w", t) == t - timedelta(days=7)
    assert parse_when("2026-01-01T10:00:00+02:00", t) == datetime(2026, 1, 1, 8, tzinfo=UTC)
    with pytest.raises(SpecError):
        parse_when("10 minutes", t)


def test_follow_prints_stored_then_new_lines(home: Path) -> None:
    def later() -> None:
        time.sleep(0.5)
        store = open_log_store(load_settings().log_store_config())
        store.write([line(0, "late line", job="beta", worker="beta-1", tenant="acme")])
        store.close()

    writer = threading.Thread(target=later)
    writer.start()
    code, out = run("logs", "follow", "--tenant", "acme", "--timeout", "2")
    writer.join()
    assert code == 0, out
    assert messages(out) == ["hello from beta", "goodbye from beta", "late line"]
    code, out = run("logs", "follow", "--stream", "stderr", "--timeout", "0.2")
    assert messages(out) == ["warning: hello disk"]


def test_collect_on_the_local_backend_has_nothing_to_do(home: Path) -> None:
    code, out = run("logs", "collect", "nope")
    assert code == 1 and "nope" in out
    assert run("logs", "--help")[0] == 0


@pytest.fixture
def points(home: Path) -> Path:
    store = open_metric_store(load_settings().metric_store_config())
    t0 = NOW - timedelta(minutes=3)
    store.write(
        [
            Point("app.loss", float(v), t0 + timedelta(seconds=10 * i), {"worker": w, "job": "j"})
            for w in ("j-0", "j-1")
            for i, v in enumerate(range(6))
        ]
    )
    store.close()
    return home


def test_metrics_query_with_and_without_the_subcommand(points: Path) -> None:
    code, out = run("metrics", "app.loss", "--agg", "sum", "--by", "worker")
    assert code == 0, out
    assert [ln.split("\t")[1:] for ln in out.splitlines()] == [
        ["group", "sum(app.loss)"],
        ["worker=j-0", "15"],
        ["worker=j-1", "15"],
    ]
    code, same = run("metrics", "query", "app.loss", "--agg", "sum", "--by", "worker")
    assert (code, same) == (0, out)
    code, out = run("metrics", "app.loss", "--agg", "max", "--tag", "worker=j-1", "--last", "1h")
    assert code == 0 and out.splitlines()[0] == "start\tgroup\tmax(app.loss)"
    assert out.split("\t")[-1].strip() == "5"
    code, out = run("metrics", "app.loss", "--agg", "median")
    assert code == 1 and "agg" in out
    code, out = run("metrics", "app.loss", "--tag", "worker")
    assert code == 1 and "key=value" in out


def test_metrics_plot_writes_a_png(points: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "plots" / "loss.png"
    code, out = run(
        "metrics", "plot", "app.loss", "--out", str(out_file), "--by", "worker", "--window", "20"
    )
    assert code == 0, out
    assert out_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out_file) in out
    code, out = run("metrics", "plot", "no.such.metric", "--out", str(out_file))
    assert code == 1 and "no metric 'no.such.metric' on cluster 'local'; known: app.loss" in out
