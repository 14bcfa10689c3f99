"""Test-wide setup: endpoints of the real-service environment, and fixture plugins."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Fixture modules for each real component (tests/integration/fixtures/<component>.py).
pytest_plugins = [
    f"tests.integration.fixtures.{p.stem}"
    for p in sorted((ROOT / "tests" / "integration" / "fixtures").glob("*.py"))
    if not p.stem.startswith("_")
]


def _load_testenv_endpoints() -> None:
    """Apply `scripts/testenv env` for variables the caller has not set, so a bare `pytest`
    after `scripts/testenv up` finds every endpoint."""
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "testenv"), "env"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    for line in out.splitlines():
        parts = shlex.split(line)
        if len(parts) == 2 and parts[0] == "export" and "=" in parts[1]:
            key, _, value = parts[1].partition("=")
            os.environ.setdefault(key, value)


_load_testenv_endpoints()
