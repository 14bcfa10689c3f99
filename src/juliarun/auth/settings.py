"""Sign-in defaults from ``JULIARUN_OIDC_*`` environment variables.

>>> s = OIDCSettings(issuer="https://id.example.org", scopes="openid groups")
>>> s.client().scopes, s.kubernetes
(['openid', 'groups'], False)
"""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from juliarun.auth.oidc import DEFAULT_SCOPES, OIDCClient
from juliarun.errors import ConfigError


class OIDCSettings(BaseSettings):
    """Which issuer ``juliarun login`` and ``init("kubernetes")`` use; every field reads
    ``JULIARUN_OIDC_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="JULIARUN_OIDC_", extra="ignore")

    issuer: str | None = Field(None, description="The issuer URL (https).")
    client_id: str = Field("juliarun-cli", description="The OAuth2 client id.")
    client_secret: SecretStr | None = Field(None, description="A confidential client's secret.")
    scopes: str = Field(" ".join(DEFAULT_SCOPES), description="Scopes, space-separated.")
    ca: str | None = Field(None, description="CA bundle (PEM) for the issuer's certificate.")
    kubernetes: bool = Field(
        False,
        description="init('kubernetes') acts as the signed-in user (bearer ID token) instead of "
        "the kubeconfig's credentials.",
    )

    def client(self, issuer: str | None = None) -> OIDCClient:
        """The client these settings describe (``issuer`` overrides theirs)."""
        url = issuer or self.issuer
        if not url:
            raise ConfigError(
                "no OpenID Connect issuer given",
                hint="pass --issuer URL, or set JULIARUN_OIDC_ISSUER",
            )
        return OIDCClient(
            issuer=url,
            client_id=self.client_id,
            client_secret=self.client_secret,
            scopes=self.scopes.replace(",", " ").split(),
            ca_file=self.ca,
        )


def load_oidc_settings() -> OIDCSettings:
    try:
        return OIDCSettings()
    except ValidationError as exc:
        raise ConfigError(f"invalid JULIARUN_OIDC_* settings: {exc}") from exc
