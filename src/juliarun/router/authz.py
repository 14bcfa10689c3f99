"""Authorization: may this identity reach this service? Asked of the apiserver with a
SubjectAccessReview (RBAC stays the single authority), the answer cached briefly.

A service exposed from job ``J`` of tenant ``T`` is reachable by whoever may ``get`` Job ``J``
in namespace ``T``: the tenant's ``edit`` and ``view`` roles both grant that, nobody else has it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from juliarun.errors import JuliaRunError
from juliarun.router.tokens import Identity

SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


@dataclass(frozen=True)
class Target:
    """The Kubernetes resource a route stands for."""

    namespace: str
    name: str
    resource: str = "jobs"
    group: str = "batch"
    verb: str = "get"


class AuthorizationUnavailableError(JuliaRunError):
    """The apiserver did not answer the review (the request is refused, not cached)."""

    default_hint = "check that the router's credentials may create subjectaccessreviews"


class Authorizer:
    """SubjectAccessReviews against the apiserver, allows cached ``ttl`` s, denials ``deny_ttl``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        ttl: float = 10.0,
        deny_ttl: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_entries: int = 10000,
    ) -> None:
        self.http = http
        self.ttl = ttl
        self.deny_ttl = deny_ttl
        self.monotonic = monotonic
        self.max_entries = max_entries
        self._cache: dict[tuple[str, tuple[str, ...], Target], tuple[bool, float]] = {}
        self.reviews = 0  # reviews sent (tests and the bench read it)

    async def allowed(self, who: Identity, target: Target) -> bool:
        key = (who.user, who.groups, target)
        now = self.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": who.user,
                "groups": list(who.groups),
                "resourceAttributes": {
                    "namespace": target.namespace,
                    "verb": target.verb,
                    "group": target.group,
                    "resource": target.resource,
                    "name": target.name,
                },
            },
        }
        try:
            resp = await self.http.post(SAR_PATH, json=body)
        except httpx.HTTPError as exc:
            raise AuthorizationUnavailableError(str(exc)) from exc
        self.reviews += 1
        if resp.status_code != 201:
            raise AuthorizationUnavailableError(f"{resp.status_code}: {resp.text[:200]}")
        allowed = bool(resp.json().get("status", {}).get("allowed"))
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = (allowed, now + (self.ttl if allowed else self.deny_ttl))
        return allowed
