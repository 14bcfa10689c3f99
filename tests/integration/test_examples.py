"""Every job spec in examples/ is submitted with `juliarun submit --wait` on the local backend
and runs real Julia (or a shell) to success; the README's spec-file section shows one of them
as it is and its commands work as written; `juliarun explain` shows each kind's example."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from juliarun.cli import app
from juliarun.specs import validate_spec

pytestmark = pytest.mark.julia

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def job_examples() -> list[Path]:
    return sorted(
        p
        for p in EXAMPLES.glob("*.yaml")
        if yaml.safe_load(p.read_text())["kind"] not in ("Image", "Bundle")
    )


def test_there_is_one_example_per_job_kind() -> None:
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in job_examples())
    assert kinds == ["Batch", "JuliaBatch", "JuliaParBatchWorkers"]
    for path in job_examples():
        assert path.name == f"{yaml.safe_load(path.read_text())['kind'].lower()}.yaml"


EXPECTED = {
    "juliabatch.yaml": ("hello", [r"hello-0, hello world!", r"hello-0, sum of 1:10 = 55"]),
    "juliaparbatchworkers.yaml": (
        "workers",
        [r"workers-0, worker 0 of 2 up", r"workers-1, worker 1 of 2 up"],
    ),
    "batch.yaml": ("shell", [r"shell-0, hello from shell-0", r"shell-0, a warning"]),
}


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_each_example_runs_to_success(julia: str, juliarun_home: Path, example: str) -> None:
    name, lines = EXPECTED[example]
    assert run("storage", "define", "examples", "--path", str(EXAMPLES))[0] == 0
    code, out, err = run("submit", str(EXAMPLES / example), "--wait")
    assert code == 0, out + err
    for line in lines:
        assert re.search(rf"^\S+, {re.escape(line)}$", out, flags=re.M), out
    assert out.rstrip().endswith(f"{name}: succeeded")
    assert run("delete", name)[:2] == (0, f"deleted job {name}\n")


def test_the_readme_spec_section_shows_an_example_and_its_commands_work(
    julia: str, juliarun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Spec files", 1)[1].split("\n## ", 1)[0]
    shown = re.search(r"^```yaml\n(.*?)^```", section, flags=re.S | re.M)
    assert shown is not None
    assert shown.group(1) == (EXAMPLES / "juliabatch.yaml").read_text()
    validate_spec(yaml.safe_load(shown.group(1)))
    commands = re.search(r"^```console\n(.*?)^```", section, flags=re.S | re.M)
    assert commands is not None
    monkeypatch.chdir(ROOT)
    outputs = []
    for line in commands.group(1).splitlines():
        words = shlex.split(line.split("#", 1)[0].replace("$PWD", str(ROOT)))
        assert words[0] == "juliarun", line
        code, out, err = run(*words[1:])
        assert code == 0, f"{line}: {out}{err}"
        outputs.append(out)
    assert "hello-0, hello world!" in outputs[1] and "hello: succeeded" in outputs[1]
    assert outputs[2] == "deleted job hello\n"


@pytest.mark.parametrize("kind", ["JuliaBatch", "JuliaParBatchWorkers", "Batch", "Bundle", "Image"])
def test_explain_shows_the_example_of_each_kind(kind: str) -> None:
    code, out, _ = run("explain", kind)
    assert code == 0
    example = next(
        p for p in EXAMPLES.glob("*.yaml") if yaml.safe_load(p.read_text())["kind"] == kind
    )
    assert f"example (examples/{example.name}):" in out
    assert out.rstrip().endswith(example.read_text().rstrip())
