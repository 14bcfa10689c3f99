"""The authenticating router (its own ASGI app; no Prefect): see :mod:`juliarun.router.app`.

Run a replica with ``python -m juliarun.router --config router.yaml --port 8080``.
"""

from __future__ import annotations

from juliarun.router.app import RouterApp, Signer
from juliarun.router.authz import Authorizer
from juliarun.router.config import (
    PrefectFront,
    RouterConfig,
    RouterError,
    RouteTableConfig,
    StorageShare,
    load_config,
)
from juliarun.router.kube import connect
from juliarun.router.objects import RouteObjects
from juliarun.router.routes import ConfigMapRoutes, FileRoutes, MergedRoutes, Route, RouteSource
from juliarun.router.session import Sessions
from juliarun.router.tokens import TokenValidator

__all__ = [
    "ConfigMapRoutes",
    "FileRoutes",
    "MergedRoutes",
    "PrefectFront",
    "Route",
    "RouteObjects",
    "RouteSource",
    "RouterApp",
    "RouterConfig",
    "RouterError",
    "StorageShare",
    "build_app",
    "load_config",
    "route_source",
]


def _one_source(config: RouterConfig, table: RouteTableConfig) -> RouteSource:
    if table.kind == "file":
        if not table.path:
            raise RouterError("routes.path is required for a file route table")
        return FileRoutes(table.path)
    conn = connect(config.kubeconfig, server=config.kube_server)
    if table.kind == "objects":
        return RouteObjects(conn)
    return ConfigMapRoutes(conn, table.namespace, table.name)


def route_source(config: RouterConfig) -> RouteSource:
    """The route table ``config`` names (several: merged, the first with a route wins)."""
    if isinstance(config.routes, RouteTableConfig):
        return _one_source(config, config.routes)
    if not config.routes:
        raise RouterError("routes: name at least one route table")
    return MergedRoutes([_one_source(config, t) for t in config.routes])


def build_app(config: RouterConfig, *, replica: str = "") -> RouterApp:
    """A router replica for ``config`` (start it with an ASGI server)."""
    kube = connect(config.kubeconfig, server=config.kube_server)
    validator = TokenValidator(
        config.issuers, leeway=config.leeway, min_refresh=config.jwks_min_refresh
    )
    signer = Signer.from_file(config.signing_key, config.public_url, ttl=config.downstream_ttl)
    sessions = None
    if config.session is not None:
        if config.session.issuer not in validator.issuers:
            raise RouterError(
                f"session.issuer {config.session.issuer!r} is not one of the trusted issuers",
                hint="sign browsers in with one of the issuers the router trusts",
            )
        sessions = Sessions(config.session, validator, signer.key, config.public_url)
    return RouterApp(
        validator=validator,
        authorizer=Authorizer(
            kube.async_client(timeout=10), ttl=config.authz_ttl, deny_ttl=config.deny_ttl
        ),
        routes=route_source(config),
        signer=signer,
        upstream_timeout=config.upstream_timeout,
        sessions=sessions,
        replica=replica,
        storage=config.storage,
        prefect=config.prefect,
    )
