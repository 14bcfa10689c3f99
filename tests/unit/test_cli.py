"""The `juliarun` command line on the local backend: the seed's verbs, and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from juliarun.cli import app

runner = CliRunner()


@pytest.fixture
def home(juliarun_home: Path) -> Path:
    return juliarun_home


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_submit_wait_list_tail_search_delete(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "kind: Batch\nname: greeter\n"
        "command: [bash, -c, 'echo hello from the cli; sleep 0.3; echo oops >&2']\n"
    )
    code, out = run("submit", str(spec), "--wait")
    assert code == 0, out
    assert re.search(r"^\S+, greeter-0, hello from the cli$", out, flags=re.M)
    assert "greeter: succeeded" in out
    code, out = run("list")
    assert code == 0 and "greeter" in out and "succeeded" in out
    code, out = run("tail", "greeter", "-n", "1")
    assert code == 0 and out.strip().endswith("greeter-0, oops")
    code, out = run("logs", "search", "hello cli")
    assert code == 0 and "greeter: " in out and "hello from the cli" in out
    code, out = run("logs", "search", "--regex", "^oo")
    assert code == 0 and "oops" in out and "hello" not in out
    code, out = run("status", "greeter")
    assert code == 0 and "succeeded" in out
    code, out = run("delete", "greeter")
    assert code == 0 and out.strip() == "deleted job greeter"
    code, out = run("list")
    assert "greeter" not in out


def test_status_prints_the_cluster_view(home: Path) -> None:
    code, out = run("status")
    assert code == 0
    for section in ("Components", "Pods waiting", "Nodes (resource free pct)"):
        assert section in out


def test_storage_define_and_list(home: Path, tmp_path: Path) -> None:
    code, out = run("storage", "define", "data", "--path", str(tmp_path / "d"))
    assert code == 0 and (tmp_path / "d").is_dir()
    code, out = run("storage", "list")
    assert code == 0 and out.startswith("data\thost\t")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("kind: Batch\nname: Bad_Name\ncommand: [echo]\n", "name: must be a DNS-1123 label"),
        ("kind: JuliaBatch\nname: j\nscript: x.jl\ncpu: '-1'\n", "resources.cpu"),
        ("kind: JuliaBatch\nname: j\nscript: x.jl\nmemory: lots\n", "resources.memory"),
        ("kind: Batch\nname: b\ncommand: [echo]\ncolour: red\n", "colour: unknown field"),
        ("kind: Nope\nname: b\n", "kind: must be one of"),
        ("kind: Batch\nname: b\ncommand: [echo]\nstorage: missing\n", "storage 'missing'"),
        ("[unbalanced", "not valid YAML"),
    ],
)
def test_bad_specs_fail_with_one_clear_line_and_create_nothing(
    home: Path, tmp_path: Path, yaml_text: str, expected: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml_text)
    code, out = run("submit", str(spec))
    assert code == 1
    assert expected in out
    assert "Traceback" not in out
    assert not (home / "clusters" / "local" / "jobs").exists() or not any(
        (home / "clusters" / "local" / "jobs").iterdir()
    )


def test_unknown_job_is_a_one_line_error(home: Path) -> None:
    code, out = run("delete", "ghost")
    assert code == 1
    assert "job 'ghost' not found" in out and "Traceback" not in out


def test_scale_rejects_batch_jobs(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("kind: Batch\nname: sleeper\ncommand: [sleep, '30']\n")
    assert run("submit", str(spec))[0] == 0
    code, out = run("scale", "sleeper", "2")
    assert code == 1 and "only JuliaParBatchWorkers jobs can be scaled" in out
    assert run("delete", "--force", "sleeper")[0] == 0
