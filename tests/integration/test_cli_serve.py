"""`juliarun serve` stopped (Ctrl-C) after its Prefect server went away: it stops promptly
instead of retrying the dead server for minutes. A private Prefect server, killed for real."""

from __future__ import annotations

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


def _wait(check: object, what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} in {timeout:.0f}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def test_ctrl_c_after_the_server_died_stops_at_once(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "JULIARUN_HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PREFECT_API_URL", None)
    server_log = tmp_path / "server.log"
    with open(server_log, "wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    serve_log = tmp_path / "serve.log"
    serve = None
    try:
        _wait(lambda: _healthy(url), "the private Prefect server was not healthy", 120, server_log)
        with open(serve_log, "wb") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "juliarun.cli", "serve"],
                env={**env, "PREFECT_API_URL": url},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(
            lambda: "polling for scheduled runs" in serve_log.read_text(errors="replace"),
            "juliarun serve did not serve",
            120,
            serve_log,
        )
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        time.sleep(float(os.environ.get("CLI_SERVE_DELAY", "15")))  # serve notices: retries
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
        keep = tmp_path.parent / "kept-serve.log"
        keep.write_text(text)
    finally:
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
