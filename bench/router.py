"""The authenticating router's cost, same run: requests per second and p50/p99 latency of a tiny
upstream reached directly, through nginx (Debian's, a plain reverse proxy) and through juliarun's
router (bearer token checked, authorization cached), and the latency each proxy adds.

    .venv/bin/python bench/router.py [--requests 3000] [--seconds 5] [--concurrency 8]

Needs nginx and wrk (``apt-get install nginx-light wrk``), the test issuers and the
test apiserver (scripts/testenv up oidc kubernetes). The upstream is nginx answering a fixed
200, so the numbers are the proxies' own. Latency: sequential requests on one keep-alive
connection (a raw socket client, µs resolution); throughput: ``wrk`` (one thread) with
``--concurrency`` connections.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.router_env import free_port, router_config, start_router

from juliarun.backends.kubernetes import KubeClient, api_client
from juliarun.backends.kubernetes import tenants as tn
from juliarun.router import FileRoutes, Route
from juliarun.specs import TenantSpec

ROOT = Path(__file__).resolve().parents[1]
KUBECONFIG = os.environ.get("JULIARUN_KUBECONFIG") or str(
    Path.home() / ".cache" / "juliarun" / "kubernetes" / "admin.kubeconfig"
)

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream service {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{upstream};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{proxy};
        location / {{
            proxy_pass http://service;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def latencies(port: int, path: str, headers: dict[str, str], n: int) -> list[float]:
    """Seconds per request, ``n`` sequential requests on one keep-alive connection."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode()
    out = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        for _ in range(n):
            started = time.perf_counter()
            s.sendall(request)
            status = f.readline()
            if b" 200 " not in status:
                raise SystemExit(f"{path} on {port}: {status!r}")
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            out.append(time.perf_counter() - started)
    return out


def throughput(port: int, path: str, headers: dict[str, str], seconds: int, c: int) -> float:
    """Requests per second from ``wrk`` (HTTP/1.1 keep-alive, one thread, ``c`` connections)."""
    args = ["wrk", "-t", "1", "-c", str(c), "-d", f"{seconds}s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    done = subprocess.run(
        [*args, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    )
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise SystemExit(f"wrk saw failures:\n{done.stdout}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    assert m, done.stdout
    return float(m.group(1))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def token(user: str) -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / "testenv"), "token", user, "--issuer", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    run = uuid.uuid4().hex[:6]
    tenant, user = f"router-bench-{run}", f"bench-{run}"
    admin = KubeClient(api_client(kubeconfig=KUBECONFIG))
    tn.ensure_tenant(admin, TenantSpec(name=tenant, users=[{"name": f"oidc1:{user}"}]))
    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    upstream_port, proxy_port = free_port(), free_port()
    (tmp / "nginx.conf").write_text(
        NGINX_CONF.format(tmp=tmp, upstream=upstream_port, proxy=proxy_port)
    )
    nginx = subprocess.Popen(
        ["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp), "-g", "daemon off;"]
    )
    routes = FileRoutes(tmp / "routes.json")
    routes.put(Route(namespace=tenant, name="bench", upstream=f"http://127.0.0.1:{upstream_port}"))
    router = start_router(
        router_config(tmp, routes={"kind": "file", "path": str(routes.path)}, kubeconfig=KUBECONFIG)
    )
    try:
        auth = {"Authorization": f"Bearer {token(user)}"}
        variants = [
            ("direct", upstream_port, "/", {}),
            ("nginx", proxy_port, "/", {}),
            ("juliarun router", router.port, f"/s/{tenant}/bench/", auth),
        ]
        rows = []
        for name, port, path, headers in variants:
            latencies(port, path, headers, 200)  # warm: connections, token and SAR caches
            lat = latencies(port, path, headers, args.requests)
            rps = throughput(port, path, headers, args.seconds, args.concurrency)
            rows.append((name, rps, statistics.median(lat), pct(lat, 0.99)))
        base_p50, base_p99 = rows[0][2], rows[0][3]
        print(
            f"\n{args.requests} sequential requests for latency; wrk -t1 -c{args.concurrency} "
            f"for {args.seconds} s for throughput; cpus={os.cpu_count()}\n"
        )
        print(
            f"{'path':<18}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
            f"{'added p50':>12}{'added p99':>12}"
        )
        for name, rps, p50, p99 in rows:
            print(
                f"{name:<18}{rps:>10.0f}{p50 * 1e3:>10.3f}{p99 * 1e3:>10.3f}"
                f"{(p50 - base_p50) * 1e3:>12.3f}{(p99 - base_p99) * 1e3:>12.3f}"
            )
        router_p50 = rows[2][2] - base_p50
        nginx_p50 = rows[1][2] - base_p50
        print(
            f"\nrouter adds {router_p50 * 1e3:.3f} ms at p50 (goal <= 1 ms), "
            f"{router_p50 / nginx_p50:.1f}x what nginx adds"
        )
    finally:
        router.stop()
        nginx.terminate()
        nginx.wait(timeout=10)
        tn.remove_tenant(admin, tenant)
        admin.close()


if __name__ == "__main__":
    main()
