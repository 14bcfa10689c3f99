"""``python -m juliarun.router --config FILE [--host H] [--port P]``: one router replica."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from juliarun.router import build_app, load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m juliarun.router")
    parser.add_argument("--config", required=True, help="router config (YAML or JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    app = build_app(load_config(args.config))
    uvicorn.run(
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


if __name__ == "__main__":
    main()
