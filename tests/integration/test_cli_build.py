"""`juliarun build bundle|image` on real builders: each step shown as it starts and with the
time it took, the builder's lines under it, the result on stdout; an unchanged spec is not
built again; a failing step is one error line naming it, after its output."""

from __future__ import annotations

import re
from pathlib import Path

import docker
import pytest
import yaml
from typer.testing import CliRunner

from juliarun.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.julia
def test_build_bundle_shows_its_steps(julia: str, juliarun_home: Path) -> None:
    code, out, err = run("build", "bundle", str(ROOT / "examples" / "bundle.yaml"))
    assert code == 0, err
    assert re.fullmatch(r"stats: built at \S+ \(\d+ packages compiled\)\n", out), out
    steps = [line for line in err.splitlines() if not line.startswith("  | ")]
    assert steps[0] == "bundle stats: step 1: using Statistics"
    assert re.fullmatch(r"bundle stats: step 1 done in \d+\.\ds", steps[1])
    assert steps[2] == "bundle stats: step 2: Pkg.precompile()"
    assert re.fullmatch(r"bundle stats: step 2 done in \d+\.\ds", steps[3])
    assert "  | loaded Statistics" in err.splitlines()  # the builder's own line, under its step
    code, out, err = run("build", "bundle", str(ROOT / "examples" / "bundle.yaml"))
    assert code == 0 and re.fullmatch(r"stats: up to date at \S+ \(\d+ packages compiled\)\n", out)
    assert err == "  | bundle stats at " + out.split(" at ")[1].split("/")[-1].split(" ")[0] + (
        " is built already\n"
    )


@pytest.mark.docker
def test_build_image_shows_its_steps_and_a_failing_step(
    docker_client: docker.DockerClient,
    registry: str,
    julia_image: str,
    docker_labels: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = yaml.safe_load((ROOT / "examples" / "image.yaml").read_text())
    data |= {"base": julia_image, "labels": docker_labels, "name": "juliarun/test-cli-build"}
    spec = tmp_path / "image.yaml"
    spec.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(ROOT)  # the example's files are relative to the repository
    code, out, err = run("build", "image", str(spec), "--registry", registry)
    assert code == 0, err
    assert re.fullmatch(
        rf"{re.escape(registry)}/juliarun/test-cli-build:[0-9a-f]{{12}}: built and pushed\n", out
    )
    lines = err.splitlines()
    first = re.fullmatch(r"image juliarun/test-cli-build: step 1/(\d+): FROM (\S+)", lines[0])
    assert first is not None and first.group(2) == julia_image, lines[0]
    total = int(first.group(1))
    titles = [
        line.split(": ", 2)[2] for line in lines if re.match(r"image \S+: step \d+/\d+: ", line)
    ]
    assert len(titles) == total and "RUN julia --startup-file=no /opt/app/hello.jl" in titles
    done = [line for line in lines if re.search(rf": step \d+/{total} done in \d+\.\ds$", line)]
    assert len(done) == total
    assert "  | hello world!" in lines  # the RUN step's own output, folded under it
    assert any(
        line.startswith(f"image juliarun/test-cli-build: step {total + 1}: push to ")
        for line in lines
    )

    data["run"] = ["echo about to fail; exit 3"]
    spec.write_text(yaml.safe_dump(data))
    code, out, err = run("build", "image", str(spec), "--registry", registry, "--no-push")
    assert code == 1 and out == ""
    assert "  | about to fail" in err.splitlines()
    error = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error == [
        f"error: image build of {registry}/juliarun/test-cli-build:"
        + re.search(r"test-cli-build:([0-9a-f]{12})", err).group(1)  # type: ignore[union-attr]
        + " failed at step: RUN echo about to fail; exit 3"
    ]
