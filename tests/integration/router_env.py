"""Shared parts of the router's integration tests and bench: a router replica as a real process
(``python -m juliarun.router``), an upstream that echoes what it received, two tenants bound to
test users of the two real issuers, and raw HTTP for paths a client library would normalize."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RouterProcess:
    """One router replica running as its own process."""

    url: str
    port: int
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def router_config(
    tmp: Path,
    *,
    routes: dict[str, Any],
    kubeconfig: str,
    public_url: str = "http://127.0.0.1:8080",
    **extra: Any,
) -> Path:
    """A router config trusting the issuers of the apiserver's authentication configuration."""
    key = tmp / "router-key.json"
    if not key.exists():
        from joserfc.jwk import ECKey

        key.write_text(json.dumps(ECKey.generate_key("P-256").as_dict(private=True)))
        key.chmod(0o600)
    config = {
        "authentication_config": os.environ.get(
            "JULIARUN_OIDC_AUTHN_CONFIG",
            str(Path.home() / ".cache/juliarun/oidc/authentication-config.yaml"),
        ),
        "kubeconfig": kubeconfig,
        "routes": routes,
        "signing_key": str(key),
        "public_url": public_url,
        **extra,
    }
    path = tmp / f"router-{len(list(tmp.glob('router-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_router(config: Path, port: int | None = None, *, timeout: float = 60) -> RouterProcess:
    port = port or free_port()
    log = config.with_suffix(f".{port}.log")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "juliarun.router", "--config", str(config), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"router exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/.juliarun/healthz", timeout=1).status_code == 200:
                return RouterProcess(url, port, config, proc, log)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"router did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@contextmanager
def prefect_server(root: Path, port: int, **settings: str) -> Iterator[str]:
    """A Prefect server of the test's own on ``port`` (home ``root``, ``settings`` as
    ``PREFECT_*`` variables): its API and UI only (no scheduler or other services, no block
    registration: quicker to start), until healthy; yields its API URL, stops it by its PID."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(root),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    }
    env.pop("PREFECT_API_URL", None)
    env.update(settings)
    api = f"http://127.0.0.1:{port}/api"
    log = root / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port), "--no-services"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not healthy:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class EchoHandler(BaseHTTPRequestHandler):
    """Answers with what it received: method, path, headers (every value of each), body.
    ``/stream`` sends ``one``, waits for the test's ``release`` event, then sends ``two``."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle's algorithm and the
        # peer's delayed ACK add 40 ms to every keep-alive response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"one\n", b"two\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                if part == b"one\n":
                    self.release.wait(30)
            self.wfile.write(b"0\r\n\r\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        data = json.dumps(
            {"method": self.command, "path": self.path, "headers": headers, "body": body.decode()}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        EchoHandler.release.set()
        server.shutdown()
        server.server_close()


def raw_request(port: int, target: str, token: str | None = None) -> int:
    """The status of ``GET target`` sent byte for byte (no client-side path normalization)."""
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        first = s.makefile("rb").readline().decode()
    return int(first.split()[1])


ROUTER_PACKAGES = [
    *("httpx", "joserfc", "pydantic", "pydantic-settings", "pyyaml", "uvicorn", "websockets"),
    *("httptools", "uvloop", "rich", "click", "python-dotenv", "aiohttp"),
]


def router_image(base_image: str, registry: str) -> str:
    """The router's image (src/juliarun/router/Dockerfile), built once per source version and
    pushed to the test registry; the wheels come from ``pip download`` on this machine."""
    import hashlib
    import shutil

    src = ROOT / "src" / "juliarun"
    digest = hashlib.sha256(base_image.encode())
    for path in sorted(src.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(src)).encode() + path.read_bytes())
    ref = f"{registry}/juliarun/router:{digest.hexdigest()[:12]}"
    found = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False)
    if found.returncode == 0:
        subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True)
        return ref
    cache = Path.home() / ".cache" / "juliarun" / "router-build"
    wheels = cache / f"wheels-{hashlib.sha256(' '.join(ROUTER_PACKAGES).encode()).hexdigest()[:8]}"
    if not any(wheels.glob("*.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels),
             "--only-binary=:all:", "--python-version", "3.11",
             "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
             "--platform", "manylinux_2_28_x86_64", "--platform", "any", *ROUTER_PACKAGES],
            check=True,
        )  # fmt: skip
    context = cache / "context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    shutil.copytree(src, context / "juliarun", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(wheels, context / "wheels")
    subprocess.run(
        ["docker", "build", "-q", "-f", str(context / "juliarun/router/Dockerfile"),
         "--build-arg", f"BASE={base_image}", "-t", ref, str(context)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True)
    return ref
