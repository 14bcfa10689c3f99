"""The router's configuration: the issuers it trusts (mapped like the apiserver maps them), where
its route table lives, its signing key and its caches.

The issuers can be read from the apiserver's own structured authentication configuration, so the
router and the apiserver agree on who a token's bearer is:

>>> cfg = authentication_config_issuers('''
... apiVersion: apiserver.config.k8s.io/v1
... kind: AuthenticationConfiguration
... jwt:
...   - issuer: {url: "https://idp.example", audiences: [cli]}
...     claimMappings:
...       username: {claim: sub, prefix: "oidc1:"}
...       groups: {claim: groups, prefix: "oidc1:"}
... ''')
>>> cfg[0].url, cfg[0].audiences, cfg[0].username_prefix
('https://idp.example', ['cli'], 'oidc1:')
>>> RouterConfig(issuers=cfg, authz_ttl=-1)
Traceback (most recent call last):
...
juliarun.errors.SpecError: invalid RouterConfig: authz_ttl: Input should be greater ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator

from juliarun.errors import ConfigError, JuliaRunError
from juliarun.router.routes import http_origin
from juliarun.specs import Name, _Model


class RouterError(JuliaRunError):
    """The router cannot do what was asked (a route that does not come up, a bad route)."""

    default_hint = "check the router's log and `juliarun` route table"


class IssuerConfig(_Model):
    """One trusted OpenID Connect issuer, mapped to Kubernetes users and groups as the
    apiserver's ``claimMappings`` map it."""

    url: str = Field(description="The issuer URL (exactly the tokens' iss; https).")
    audiences: list[str] = Field(min_length=1, description="Accepted aud values (any of them).")
    ca_pem: str | None = Field(None, description="PEM CA bundle for the issuer's HTTPS.")
    username_claim: str = Field("sub", description="Claim holding the user name.")
    username_prefix: str = Field("", description="Prefix added to the user name.")
    groups_claim: str = Field("groups", description="Claim holding the groups (a list).")
    groups_prefix: str = Field("", description="Prefix added to each group.")

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"must be an https URL (got {value!r})")
        return value.rstrip("/")


class RouteTableConfig(_Model):
    """Where the routes live: a JSON file (local and Docker backends), route objects in the
    tenants' namespaces (``objects``: a cluster, each written by a tenant member with their own
    credentials) or one ConfigMap (``configmap``: written by an admin)."""

    kind: Literal["file", "configmap", "objects"] = Field(
        "file", description="file, objects or configmap."
    )
    path: str | None = Field(None, description="The JSON file (kind file).")
    namespace: Name = Field("juliarun-router", description="The ConfigMap's namespace.")
    name: Name = Field("juliarun-routes", description="The ConfigMap's name.")


class SessionConfig(_Model):
    """Sign-in for browsers, through one trusted issuer."""

    issuer: str = Field(description="The issuer users sign in with (one of the trusted ones).")
    client_id: str = Field(description="The router's client at that issuer.")
    client_secret: SecretStr = Field(description="Its secret.")
    redirect_uri: str = Field(description="Registered redirect; its path is the callback.")
    scope: str = Field("openid profile email", description="Scopes asked for.")
    token_auth: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic", description="How the client authenticates at the token endpoint."
    )
    lifetime: int = Field(8 * 3600, ge=60, le=7 * 86400, description="Longest session (s).")


class StorageShare(_Model):
    """A named storage the router serves over WebDAV at ``/storage/<namespace>/<name>/`` to the
    members of tenant ``namespace``: both roles read, the ``edit`` role also writes."""

    namespace: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="The tenant's namespace."
    )
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="The storage name.")
    path: str = Field(description="The storage's folder on the router's machine.")
    read_only: bool = Field(False, description="Refuse every write, whoever asks.")


class PrefectFront(_Model):
    """A Prefect server behind the router, so its UI and API get OpenID Connect sign-in.

    Served at ``path``: the UI at ``<path>/`` (forwarded unchanged: start the server with
    ``PREFECT_SERVER_UI_SERVE_BASE=<path>``) and the API at ``<path>/api/`` (forwarded to the
    server's ``/api/``: set ``PREFECT_SERVER_UI_API_URL=<public_url><path>/api``). Each request
    needs a bearer ID token (Prefect's client sends ``PREFECT_API_KEY`` as one) or a browser
    session, and is allowed when a SubjectAccessReview says the user may ``verb``
    ``resource`` (in API ``group``) in ``namespace``: by default, may create Jobs there (the
    tenant's ``edit`` role), since whoever reaches an open-source Prefect server can run flows.
    """

    path: str = Field(
        "/prefect",
        pattern=r"^/[a-z0-9][-a-z0-9]*(/[a-z0-9][-a-z0-9]*)*$",
        description="The path prefix on the router (one or more lower-case segments).",
    )
    upstream: str = Field(description="http://host:port of the Prefect server.")
    namespace: Name = Field(description="The namespace the access review is about (the team's).")
    verb: str = Field("create", pattern=r"^[a-z]+$", description="The verb reviewed.")
    group: str = Field("batch", description="The API group of the resource ('' for core).")
    resource: str = Field("jobs", pattern=r"^[a-z0-9.-]+$", description="The resource reviewed.")
    name: str = Field("", description="A resource name to review (''; any).")

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_origin(value)

    @field_validator("path")
    @classmethod
    def _not_the_routers(cls, value: str) -> str:
        first = value.split("/")[1]
        if first in ("s", "storage"):
            raise ValueError(f"/{first}/ is the router's own (pick another path)")
        return value


class RouterConfig(_Model):
    """Everything a router replica needs."""

    issuers: list[IssuerConfig] = Field(min_length=1, description="Trusted issuers.")
    kubeconfig: str | None = Field(
        None, description="Kubeconfig of the router's own credentials (None: in-cluster)."
    )
    kube_server: str | None = Field(
        None, description="In a pod: the apiserver's address (default: the kubernetes Service)."
    )
    routes: RouteTableConfig | list[RouteTableConfig] = Field(
        default_factory=RouteTableConfig,
        description="The route table, or several merged (the first that has a route wins).",
    )
    signing_key: str | None = Field(
        None, description="File with the router's private JWK (shared by replicas); None: new."
    )
    public_url: str = Field("http://127.0.0.1:8080", description="How users reach the router.")
    authz_ttl: float = Field(10.0, ge=0, le=300, description="Seconds an allow is cached.")
    deny_ttl: float = Field(2.0, ge=0, le=300, description="Seconds a deny is cached.")
    leeway: float = Field(0.0, ge=0, le=300, description="Clock skew allowed on exp/nbf (s).")
    jwks_min_refresh: float = Field(
        1.0, ge=0, le=3600, description="Least seconds between JWKS fetches for unknown keys."
    )
    downstream_ttl: int = Field(60, ge=5, le=3600, description="Life of the downstream token.")
    upstream_timeout: float = Field(30.0, gt=0, le=3600, description="Upstream read timeout.")
    session: SessionConfig | None = Field(
        None, description="Browser sign-in (authorization code + cookie); None: bearer only."
    )
    storage: list[StorageShare] = Field(
        default_factory=list, description="Named storage served over WebDAV (a drive)."
    )
    prefect: list[PrefectFront] = Field(
        default_factory=list, description="Prefect servers fronted (UI and API), one per path."
    )

    @model_validator(mode="after")
    def _distinct_paths(self) -> RouterConfig:
        paths = [p.path for p in self.prefect]
        callback = urlsplit(self.session.redirect_uri).path if self.session else None
        for path in paths:
            if paths.count(path) > 1 or any(o.startswith(path + "/") for o in paths):
                raise ValueError(f"prefect: path {path} is served twice (or holds another's)")
            if callback and (callback == path or callback.startswith(path + "/")):
                raise ValueError(f"prefect: path {path} holds the sign-in callback {callback}")
        return self


def authentication_config_issuers(text: str, *, ca_pem: str | None = None) -> list[IssuerConfig]:
    """The issuers of an apiserver ``AuthenticationConfiguration`` (YAML text), mapped the same
    way (claims and prefixes); ``ca_pem`` overrides each issuer's ``certificateAuthority``."""
    doc = yaml.safe_load(text) or {}
    if doc.get("kind") != "AuthenticationConfiguration":
        raise ConfigError(
            "not an AuthenticationConfiguration",
            hint="pass the file the apiserver takes with --authentication-config",
        )
    found = []
    for entry in doc.get("jwt") or []:
        issuer = entry.get("issuer") or {}
        maps: dict[str, Any] = entry.get("claimMappings") or {}
        user: dict[str, Any] = maps.get("username") or {}
        groups: dict[str, Any] = maps.get("groups") or {}
        found.append(
            IssuerConfig(
                url=issuer.get("url", ""),
                audiences=list(issuer.get("audiences") or []),
                ca_pem=ca_pem or issuer.get("certificateAuthority"),
                username_claim=user.get("claim") or "sub",
                username_prefix=user.get("prefix") or "",
                groups_claim=groups.get("claim") or "groups",
                groups_prefix=groups.get("prefix") or "",
            )
        )
    return found


def load_config(path: str | Path) -> RouterConfig:
    """A :class:`RouterConfig` from a YAML or JSON file; ``issuers`` may instead be given as
    ``authentication_config: <path>`` (the apiserver's file) plus extra ``audiences``."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read router config {path}: {exc}") from exc
    authn = data.pop("authentication_config", None)
    extra_audiences: dict[str, list[str]] = data.pop("extra_audiences", None) or {}
    if authn:
        issuers = authentication_config_issuers(Path(authn).read_text())
        data["issuers"] = [
            {**i.model_dump(), "audiences": [*i.audiences, *extra_audiences.get(i.url, [])]}
            for i in issuers
        ] + list(data.get("issuers") or [])
    return RouterConfig.model_validate(data)
