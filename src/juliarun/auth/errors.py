"""Sign-in errors (subclasses of :class:`juliarun.errors.JuliaRunError`, each with a hint)."""

from __future__ import annotations

from juliarun.errors import JuliaRunError


class AuthError(JuliaRunError):
    """A sign-in, a token refresh or the token cache failed; ``issuer`` names the issuer."""

    default_hint = "run `juliarun login` again"

    def __init__(self, message: str, *, issuer: str | None = None, hint: str | None = None) -> None:
        self.issuer = issuer
        super().__init__(message, hint=hint)


class NotSignedInError(AuthError):
    """No usable session for the issuer and client: never signed in, signed out, or the
    refresh token is no longer accepted."""

    def __init__(self, issuer: str, client_id: str, reason: str = "not signed in") -> None:
        self.client_id = client_id
        super().__init__(
            f"{reason} at {issuer} (client {client_id})",
            issuer=issuer,
            hint=f"run `juliarun login --issuer {issuer} --client-id {client_id}`",
        )
