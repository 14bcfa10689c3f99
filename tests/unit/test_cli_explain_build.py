"""`juliarun explain KIND` from the spec models, and the build progress the command line and
the flows share (steps read from a builder's output, timed by an injected clock)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from juliarun.builders.progress import Step, StepTracker, log_progress
from juliarun.cli import app
from juliarun.cli_progress import RichBuildProgress
from juliarun.explain import KINDS, fields
from juliarun.specs import Resources

runner = CliRunner()


def test_explain_lists_every_field_with_type_default_and_description() -> None:
    result = runner.invoke(app, ["explain", "JuliaParBatchWorkers"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("JuliaParBatchWorkers: `nworkers` copies of a Julia script")
    header = lines.index("fields (* required):")
    assert lines[header + 1] == "  kind (JuliaParBatchWorkers, default 'JuliaParBatchWorkers')"
    body = "\n".join(lines)
    assert "  name * (string)\n      Job name (a DNS-1123 label, unique per cluster)." in body
    assert "  script * (string)" in body
    assert "  nworkers (integer, default 1)\n      Number of workers." in body
    assert "  resources.node_type (gpu | spot | highmem | highcpu or null, default None)" in body
    rows = {row.name: row for row in fields("JuliaParBatchWorkers")}
    assert (rows["nworkers"].type, rows["nworkers"].default) == ("integer", "1")
    assert rows["restart"].default == "'OnFailure'"  # the kind's own default, not the base's
    assert set(Resources.model_fields) == {
        name.removeprefix("resources.") for name in rows if name.startswith("resources.")
    }
    for kind in KINDS:
        for row in fields(kind):
            assert row.description, f"{kind}.{row.name} has no description"


def test_explain_of_an_unknown_kind_names_the_kinds() -> None:
    result = runner.invoke(app, ["explain", "JuliaBtach"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        "error: invalid arguments: kind: must be one of JuliaBatch, JuliaParBatchWorkers, "
        "Batch, Storage, Image, Bundle (got 'JuliaBtach')"
    )
    assert result.stderr.splitlines()[1] == (
        "hint: `juliarun explain JuliaBatch` shows a job kind's fields"
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def step_started(self, step: Step) -> None:
        self.events.append(("start", step))

    def step_done(self, step: Step, seconds: float) -> None:
        self.events.append(("done", (step.index, seconds)))

    def line(self, text: str) -> None:
        self.events.append(("line", text))


def test_steps_of_both_builders_and_the_push_are_timed() -> None:
    ticks = iter([10.0, 12.0, 15.0, 16.5, 20.0])
    recorder = Recorder()
    track = StepTracker(recorder, clock=lambda: next(ticks))
    track("juliarun-step: using Statistics")
    track("loaded Statistics")
    track("juliarun-step: Pkg.precompile()")
    track("Step 2/2 : RUN true")
    track("The push refers to repository [localhost:5000/x]")
    track("pushed")
    track.finish()
    assert recorder.events == [
        ("start", Step(1, None, "using Statistics")),
        ("line", "loaded Statistics"),
        ("done", (1, 2.0)),
        ("start", Step(2, None, "Pkg.precompile()")),
        ("done", (2, 3.0)),
        ("start", Step(2, 2, "RUN true")),
        ("done", (2, 1.5)),
        ("start", Step(3, None, "push to localhost:5000/x")),
        ("line", "pushed"),
        ("done", (3, 3.5)),
    ]
    assert [(s.title, t) for s, t in track.steps][-1] == ("push to localhost:5000/x", 3.5)


def test_log_progress_is_what_a_flow_logs() -> None:
    logged: list[str] = []
    ticks = iter([0.0, 4.0])
    track = StepTracker(log_progress(logged.append), clock=lambda: next(ticks))
    track("Step 1/1 : FROM debian")
    track("\x1b[31mred\x1b[0m")
    track.finish()
    assert logged == ["step 1/1: FROM debian", "  | \\x1b[31mred\\x1b[0m", "step 1/1 done in 4.0s"]


@pytest.mark.parametrize("terminal", [True, False])
def test_the_terminal_view_folds_lines_under_the_step(terminal: bool) -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=terminal, color_system=None)
    progress = RichBuildProgress(console, "bundle b", folded=2)
    with progress:
        progress.step_started(Step(1, 2, "FROM x"))
        for n in range(4):
            progress.line(f"line {n} \x1b[2J")
        if terminal:
            assert list(progress.lines) == ["line 2 \\x1b[2J", "line 3 \\x1b[2J"]
        progress.step_done(Step(1, 2, "FROM x"), 2.0)
        progress.failed(["last words"])
    text = out.getvalue()
    assert "\x1b[2J" not in text  # a builder's escape sequences never reach the terminal
    if terminal:
        assert "bundle b: step 1/2 ✓ FROM x (2.0s)" in text
        assert "  | last words" in text
    else:
        assert text.splitlines() == [
            "bundle b: step 1/2: FROM x",
            "  | line 0 \\x1b[2J",
            "  | line 1 \\x1b[2J",
            "  | line 2 \\x1b[2J",
            "  | line 3 \\x1b[2J",
            "bundle b: step 1/2 done in 2.0s",
        ]


def test_every_command_of_the_readme_reference_exists() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("```console\n", 1)[1].split("```", 1)[0]
    checked = 0
    for line in section.splitlines():
        words = line.split("#", 1)[0].split()
        assert words[0] == "juliarun", line
        path = []
        for word in words[1:]:
            if not re.fullmatch(r"[a-z]+", word):
                break
            path.append(word)
        result = runner.invoke(app, [*path, "-h"])
        assert result.exit_code == 0 and f"Usage: juliarun {' '.join(path)}" in result.stdout, line
        checked += 1
    assert checked == len(section.splitlines()) >= 18
