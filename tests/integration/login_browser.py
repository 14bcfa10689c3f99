"""A headless "browser" for sign-in tests: it follows an authorization URL through the real
issuer (hydra with the test login/consent app, or issuer 2) the way a person's browser would,
signing in the test user named in ``login_hint`` ("USER;GROUP,..." as the test issuers read it),
and finally requests the redirect, so ``juliarun login``'s loopback server receives the code.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import httpx


def hint(user: str, groups: Sequence[str] = ()) -> str:
    return user + (";" + ",".join(groups) if groups else "")


class HeadlessBrowser:
    """Follows sign-in URLs with a cookie jar; ``visited`` keeps every URL it requested."""

    def __init__(self, ca: Path) -> None:
        self.http = httpx.Client(
            verify=ssl.create_default_context(cafile=str(ca)), follow_redirects=False, timeout=15
        )
        self.visited: list[str] = []
        self.errors: list[BaseException] = []

    def sign_in(self, url: str, user: str, groups: Sequence[str] = (), **extra: str) -> int:
        """Open ``url`` with the user's login_hint (and ``extra`` parameters, e.g.
        ``id_token_ttl`` for issuer 2); follow redirects until a loopback URL answers. Returns
        that final status."""
        sep = "&" if urlsplit(url).query else "?"
        url = url + sep + urlencode({"login_hint": hint(user, groups), **extra})
        for _ in range(20):
            self.visited.append(url)
            resp = self.http.get(url)
            if resp.status_code in (301, 302, 303, 307, 308):
                url = urljoin(url, resp.headers["location"])
                continue
            if urlsplit(url).hostname == "127.0.0.1" and urlsplit(url).scheme == "http":
                return resp.status_code
            raise AssertionError(f"sign-in stopped at {url}: {resp.status_code} {resp.text[:300]}")
        raise AssertionError("too many redirects")

    def opener(self, user: str, groups: Sequence[str] = (), **extra: str) -> Opener:
        """An ``open_url`` for ``login_browser``: signs in from another thread, as a browser
        does while the command waits."""
        return Opener(self, user, list(groups), extra)

    def close(self) -> None:
        self.http.close()


class Opener:
    def __init__(
        self, browser: HeadlessBrowser, user: str, groups: list[str], extra: dict[str, str]
    ):
        self.browser, self.user, self.groups, self.extra = browser, user, groups, extra
        self.status: int | None = None

    def __call__(self, url: str) -> None:
        def run() -> None:
            try:
                self.status = self.browser.sign_in(url, self.user, self.groups, **self.extra)
            except BaseException as exc:  # reported by the test
                self.browser.errors.append(exc)

        threading.Thread(target=run, daemon=True).start()
