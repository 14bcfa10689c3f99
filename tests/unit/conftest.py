"""Fixtures for unit tests that run real local jobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.local_jobs import clean_home


@pytest.fixture
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private JULIARUN_HOME with fast polling. At teardown every job left in it is
    force-deleted, and any of its processes still alive is killed and fails the test."""
    home = tmp_path / "home"
    monkeypatch.setenv("JULIARUN_HOME", str(home))
    monkeypatch.setenv("JULIARUN_POLL_INTERVAL", "0.05")
    monkeypatch.setenv("JULIARUN_KILL_GRACE", "5")
    monkeypatch.delenv("JULIARUN_CLUSTER", raising=False)
    yield home
    leftovers = clean_home(home)
    assert not leftovers, f"processes left behind: {leftovers}"
