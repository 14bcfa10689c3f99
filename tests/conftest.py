"""Test-wide setup: endpoints of the real-service environment, fixture plugins, and what lets
the suite run on several pytest-xdist workers at once (docs/testing.md): a private JULIARUN_HOME
per test process, the ``serial`` marker, and xdist groups for tests that share a named thing."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent

# Tests that use a name fixed machine-wide run on one xdist worker, one after another
# (docs/testing.md). Tests using these fixtures are put there automatically: they start `juliarun
# serve` on the shared Prefect server, every serve process registers the same deployments
# (run-job/run-job, ...) and a run may be picked up by any of them alive.
SHARED_NAMES_GROUP = "shared-names"
SERVE_FIXTURES = frozenset({"serve_juliarun", "served"})
SERVE_FIXTURES_MODULE = "tests.integration.fixtures.prefect"
# Tests with kwok nodes run on one xdist worker too: a job's pods go to any node of its node type
# (highcpu, highmem, gpu, spot...) and status views are cluster-wide, so one test's nodes would
# take another test's pods. Marked `kwok` or using the `kwok_nodes` fixture puts a test there.
KWOK_GROUP = "kwok-nodes"
KWOK_FIXTURES = frozenset({"kwok_nodes"})

# Example timing is not what any test here asserts; on a loaded machine (several xdist workers on
# two cores) a 200 ms deadline per example only makes property tests flaky. Tests that set their
# own @settings keep them.
settings.register_profile("juliarun", deadline=None)
settings.load_profile("juliarun")

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


_HOME_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """A private JULIARUN_HOME for this test process (one per xdist worker), so that nothing a
    test runs without its own ``juliarun_home`` lands in the user's ~/.juliarun or in another
    worker's home. Tests that need a fresh home still take the ``juliarun_home`` fixture."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    home = Path(tempfile.mkdtemp(prefix=f"juliarun-test-home-{worker}-"))
    os.environ["JULIARUN_HOME"] = str(home)
    config.stash[_HOME_KEY] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_HOME_KEY, None)
    if home is None:
        return
    if any(home.iterdir()):  # force-delete any job a test left behind, as juliarun_home does
        from juliarun.backends.local import LocalBackend

        backend = LocalBackend(home)
        for job in backend.jobs():
            backend.delete(job.name, force=True)
    shutil.rmtree(home, ignore_errors=True)


_SUPERVISOR_LOGS = 5  # at most this many logs per failed test, the last 20 lines of each


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the logs of the job supervisors it started (under its
    ``tmp_path``): a job that failed as "the job's supervisor exited unexpectedly" says why
    only there, and a CI machine's temporary directories are gone once the run ends."""
    report = yield
    if report.failed and report.when in ("call", "teardown"):
        funcargs = getattr(item, "funcargs", {})
        root = funcargs.get("tmp_path")
        if isinstance(root, Path) and root.is_dir():
            logs = sorted(root.rglob("supervisor.log"), key=lambda p: p.stat().st_mtime)
            for log in logs[-_SUPERVISOR_LOGS:]:
                with contextlib.suppress(OSError):
                    tail = log.read_text(errors="replace").splitlines()[-20:]
                    report.sections.append((f"supervisor log {log}", "\n".join(tail)))
    return report


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _shared_serve(item: pytest.Item) -> bool:
    """Whether the test takes a `juliarun serve` fixture of the shared Prefect server (those of
    ``tests/integration/fixtures/prefect.py``); a module's own fixture of the same name, serving
    on a private Prefect server (the browser tests'), shares nothing."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {}) if info is not None else {}
    for name in SERVE_FIXTURES & set(getattr(item, "fixturenames", ())):
        chain = defs.get(name, ())  # overridden ones first: the last is the one used
        if chain and getattr(chain[-1].func, "__module__", "") == SERVE_FIXTURES_MODULE:
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _shared_serve(item):
            item.add_marker(pytest.mark.xdist_group(SHARED_NAMES_GROUP))
        if item.get_closest_marker("kwok") or KWOK_FIXTURES & fixtures:
            item.add_marker(pytest.mark.xdist_group(KWOK_GROUP))
        groups = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default"))
            for m in item.iter_markers("xdist_group")
        }
        # xdist would make a new group of their union, sharing nothing with either
        if len(groups) > 1 and not item.get_closest_marker("serial"):
            raise pytest.UsageError(
                f"{item.nodeid} is in xdist groups {sorted(groups)}: a test may be in one only;"
                " mark it serial instead (docs/testing.md)"
            )
    if _is_xdist_worker(config):
        # A `serial` test must not share the machine: never run one next to other workers
        # (scripts/test runs them in a second, single-process phase: `-m serial`).
        serial = [item for item in items if item.get_closest_marker("serial")]
        if serial:
            items[:] = [item for item in items if not item.get_closest_marker("serial")]
            config.hook.pytest_deselected(items=serial)
