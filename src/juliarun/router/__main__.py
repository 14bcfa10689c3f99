"""``python -m juliarun.router --config FILE [--host H] [--port P] [--reuse-port]``: one router
replica. With ``--reuse-port`` several replicas on one machine share the port (SO_REUSEPORT: the
kernel spreads new connections over them, and a replica that dies stops getting any)."""

from __future__ import annotations

import argparse
import logging
import os
import socket

import uvicorn

from juliarun.router import build_app, load_config


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m juliarun.router")
    parser.add_argument("--config", required=True, help="router config (YAML or JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--reuse-port", action="store_true", help="share the port (replicas)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    replica = os.environ.get("JULIARUN_ROUTER_REPLICA") or f"{socket.gethostname()}-{os.getpid()}"
    app = build_app(load_config(args.config), replica=replica)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        ws="websockets-sansio",
        http="auto",  # httptools (and uvloop) when installed: HTTP/1.0 keep-alive, faster
        loop="auto",
        # the client address is the peer's: never taken from a client-sent X-Forwarded-For
        proxy_headers=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    if args.reuse_port:
        server.run(sockets=[listening_socket(args.host, args.port)])
    else:
        server.run()


if __name__ == "__main__":
    main()
