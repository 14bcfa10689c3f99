"""The ``OIDCCredentials`` block: which OpenID Connect issuer people sign in at, as which client.

A ``KubernetesCluster`` block that references one acts as the signed-in user: each request
carries the user's ID token (from ``juliarun login``'s cache, refreshed when about to expire),
so the apiserver's RBAC decides what they may do. The client secret (of a confidential client)
stays a ``SecretStr``, unwrapped only in the token request.

>>> creds = OIDCCredentials(issuer="https://id.example.org", client_id="juliarun-cli",
...                         client_secret="s3cret")
>>> creds.client_secret
SecretStr('**********')
>>> creds.client().client_id, creds.client().scopes[:2]
('juliarun-cli', ['openid', 'offline_access'])
"""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from juliarun.auth import OIDCClient, TokenCache, TokenSource
from juliarun.auth.oidc import DEFAULT_SCOPES

DOCS = "https://github.com/juliarun/juliarun#readme"
OPENID_LOGO = "https://openid.net/wp-content/uploads/2023/05/openid-logo.png"


class OIDCCredentials(Block):
    """An OpenID Connect issuer and client that people sign in with (``juliarun login``)."""

    _block_type_name = "juliarun OIDC Credentials"
    _block_type_slug = "juliarun-oidc-credentials"
    _logo_url = OPENID_LOGO  # type: ignore[assignment]
    _documentation_url = DOCS  # type: ignore[assignment]
    _description = (
        "Sign in with OpenID Connect: the issuer, the OAuth2 client and its scopes. Clusters that "
        "use it act as the signed-in user."
    )

    issuer: str = Field(description="The issuer URL (https), exactly as its tokens name it.")
    client_id: str = Field(min_length=1, description="The OAuth2 client id.")
    client_secret: SecretStr | None = Field(
        None, description="The client secret of a confidential client (kept secret)."
    )
    scopes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SCOPES), description="Scopes to ask for."
    )
    ca_file: str | None = Field(
        None, description="A CA bundle (PEM) that signs the issuer's certificate."
    )

    def client(self) -> OIDCClient:
        """The plain client (validated: https issuer, 'openid' among the scopes)."""
        return OIDCClient(
            issuer=self.issuer,
            client_id=self.client_id,
            client_secret=self.client_secret,
            scopes=self.scopes,
            ca_file=self.ca_file,
        )

    def token_source(self, home: Path) -> TokenSource:
        """The signed-in user's ID tokens, from the cache under ``home`` (refreshed)."""
        return TokenSource(self.client(), TokenCache(home))
