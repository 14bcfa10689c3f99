"""The token cache: one file per issuer and client under ``<juliarun home>/auth``, mode 0600 in
a 0700 directory, written atomically; and :class:`TokenSource`, which hands out a valid ID token,
refreshing it with the refresh token when it is about to expire.

>>> import tempfile
>>> from juliarun.auth.oidc import TokenSet
>>> cache = TokenCache(Path(tempfile.mkdtemp()))
>>> path = cache.save(TokenSet("https://id.example.org", "cli", "a.b.c", "r", None, 9e9, 1.0))
>>> oct(path.stat().st_mode & 0o777), oct(path.parent.stat().st_mode & 0o777)
('0o600', '0o700')
>>> cache.load("https://id.example.org", "cli").refresh_token
'r'
>>> cache.delete("https://id.example.org", "cli"), cache.load("https://id.example.org", "cli")
(True, None)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from juliarun.auth.errors import AuthError, NotSignedInError
from juliarun.auth.oidc import Issuer, OAuthError, OIDCClient, TokenSet


class TokenCache:
    """Signed-in sessions of this user, under ``home / "auth"``."""

    def __init__(self, home: Path) -> None:
        self.dir = Path(home).expanduser() / "auth"

    def path(self, issuer: str, client_id: str) -> Path:
        key = hashlib.sha256(f"{issuer.rstrip('/')}\n{client_id}".encode()).hexdigest()[:20]
        return self.dir / f"{key}.json"

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def save(self, tokens: TokenSet) -> Path:
        """Write ``tokens`` (0600, atomically: readers see the old file or the new one)."""
        self._ensure_dir()
        path = self.path(tokens.issuer, tokens.client_id)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(tokens.to_json(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return path

    def _read(self, path: Path) -> TokenSet:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthError(
                f"the token cache {path} is open to other users (mode {oct(mode & 0o777)})",
                hint=f"run `chmod 600 {path}` if nobody else could read it, else `juliarun "
                "logout` and sign in again",
            )
        try:
            return TokenSet.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(
                f"the token cache {path} is damaged", hint="run `juliarun logout` and sign in again"
            ) from exc

    def load(self, issuer: str, client_id: str) -> TokenSet | None:
        path = self.path(issuer, client_id)
        if not path.exists():
            return None
        return self._read(path)

    def all(self) -> list[TokenSet]:
        """Every cached session (in file-name order)."""
        if not self.dir.is_dir():
            return []
        return [self._read(p) for p in sorted(self.dir.glob("*.json"))]

    @contextlib.contextmanager
    def locked(self, issuer: str, client_id: str) -> Iterator[None]:
        """Hold the session's lock (a ``flock`` on a file beside it): one refresh at a time,
        across threads and processes. Issuers that rotate refresh tokens (hydra) refuse a spent
        one (and may revoke the whole session for it), so refreshes must not race."""
        self._ensure_dir()
        lock = self.path(issuer, client_id).with_suffix(".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def delete(self, issuer: str, client_id: str) -> bool:
        """Forget the session; ``False`` when there was none."""
        path = self.path(issuer, client_id)
        path.with_suffix(".lock").unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


class TokenSource:
    """A valid ID token for ``client`` from ``cache``: refreshed with the refresh token (and
    the refreshed tokens saved) once less than ``leeway`` seconds (at most half its lifetime)
    remain. One refresh at a time across threads and processes (the cache's lock; whoever
    waited reads the refreshed tokens instead of refreshing again); ``clock`` gives epoch
    seconds."""

    def __init__(
        self,
        client: OIDCClient,
        cache: TokenCache,
        *,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.cache = cache
        self.leeway = leeway
        self.clock = clock
        self.refreshes = 0
        self._lock = threading.Lock()
        self._last: TokenSet | None = None

    def _cached(self) -> TokenSet:
        current = self.cache.load(self.client.issuer, self.client.client_id)
        if current is None:
            raise NotSignedInError(self.client.issuer, self.client.client_id)
        return current

    def tokens(self) -> TokenSet:
        last = self._last
        if last is not None and last.fresh(self.clock(), self.leeway):
            return last
        current = self._last = self._cached()
        if current.fresh(self.clock(), self.leeway):
            return current
        with self._lock, self.cache.locked(self.client.issuer, self.client.client_id):
            current = self._last = self._cached()  # another may have refreshed it meanwhile
            if current.fresh(self.clock(), self.leeway):
                return current
            issuer = Issuer(self.client, clock=self.clock)
            try:
                fresh = issuer.refresh(current)
            except OAuthError as exc:
                if exc.error in {"invalid_grant", "invalid_token", "unauthorized_client"}:
                    raise NotSignedInError(
                        self.client.issuer,
                        self.client.client_id,
                        f"the session expired ({exc.error})",
                    ) from exc
                raise
            finally:
                issuer.close()
            self.cache.save(fresh)
            self.refreshes += 1
            self._last = fresh
            return fresh

    def id_token(self) -> str:
        return self.tokens().id_token
