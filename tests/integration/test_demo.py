"""End to end: `juliarun demo` runs the seed's session through Prefect with real Julia."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.julia, pytest.mark.prefect_server]


def test_demo_runs_the_seed_session(
    tmp_path: Path, julia: str, prefect_api_url: str, juliarun_home: Path
) -> None:
    env = {**os.environ, "JULIARUN_HOME": str(juliarun_home), "PREFECT_API_URL": prefect_api_url}
    proc = subprocess.run(
        [sys.executable, "-m", "juliarun.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "Components" in out and "Nodes (resource free pct)" in out
    assert re.search(r"^\S+, helloworld-0, hello world!$", out, flags=re.M)
    for worker in ("workers-0", "workers-1", "workers-2"):
        assert re.search(rf"^\S+, {worker}, {worker} done$", out, flags=re.M)
        assert f"{worker}: 3" in out  # items_processed recorded from inside Julia
    assert out.count("\nTrue\n") == 2
    assert "demo finished" in out
