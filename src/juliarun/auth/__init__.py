"""Signing people in with OpenID Connect (plain: no Prefect).

``oidc`` has the flows (authorization code with PKCE through a loopback redirect, the device
grant, refresh) and ID-token verification; ``cache`` the 0600 token cache and the refreshing
:class:`TokenSource` that Kubernetes clients take their bearer token from; ``settings`` the
``JULIARUN_OIDC_*`` defaults."""

from juliarun.auth.cache import TokenCache, TokenSource
from juliarun.auth.errors import AuthError, NotSignedInError
from juliarun.auth.oidc import (
    DeviceCode,
    Issuer,
    OAuthError,
    OIDCClient,
    TokenSet,
    login_browser,
    login_device,
    verify_id_token,
)
from juliarun.auth.settings import OIDCSettings

__all__ = [
    "AuthError",
    "DeviceCode",
    "Issuer",
    "NotSignedInError",
    "OAuthError",
    "OIDCClient",
    "OIDCSettings",
    "TokenCache",
    "TokenSet",
    "TokenSource",
    "login_browser",
    "login_device",
    "verify_id_token",
]
