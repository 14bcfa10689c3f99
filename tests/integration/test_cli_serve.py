"""`juliarun serve` stopped (Ctrl-C) after its Prefect server went away: it stops promptly
instead of retrying the dead server for minutes. A private Prefect server, killed for real."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.prefect_server]

SRC = Path(__file__).resolve().parents[2] / "src"


RUN_JOB = """
from prefect.deployments import run_deployment
job = {"kind": "Batch", "name": "sleeper", "command": ["sh", "-c", "echo up; sleep 120"]}
run_deployment("run-job/run-job", parameters={"job": job}, timeout=0)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _deployment(url: str, name: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/deployments/name/{name}", timeout=10) as resp:
        body: dict[str, object] = json.load(resp)
    return body


def _wait(check: object, what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} in {timeout:.0f}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def test_ctrl_c_after_the_server_died_stops_at_once(tmp_path: Path) -> None:
    """With the server up Ctrl-C is Prefect's own graceful stop. With it gone and a run in
    progress, it took 72s here before (the runner pauses schedules and waits for the run,
    each call retrying the dead server); now well under a second."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _private_env(tmp_path)
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = _start_server(port, env, server_log)
    serve = None

    try:
        _wait(lambda: _healthy(url), "the private Prefect server was not healthy", 120, server_log)
        # With the server up, Ctrl-C is Prefect's graceful stop.
        serve = _start_serve(url, env, serve_log)
        assert _deployment(url, "cluster-report/cluster-report")["name"] == "cluster-report"
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0, serve_log.read_text()[-3000:]
        text = serve_log.read_text(errors="replace")
        assert "does not answer" not in text and "Traceback" not in text, text[-3000:]
        serve = _start_serve(url, env, serve_log)
        # a run of run-job in progress when the server dies
        subprocess.run(
            [sys.executable, "-c", RUN_JOB],
            env={**env, "PREFECT_API_URL": url},
            check=True,
            timeout=60,
        )
        _wait(
            lambda: "sleeper-0 | up" in serve_log.read_text(errors="replace"),
            "the run did not start",
            120,
            serve_log,
        )
        time.sleep(3)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        time.sleep(3)  # serve and the run notice: they retry
        started = time.monotonic()
        serve.send_signal(signal.SIGINT)
        try:
            code = serve.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running 120s after Ctrl-C:\n{serve_log.read_text()[-3000:]}")
        took = time.monotonic() - started
        text = serve_log.read_text(errors="replace")
        print(f"serve stopped {took:.1f}s after Ctrl-C (exit {code})")
        assert took < 20, f"stopping took {took:.0f}s:\n{text[-3000:]}"
        assert code == 130, text[-3000:]
        from juliarun.backends.local import LocalBackend

        backend = LocalBackend(tmp_path / "home")
        assert backend.status("sleeper").phase == "running"  # the job was left running
        where = url.removesuffix("/api")
        assert f"error: the Prefect server at {where} does not answer: stopped at once" in text
    finally:
        from juliarun.backends.local import LocalBackend

        for job in LocalBackend(tmp_path / "home").jobs():
            LocalBackend(tmp_path / "home").delete(job.name, force=True)
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


SERVER = (sys.executable, "-m", "prefect", "server", "start")


def _private_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a private Prefect server and `juliarun serve` under ``tmp_path``."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "JULIARUN_HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PREFECT_API_URL", None)
    return env


def _start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*SERVER, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _start_serve(url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "juliarun.cli", "serve"],
            env={**env, "PREFECT_API_URL": url},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _wait(
        lambda: "polling for scheduled runs" in log.read_text(errors="replace"),
        "juliarun serve did not serve",
        120,
        log,
    )
    return proc


def test_sigterm_stops_as_ctrl_c_does(tmp_path: Path) -> None:
    """SIGTERM (what a service manager or `kill` sends) is Ctrl-C's twin: with the server up a
    graceful stop (exit 0); with it gone an immediate stop (exit 143 and
    one line; the run in progress ended, its job left running). Before, Prefect's runner took
    SIGTERM over and, with a run in progress, retried the dead server for more than 15 s."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _private_env(tmp_path)
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = _start_server(port, env, server_log)
    serve = None
    try:
        _wait(lambda: _healthy(url), "the private Prefect server was not healthy", 120, server_log)
        serve = _start_serve(url, env, serve_log)
        assert _deployment(url, "cluster-report/cluster-report")["name"] == "cluster-report"
        # the Storage block type is registered: the UI offers to save the storage jobs name
        with urllib.request.urlopen(f"{url}/block_types/slug/juliarun-storage", timeout=10) as r:
            assert json.load(r)["name"] == "juliarun Storage"
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, serve_log.read_text()[-3000:]
        text = serve_log.read_text(errors="replace")
        assert "does not answer" not in text and "Traceback" not in text, text[-3000:]
        serve = _start_serve(url, env, serve_log)
        # a run of run-job in progress when the server dies
        subprocess.run(
            [sys.executable, "-c", RUN_JOB],
            env={**env, "PREFECT_API_URL": url},
            check=True,
            timeout=60,
        )
        _wait(
            lambda: "sleeper-0 | up" in serve_log.read_text(errors="replace"),
            "the run did not start",
            120,
            serve_log,
        )
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        time.sleep(3)  # serve notices: it retries
        started = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        try:
            code = serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running 60s after SIGTERM:\n{serve_log.read_text()[-3000:]}")
        took = time.monotonic() - started
        text = serve_log.read_text(errors="replace")
        print(f"serve stopped {took:.1f}s after SIGTERM (exit {code})")
        assert took < 10, f"stopping took {took:.0f}s:\n{text[-3000:]}"
        assert code == 143, text[-3000:]
        where = url.removesuffix("/api")
        assert f"error: the Prefect server at {where} does not answer: stopped at once" in text
        assert "flow runs in progress ended unreported: 1" in text
        from juliarun.backends.local import LocalBackend

        backend = LocalBackend(tmp_path / "home")
        assert backend.status("sleeper").phase == "running"  # the job was left running
    finally:
        from juliarun.backends.local import LocalBackend

        for job in LocalBackend(tmp_path / "home").jobs():
            LocalBackend(tmp_path / "home").delete(job.name, force=True)
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
