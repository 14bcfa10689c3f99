"""Every ```python example in the README runs, in order, as one script — against real Julia, the
test environment's Prefect server, and `juliarun serve` serving the deployments it calls."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytestmark = [pytest.mark.julia, pytest.mark.prefect_server]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_the_two_commands() -> None:
    text = README.read_text()
    assert "scripts/demo" in text and "scripts/test" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci


def test_readme_python_examples_run(tmp_path: Path, served: dict[str, str]) -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 6
    script = tmp_path / "readme_examples.py"
    script.write_text("\n\n".join(blocks))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=served,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr[-4000:]}"
    assert "created, 1 processes waiting" in out or "running" in out
    assert "[JuliaBatch('helloworld')]" in out
    assert re.search(r"^\S+, helloworld-0, hello world!$", out, flags=re.M)
    assert "invalid JuliaBatch: name: must be a DNS-1123 label" in out
    assert "resources.cpu" in out
    assert "7.0" in out
    assert "succeeded" in out
    assert "local" in out
    assert out.rstrip().endswith("Completed")
