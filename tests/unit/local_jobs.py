"""Helpers for tests that run real jobs on the local backend: polling with a deadline, process
liveness, and cleaning a JULIARUN_HOME of every job and process it still has."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

from juliarun.backends.local import LocalBackend
from juliarun.errors import JobNotFoundError

T = TypeVar("T")


def eventually(
    check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``check`` until it returns something truthy (which is returned); fail after
    ``timeout`` seconds with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: last {value!r}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return bool(members)


def processes_of(home: Path) -> list[psutil.Process]:
    """Live processes belonging to jobs under ``home``: supervisors (their job directory is on
    the command line) and workers (their ``JULIARUN_MNT`` is under it)."""
    found = []
    root = str(home)
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(root in arg for arg in proc.cmdline()) or proc.environ().get(
                "JULIARUN_MNT", ""
            ).startswith(root):
                found.append(proc)
    return found


def clean_home(home: Path) -> list[str]:
    """Force-delete every job of every cluster under ``home``, then kill any process of theirs
    still alive; returns those leftovers (a test that leaks processes should fail)."""
    clusters = home / "clusters"
    for cluster in sorted(clusters.iterdir()) if clusters.is_dir() else []:
        backend = LocalBackend(home, cluster=cluster.name, kill_grace=0)
        jobs = cluster / "jobs"
        for jobdir in sorted(jobs.iterdir()) if jobs.is_dir() else []:
            if (jobdir / "job.json").exists():
                with contextlib.suppress(JobNotFoundError):
                    backend.delete(jobdir.name, force=True)
    leftovers = []
    for proc in processes_of(home):
        with contextlib.suppress(psutil.Error):
            leftovers.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            proc.kill()
    return leftovers
