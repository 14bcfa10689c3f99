"""Replay of a cloud API's HTTP exchanges for the cloud node providers' tests: a real HTTPS
server on loopback (its own throw-away certificate, trusted through ``REQUESTS_CA_BUNDLE``)
that answers each request with the next response of a cassette and keeps what it was sent.

The SDK under test (azure-mgmt-compute, google-cloud-compute) does everything it does against
the cloud — build the URL, serialize the request body, send it over its own HTTP stack, parse
the response into its models, page, raise its errors — only the far end is the cassette.

A cassette (``tests/unit/data/providers/*.stand-in.json``: hand-written in the API's documented
shapes, no cloud being reachable here; its ``source`` says so) is ``{"source": ...,
"scenarios": {name: [{"request": {"method", "path", "body"?}, "response": {"status",
"headers"?, "body"?}}]}}``; ``path`` holds
the query too (compared as a set of parameters); ``body`` in a request is compared as a
subset of what was sent; ``{base}`` in a response is replaced by the server's URL.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

DATA = Path(__file__).parent / "data" / "providers"


def load(cassette: str, scenario: str) -> list[dict[str, Any]]:
    """The exchanges of ``scenario`` in cassette ``cassette``."""
    data = json.loads((DATA / f"{cassette}.stand-in.json").read_text())
    return list(data["scenarios"][scenario])


def _certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "replay.crt", directory / "replay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Sent:
    """One request the SDK sent (header names in lower case)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any


@dataclass
class Replay:
    """The server's URL (``base``), the exchanges still to come and what was sent."""

    base: str
    ca: Path
    pending: list[dict[str, Any]]
    sent: list[Sent] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def play(self, exchanges: list[dict[str, Any]]) -> None:
        """Queue more exchanges."""
        self.pending.extend(exchanges)

    def check(self) -> None:
        """Every request matched its exchange, and every exchange was played."""
        assert self.mismatches == []
        assert self.pending == [], f"{len(self.pending)} exchange(s) never requested"


def _subset(want: Any, got: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(
            k in got and _subset(v, got[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(want) == len(got)
            and all(_subset(w, g) for w, g in zip(want, got, strict=True))
        )
    return bool(want == got)


def _same_path(want: str, got: str) -> bool:
    w, g = urlsplit(want), urlsplit(got)
    return w.path == g.path and sorted(parse_qsl(w.query)) == sorted(parse_qsl(g.query))


@contextmanager
def replay_server(directory: Path, exchanges: list[dict[str, Any]]) -> Iterator[Replay]:
    """Serve ``exchanges`` over HTTPS on loopback until the block ends."""
    cert, key = _certificate(directory)
    state = Replay("", cert, list(exchanges))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.sent.append(Sent(self.command, self.path, headers, body))
            if not state.pending:
                state.mismatches.append(f"unexpected {self.command} {self.path}")
                self._send(599, {}, {"error": "no exchange left"})
                return
            exchange = state.pending.pop(0)
            want = exchange["request"]
            if want["method"] != self.command or not _same_path(want["path"], self.path):
                state.mismatches.append(
                    f"expected {want['method']} {want['path']}, got {self.command} {self.path}"
                )
            elif "body" in want and not _subset(want["body"], body):
                state.mismatches.append(f"{self.command} {self.path}: body {body!r}")
            answer = exchange["response"]
            text = json.dumps(answer.get("body", "")) if "body" in answer else ""
            headers = {
                k: v.replace("{base}", state.base) for k, v in answer.get("headers", {}).items()
            }
            self._send(answer["status"], headers, text.replace("{base}", state.base))

        def _send(self, status: int, headers: Mapping[str, str], body: Any) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.base = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
