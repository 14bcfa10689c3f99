"""``juliarun login`` / ``logout`` / ``whoami`` / ``token``: signing in with OpenID Connect
from a shell.

``register(app)`` adds the four commands to the ``juliarun`` command line; ``python -m
juliarun.cli_login`` runs them on their own.
"""

from __future__ import annotations

import json
import sys
import time
import webbrowser
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

from juliarun.auth import (
    DeviceCode,
    OIDCClient,
    TokenCache,
    TokenSet,
    TokenSource,
    login_browser,
    login_device,
)
from juliarun.auth.settings import load_oidc_settings
from juliarun.errors import ConfigError, JuliaRunError
from juliarun.settings import load_settings

err = Console(stderr=True, highlight=False, soft_wrap=True)

IssuerOpt = Annotated[
    str | None,
    typer.Option(
        "--issuer",
        help="Issuer URL (https://...) or the name of a saved OIDCCredentials block "
        "(default: JULIARUN_OIDC_ISSUER).",
    ),
]
ClientOpt = Annotated[
    str | None,
    typer.Option("--client-id", help="OAuth2 client id (default: JULIARUN_OIDC_CLIENT_ID)."),
]


def _fail(exc: JuliaRunError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc.message}", markup=True)
    if exc.hint:
        err.print(f"hint: {exc.hint}", markup=False)
    return typer.Exit(1)


def resolve_client(issuer: str | None, client_id: str | None, ca: str | None = None) -> OIDCClient:
    """The client a command means: a saved block's, or the settings' with the options over them."""
    settings = load_oidc_settings()
    if issuer and not issuer.startswith(("https://", "http://")):
        from juliarun.blocks.oidc import OIDCCredentials

        try:
            block = OIDCCredentials.load(issuer)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"no OIDCCredentials block {issuer!r}",
                hint="pass the issuer URL, or save the block first",
            ) from exc
        if not isinstance(block, OIDCCredentials):
            raise ConfigError(f"{issuer!r} is not an OIDCCredentials block")
        return block.client()
    client = settings.client(issuer)
    update: dict[str, object] = {}
    if client_id:
        update["client_id"] = client_id
    if ca:
        update["ca_file"] = ca
    return OIDCClient(**{**client.model_dump(), **update}) if update else client


def _describe(tokens: TokenSet) -> dict[str, object]:
    claims = tokens.claims
    return {
        "issuer": tokens.issuer,
        "client_id": tokens.client_id,
        "subject": claims.get("sub"),
        "name": claims.get("preferred_username") or claims.get("email") or claims.get("sub"),
        "email": claims.get("email"),
        "groups": claims.get("groups") or [],
        "expires": datetime.fromtimestamp(tokens.expires_at, UTC).isoformat(timespec="seconds"),
        "refreshable": bool(tokens.refresh_token),
    }


def login(  # noqa: PLR0917
    issuer: IssuerOpt = None,
    client_id: ClientOpt = None,
    ca: Annotated[str | None, typer.Option("--ca", help="CA bundle for the issuer.")] = None,
    device: Annotated[
        bool, typer.Option("--device", help="Sign in on another device (no browser here).")
    ] = False,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the sign-in URL instead of opening it.")
    ] = False,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Loopback port (0: any free one).")
    ] = 0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, max=3600, help="Seconds to wait for the sign-in.")
    ] = 300,
) -> None:
    """Sign in with OpenID Connect: in the browser (authorization code with PKCE), or with
    --device on a machine without one. Tokens are cached (mode 0600) under the juliarun home."""
    try:
        client = resolve_client(issuer, client_id, ca)
        if device:

            def show(code: DeviceCode) -> None:
                err.print(f"To sign in, open {code.verification_uri}", markup=False)
                err.print(f"and enter the code: {code.user_code}", markup=False)
                if code.verification_uri_complete:
                    err.print(f"(or open {code.verification_uri_complete})", markup=False)
                sys.stderr.flush()

            tokens = login_device(client, show)
        else:

            def open_url(url: str) -> None:
                opened = False if no_browser else webbrowser.open(url)
                if not opened:
                    err.print(
                        "Open this URL in a browser on this machine to sign in:", markup=False
                    )
                err.print(url, markup=False, soft_wrap=True)
                sys.stderr.flush()

            tokens = login_browser(client, open_url, port=port, timeout=timeout)
        path = TokenCache(load_settings().home).save(tokens)
    except JuliaRunError as exc:
        raise _fail(exc) from None
    who = _describe(tokens)
    typer.echo(f"signed in as {who['name']} at {tokens.issuer} (tokens in {path})")


def logout(issuer: IssuerOpt = None, client_id: ClientOpt = None) -> None:
    """Forget the cached session (revoking its refresh token where the issuer allows)."""
    from juliarun.auth import Issuer

    try:
        client = resolve_client(issuer, client_id)
        cache = TokenCache(load_settings().home)
        tokens = cache.load(client.issuer, client.client_id)
        if tokens is None:
            typer.echo(f"not signed in at {client.issuer}")
            return
        if tokens.refresh_token:
            iss = Issuer(client)
            try:
                iss.revoke(tokens.refresh_token)
            except JuliaRunError:
                pass  # forgetting the tokens is what counts
            finally:
                iss.close()
        cache.delete(client.issuer, client.client_id)
    except JuliaRunError as exc:
        raise _fail(exc) from None
    typer.echo(f"signed out of {client.issuer}")


def kube_identity(cluster: str) -> tuple[str, list[str]]:
    """Who the Kubernetes apiserver of ``cluster`` (``kubernetes`` or a saved cluster block)
    says these credentials are."""
    from juliarun.backends.kubernetes import KubeClient
    from juliarun.backends.kubernetes.tenants import who_am_i
    from juliarun.blocks.cluster import DEFAULT_CLUSTERS, default_cluster, load_cluster
    from juliarun.blocks.kubernetes import KubernetesCluster

    block = default_cluster(cluster) if cluster in DEFAULT_CLUSTERS else load_cluster(cluster)
    if not isinstance(block, KubernetesCluster):
        raise ConfigError(
            f"cluster {cluster!r} is not a Kubernetes cluster; only an apiserver knows its users",
            hint="pass --cluster kubernetes or a saved Kubernetes cluster block",
        )
    client = KubeClient(block.make_api_client(block.settings().home))
    try:
        return who_am_i(client)
    finally:
        client.close()


def whoami(
    issuer: IssuerOpt = None,
    client_id: ClientOpt = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            "-c",
            help="Also ask this Kubernetes cluster (kubernetes or a block name) who you are: "
            "the user and group names its tenants bind.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Who you are signed in as: each cached session (or the one named) and its groups."""
    if cluster:
        try:
            user, groups = kube_identity(cluster)
        except JuliaRunError as exc:
            raise _fail(exc) from None
        typer.echo(f"kubernetes ({cluster}): {user}; groups: {', '.join(groups) or '-'}")
        return
    try:
        cache = TokenCache(load_settings().home)
        if issuer or client_id:
            client = resolve_client(issuer, client_id)
            one = cache.load(client.issuer, client.client_id)
            sessions = [one] if one else []
        else:
            sessions = cache.all()
    except JuliaRunError as exc:
        raise _fail(exc) from None
    if not sessions:
        err.print("not signed in (run `juliarun login`)", markup=False)
        raise typer.Exit(1)
    rows = [_describe(t) for t in sessions]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    now = time.time()
    for tokens, row in zip(sessions, rows, strict=True):
        state = "valid" if tokens.expires_at > now else "expired"
        if state == "expired" and tokens.refresh_token:
            state += ", refreshed on next use"
        listed = ", ".join(str(g) for g in tokens.claims.get("groups") or []) or "-"
        typer.echo(
            f"{row['name']} at {row['issuer']} (client {row['client_id']}); groups: {listed}; "
            f"ID token {state} until {row['expires']}"
        )


def token(issuer: IssuerOpt = None, client_id: ClientOpt = None) -> None:
    """Print a valid ID token of the cached session (refreshed first when it is about to
    expire), for tools that take a bearer token: ``PREFECT_API_KEY=$(juliarun token)`` in front
    of a router-fronted Prefect, ``curl -H "Authorization: Bearer $(juliarun token)"``."""
    try:
        cache = TokenCache(load_settings().home)
        if issuer or client_id or load_oidc_settings().issuer:
            client = resolve_client(issuer, client_id)
        else:  # no default issuer: the one cached session, if there is exactly one
            sessions = cache.all()
            if len(sessions) != 1:
                raise ConfigError(
                    f"{len(sessions)} cached sessions and no issuer given",
                    hint="pass --issuer (see `juliarun whoami`), or `juliarun login` first",
                )
            client = resolve_client(sessions[0].issuer, sessions[0].client_id)
        id_token = TokenSource(client, cache).id_token()
    except JuliaRunError as exc:
        raise _fail(exc) from None
    typer.echo(id_token)


HELP = {"help_option_names": ["-h", "--help"]}


def register(app: typer.Typer) -> None:
    """Add ``login``, ``logout``, ``whoami`` and ``token`` to ``app``."""
    app.command("login", context_settings=HELP)(login)
    app.command("token", context_settings=HELP)(token)
    app.command("logout", context_settings=HELP)(logout)
    app.command("whoami", context_settings=HELP)(whoami)


app = typer.Typer(
    name="juliarun", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False
)
register(app)

if __name__ == "__main__":
    app()
