"""Every ```python example in the README runs, in order, as one script — against real Julia, the
test environment's Prefect server, and `juliarun serve` serving the deployments it calls."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytestmark = [pytest.mark.julia, pytest.mark.prefect_server]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def served(
    tmp_path: Path, prefect_api_url: str, julia: str, juliarun_home: Path
) -> Iterator[dict[str, str]]:
    """`juliarun serve` running against the test Prefect server, sharing JULIARUN_HOME."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "JULIARUN_HOME": str(juliarun_home)}
    started = datetime.now(UTC)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "juliarun.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _served(prefect_api_url, "run-job/run-job", since=started):
            text = (tmp_path / "serve.log").read_text(errors="replace")
            assert proc.poll() is None, f"juliarun serve exited:\n{text}"
            assert time.monotonic() < deadline, f"run-job was not served in time:\n{text}"
            time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _served(api_url: str, name: str, since: datetime) -> bool:
    """The deployment exists and was (re)registered by this serve process."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        try:
            deployment = client.read_deployment_by_name(name)
        except Exception:
            return False
    updated = deployment.updated or deployment.created
    return updated is not None and updated >= since


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
