"""The command line as a new user meets it (issue 14's findings), on the local backend: what
each command prints when things are fine, empty or wrong, and that every error is one line
with a hint that fits the command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from juliarun.cli import app
from juliarun.errors import SpecError
from juliarun.metrics import Point, open_metric_store
from juliarun.settings import load_settings

runner = CliRunner()
SRC = Path(__file__).resolve().parents[2] / "src"


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def spec(tmp_path: Path, text: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_error_line(err: str) -> str:
    """The error line of stderr, checking that stderr is that line and a hint at most."""
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith("error: "), err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err
    assert "Traceback" not in err
    return lines[0]


# -- delete, list, tail -------------------------------------------------------------------


def test_delete_says_what_it_did_and_a_missing_job_exits_1(
    local_home: Path, tmp_path: Path
) -> None:
    assert (
        run("submit", spec(tmp_path, "kind: Batch\nname: doomed\ncommand: [sleep, '30']\n"))[0] == 0
    )
    code, out, err = run("delete", "--force", "doomed")
    assert (code, out, err) == (0, "deleted job doomed\n", "")
    code, out, err = run("delete", "doomed")
    assert code == 1 and out == ""
    assert one_error_line(err) == "error: job 'doomed' not found on cluster 'local'"


def test_an_empty_list_says_so_and_a_list_has_duration_and_age(
    local_home: Path, tmp_path: Path
) -> None:
    code, out, err = run("list")
    assert (code, out, err.strip()) == (0, "", "no jobs on cluster 'local'")
    job = spec(tmp_path, "kind: Batch\nname: quick\ncommand: [sleep, '1.2']\n")
    assert run("submit", job, "--wait")[0] == 0
    code, out, _ = run("list")
    assert code == 0
    header = next(line for line in out.splitlines() if "job" in line)
    assert header.split() == ["job", "kind", "workers", "status", "duration", "age"]
    row = next(line for line in out.splitlines() if "quick" in line).split()
    assert row[:4] == ["quick", "Batch", "1", "succeeded"]
    assert re.fullmatch(r"[1-9]s", row[4]), row  # slept 1.2s
    assert re.fullmatch(r"\d+s", row[5]) and int(row[5][:-1]) >= int(row[4][:-1]), row
    assert run("delete", "quick")[0] == 0


def test_tail_of_an_unknown_worker_names_the_workers_there_are(
    local_home: Path, tmp_path: Path
) -> None:
    job = spec(tmp_path, "kind: Batch\nname: talker\ncommand: [echo, hi]\n")
    assert run("submit", job, "--wait")[0] == 0
    code, out, err = run("tail", "talker", "--worker", "talker-7")
    assert code == 1 and out == ""
    assert (
        one_error_line(err) == "error: job 'talker' has no worker 'talker-7'; its workers: talker-0"
    )
    code, out, _ = run("tail", "talker", "--worker", "talker-0")
    assert code == 0 and out.strip().endswith("talker-0, hi")
    assert run("delete", "talker")[0] == 0


def test_ctrl_c_on_submit_wait_says_the_job_keeps_running(local_home: Path, tmp_path: Path) -> None:
    job = spec(
        tmp_path,
        "kind: Batch\nname: sleepy\ncommand: [sh, -c, 'echo started; sleep 60']\n",
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "juliarun.cli", "submit", job, "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 60
    while not any("sleepy-0, started" in line for line in seen):
        assert time.monotonic() < deadline, seen
        seen.append(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert one_error_line(err) == (
        "error: stopped waiting; job 'sleepy' keeps running on cluster 'local'"
    )
    assert (
        "hint: follow it with `juliarun tail -f sleepy`, stop it with `juliarun delete sleepy`"
        in err
    )
    code, out, _ = run("status", "sleepy")
    assert code == 0 and out.startswith("Batch(sleepy): running\n"), out
    assert run("delete", "--force", "sleepy")[0] == 0


# -- logs and metrics ------------------------------------------------------------------------


def test_logs_search_marks_stderr_lines(local_home: Path, tmp_path: Path) -> None:
    job = spec(tmp_path, "kind: Batch\nname: both\ncommand: [sh, -c, 'echo fine; echo bad >&2']\n")
    assert run("submit", job, "--wait")[0] == 0
    code, out, _ = run("logs", "search", "--regex", "fine|bad")
    assert code == 0
    lines = sorted(line.split(", ", 1)[1] for line in out.splitlines())
    assert lines == ["both-0 (stderr), bad", "both-0, fine"]
    assert run("delete", "both")[0] == 0


@pytest.fixture
def loss(local_home: Path) -> Path:
    store = open_metric_store(load_settings().metric_store_config())
    now = datetime.now(UTC)
    store.write([Point("app.loss", 2.0, now - timedelta(minutes=1), {"worker": "j-0"})])
    store.write([Point("app.acc", 0.5, now - timedelta(minutes=1), {"worker": "j-0"})])
    store.close()
    return local_home


def test_metrics_query_of_an_unknown_name_names_the_known_ones(loss: Path) -> None:
    code, out, err = run("metrics", "app.los")
    assert code == 1 and out == ""
    assert one_error_line(err) == (
        "error: no metric 'app.los' on cluster 'local'; known: app.acc, app.loss"
    )
    code, out, err = run("metrics", "app.loss", "--tag", "worker=j-9")
    assert (code, out, err.strip()) == (0, "", "no points of 'app.loss' match")
    code, out, _ = run("metrics", "app.loss")
    assert code == 0 and out.splitlines()[0] == "start\tgroup\tmean(app.loss)"


def test_metrics_plot_takes_its_window_from_the_data(loss: Path, tmp_path: Path) -> None:
    from juliarun.metrics.plot import time_limits

    code, out, err = run("metrics", "plot", "app.loss", "--out", str(tmp_path / "p.png"))
    assert code == 0, err
    assert out.strip() == f"{tmp_path / 'p.png'}: 1 points, window 1s"
    store = open_metric_store(load_settings().metric_store_config())
    rows = store.query(
        __import__("juliarun.metrics", fromlist=["MetricQuery"]).MetricQuery("app.loss")
    )
    store.close()
    lo, hi = time_limits(rows)
    assert hi - lo == timedelta(minutes=1)  # not an axis of years around one point
    t0 = datetime.now(UTC) - timedelta(hours=2)
    store = open_metric_store(load_settings().metric_store_config())
    store.write([Point("app.long", float(i), t0 + timedelta(minutes=i)) for i in range(120)])
    store.close()
    code, out, _ = run("metrics", "plot", "app.long", "--out", str(tmp_path / "q.png"))
    assert code == 0 and out.strip().endswith("window 2m")  # 119 minutes / 60 -> 2m


# -- options, clusters, status ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["submit"],
        ["logs"],
        ["logs", "search"],
        ["metrics"],
        ["metrics", "plot"],
        ["build"],
        ["build", "bundle"],
        ["storage", "define"],
        ["explain"],
        ["serve"],
    ],
)
def test_dash_h_is_help_everywhere(args: list[str]) -> None:
    code, out, _ = run(*args, "-h")
    assert code == 0 and "Usage: juliarun" in out


def test_version() -> None:
    from importlib.metadata import version

    assert run("--version")[:2] == (0, f"juliarun {version('juliarun')}\n")


def test_a_bad_cluster_name_is_refused_before_asking_prefect(local_home: Path) -> None:
    # A Prefect API that does not answer: asking it would fail slowly, with Prefect's words.
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    started = time.monotonic()
    code, out, err = run("list", "--cluster", "Bad_Name", env=env)
    assert code == 1 and out == ""
    assert one_error_line(err) == (
        "error: invalid arguments: --cluster: must be local, docker, kubernetes or a saved "
        "cluster block's name (lowercase letters, digits and '-'), got 'Bad_Name'"
    )
    assert time.monotonic() - started < 5
    code, _, err = run("list", "--cluster", "nosuch", env={"PREFECT_API_URL": ""})
    assert code == 1
    assert "no cluster 'nosuch'" in one_error_line(err)
    assert "PREFECT" not in err.split("\n", 1)[1] or "PREFECT_API_URL" in err
    assert "INFO" not in err and "telemetry" not in err


def test_status_of_docker_without_an_engine_is_one_line(local_home: Path) -> None:
    code, out, err = run(
        "status", "--cluster", "docker", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    )
    assert code == 1 and out == ""
    assert one_error_line(err) == (
        "error: cluster 'docker' does not answer: docker-engine: cannot connect to the Docker "
        "engine at unix:///nonexistent/docker.sock: No such file or directory"
    )
    assert "urllib3" not in err and "Connection aborted" not in err


# -- spec files and hints --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: Batch\nname: b\ncommand: [echo]\nresources:\ncpu: '2'\n",
            "error: invalid Batch: resources: is empty: indent its fields (cpu, memory, ...) "
            "under resources:; cpu: is at the top level beside resources: (dedented?): indent "
            "it under it",
        ),
        (
            "kind: Batch\nname: b\ncommand: [echo]\nresources:\n  memory: 1Gi\ncpu: '2'\n",
            "error: invalid Batch: cpu: is at the top level beside resources: (dedented?): "
            "indent it under it",
        ),
    ],
)
def test_a_dedented_resource_field_is_refused(
    local_home: Path, tmp_path: Path, text: str, expected: str
) -> None:
    path = spec(tmp_path, text)
    code, out, err = run("submit", path)
    assert code == 1 and out == ""
    assert one_error_line(err) == expected
    assert f"hint: fix the indentation in {path}" in err


def test_a_top_level_cpu_alone_is_still_the_shortcut(local_home: Path, tmp_path: Path) -> None:
    path = spec(tmp_path, "kind: Batch\nname: short\ncommand: [echo, x]\ncpu: 250m\n")
    assert run("submit", path, "--wait")[0] == 0
    assert run("delete", "short")[0] == 0


def test_a_yaml_error_names_the_file_line_and_column(local_home: Path, tmp_path: Path) -> None:
    path = spec(tmp_path, "kind: Batch\nname: b\ncommand: [echo\nenv: {}\n")
    code, _, err = run("submit", path)
    assert code == 1
    line = one_error_line(err)
    assert line == (
        f"error: invalid job: (file): {path}:4:4: not valid YAML: while parsing a flow "
        "sequence, expected ',' or ']', but got ':'"
    )
    assert "<unicode string>" not in err
    path = spec(tmp_path, "kind: Batch\nname: b\nname: c\n", "twice.yaml")
    line = one_error_line(run("submit", path)[2])
    assert (
        line == f"error: invalid job: (file): {path}:3:1: not valid YAML: key 'name' is given twice"
    )


def test_submit_of_a_missing_file(local_home: Path) -> None:
    code, out, err = run("submit", "nosuchfile.yaml")
    assert code == 1 and out == ""
    assert one_error_line(err) == "error: no such file: nosuchfile.yaml"
    assert "submit again" not in err


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["logs", "search", "x", "--since", "yesterday"], "see `juliarun logs search -h`"),
        (["metrics", "app.loss", "--agg", "median"], "see `juliarun metrics query -h`"),
        (["tail", "Bad_Job"], "list the jobs with `juliarun list`"),
    ],
)
def test_hints_fit_the_command(local_home: Path, args: list[str], hint: str) -> None:
    code, _, err = run(*args)
    assert code == 1
    one_error_line(err)
    assert f"hint: {hint}" in err
    assert "submit again" not in err and "nothing was created" not in err


def test_submit_keeps_the_spec_hint_and_hints_are_commands_not_python(
    local_home: Path, tmp_path: Path
) -> None:
    _, _, err = run("submit", spec(tmp_path, "kind: Batch\nname: Bad_Name\ncommand: [echo]\n"))
    assert "hint: fix the named fields and submit again; nothing was created" in err
    _, _, err = run(
        "submit", spec(tmp_path, "kind: Batch\nname: b\ncommand: [echo]\nstorage: data\n")
    )
    assert one_error_line(err) == "error: storage 'data' is not defined (defined: none)"
    assert "hint: define it first: `juliarun storage define data --kind host --path DIR`" in err
    assert "juliarun.define_storage(" not in err


def test_no_hint_names_the_test_environment_scripts() -> None:
    src = SRC / "juliarun"
    offenders = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if "scripts/testenv" in path.read_text()
    ]
    assert offenders == []


def test_cli_hint_falls_back_to_the_hint() -> None:
    from juliarun.cli import cli_hint
    from juliarun.errors import JuliaRunError

    assert cli_hint(JuliaRunError("x", hint="do y"), "juliarun list") == "do y"
    assert cli_hint(SpecError("job", [("a", "b")]), "juliarun submit") == SpecError.default_hint
