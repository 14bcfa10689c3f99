"""A thin JSON client over the kubernetes package's connection: plain dicts in and out, retries on
transient failures only (429, 5xx, connection errors), and a client-side rate limit.

It receives its ``ApiClient``, logger, clock and sleep in the constructor and never touches the
kubernetes package's process-wide default configuration. Talking JSON (not the generated models)
keeps manifests and recorded objects the same shape, so the pure modules (``manifests``,
``diagnosis``, ``watch``) work on exactly what the apiserver sends.

>>> bucket = TokenBucket(qps=2, burst=2, clock=lambda: 0.0, sleep=lambda s: None)
>>> [bucket.take() for _ in range(3)]
[0.0, 0.0, 0.5]
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import urllib3

from juliarun.errors import BackendError, PermissionDeniedError

TRANSIENT_STATUS: frozenset[int] = frozenset({429, 500, 502, 503, 504})
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,  # MaxRetryError, ProtocolError, NewConnectionError, timeouts
    ConnectionError,
    TimeoutError,
)

Query = Mapping[str, str | int | bool | None]


class KubeApiError(BackendError):
    """The apiserver answered with an error status; ``status``, ``reason`` and the decoded
    ``body`` (a ``Status`` object when the server sent one) are kept."""

    def __init__(
        self, method: str, path: str, status: int, body: Any, *, hint: str | None = None
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.reason = str(self.body.get("reason") or "")
        detail = self.body.get("message") or (body if isinstance(body, str) else "") or ""
        default = {
            401: "the kubeconfig's credentials were refused; refresh them",
            403: "the kubeconfig's user lacks the RBAC permission; ask the cluster admin",
        }.get(status, "see the message; `kubectl get events -n <namespace>` may say more")
        if status == 403 and "ValidatingAdmissionPolicy" in str(detail):
            default = (
                "the cluster's admission policy named above refused what was asked, whoever "
                "asks: change that (a tenant's host directories are its TenantSpec.host_paths, "
                "granted by the cluster admin)"
            )
        super().__init__(
            f"kubernetes {method} {path} failed ({status} {self.reason}): {detail}".strip(),
            hint=hint or default,
        )

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT_STATUS


_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]+)"'
    r'(?: in API group "(?P<group>[^"]*)")?(?: in the namespace "(?P<namespace>[^"]+)")?'
)


class KubeForbiddenError(KubeApiError, PermissionDeniedError):
    """A 403 from RBAC: the user, verb, resource and namespace parsed from the apiserver's
    message (a quota's 403 stays a plain :class:`KubeApiError`).

    >>> err = api_error("GET", "/apis/batch/v1/namespaces/b/jobs", 403, {"message":
    ...     'jobs.batch is forbidden: User "alice" cannot list resource "jobs" in API group '
    ...     '"batch" in the namespace "b"'})
    >>> err.user, err.verb, err.resource, err.namespace
    ('alice', 'list', 'jobs.batch', 'b')
    """

    def __init__(self, method: str, path: str, body: Any) -> None:
        message = str(body.get("message") or "") if isinstance(body, dict) else ""
        m = _FORBIDDEN.search(message)
        fields = m.groupdict() if m else {}
        group = fields.get("group")
        resource = fields.get("resource")
        if resource and group:
            resource = f"{resource}.{group}"
        namespace = fields.get("namespace")
        where = f" in namespace {namespace}" if namespace else " cluster-wide"
        hint = (
            f"user {fields.get('user') or '?'} may not {fields.get('verb') or method.lower()} "
            f"{resource or path}{where}: use a context for your own tenant's namespace, or ask "
            "the cluster admin for a Role granting it"
        )
        KubeApiError.__init__(self, method, path, 403, body, hint=hint)
        self.user = fields.get("user")
        self.verb = fields.get("verb")
        self.resource = resource
        self.namespace = namespace


def api_error(
    method: str, path: str, status: int, body: Any, *, unauthorized_hint: str | None = None
) -> KubeApiError:
    """The error for an error status: RBAC denials are :class:`KubeForbiddenError`; a 401
    carries ``unauthorized_hint`` when the caller knows better than "the kubeconfig" who was
    refused (a signed-in user's ID token)."""
    message = body.get("message") if isinstance(body, dict) else None
    if status == 403 and isinstance(message, str) and _FORBIDDEN.search(message):
        return KubeForbiddenError(method, path, body)
    if status == 401 and unauthorized_hint:
        return KubeApiError(method, path, status, body, hint=unauthorized_hint)
    return KubeApiError(method, path, status, body)


@dataclass
class TokenBucket:
    """Client-side rate limit: ``qps`` requests a second on average, bursts up to ``burst``.

    ``take()`` waits (with the injected ``sleep``) until a token is free and returns how long it
    waited."""

    qps: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _tokens: float = field(init=False)
    _stamp: float | None = field(init=False, default=None)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)

    def take(self) -> float:
        with self._lock:
            now = self.clock()
            if self._stamp is not None:
                self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.qps)
            self._stamp = now
            self._tokens -= 1
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.qps
        if wait:
            self.sleep(wait)
        return wait


class KubeClient:
    """JSON requests to the apiserver with retries and a rate limit.

    ``api_client`` is a ``kubernetes.client.ApiClient`` built from a kubeconfig of the caller's
    choosing (its own ``Configuration``); ``calls`` counts requests sent (retries included)."""

    def __init__(
        self,
        api_client: Any,
        *,
        qps: float = 50.0,
        burst: int = 300,
        retries: int = 5,
        backoff: float = 0.2,
        timeout: float = 30.0,
        unauthorized_hint: str | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_client = api_client
        self.unauthorized_hint = unauthorized_hint
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.log = logger or logging.getLogger("juliarun.kubernetes")
        self.clock = clock
        self.sleep = sleep
        self.limiter = TokenBucket(qps, burst, clock=clock, sleep=sleep)
        self.calls = 0
        self._count_lock = threading.Lock()

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    # -- the one request path ------------------------------------------------------------

    def _send(  # noqa: PLR0917
        self,
        method: str,
        path: str,
        query: Query | None,
        body: Any,
        content_type: str | None,
        timeout: float | tuple[float, float] | None,
    ) -> Any:
        params = [(k, _q(v)) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json, */*"}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        _, url, headers, _, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        self.limiter.take()
        with self._count_lock:
            self.calls += 1
        return self.api_client.call_api(
            method,
            url,
            header_params=headers,
            body=body,
            _request_timeout=self.timeout if timeout is None else timeout,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        content_type: str | None = None,
        raw: bool = False,
        timeout: float | tuple[float, float] | None = None,
        retries: int | None = None,
    ) -> Any:
        """Send one request, retrying transient failures with exponential backoff (honouring
        ``Retry-After``, at most ``retries`` times); returns the decoded JSON (the text when
        ``raw``). Any other error status raises :class:`KubeApiError` at once."""
        limit = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                resp = self._send(method, path, query, body, content_type, timeout)
                data: bytes = resp.read()
                status = int(resp.status)
            except _CONNECTION_ERRORS as exc:
                if attempt >= limit:
                    raise BackendError(
                        f"kubernetes {method} {path}: cannot reach the apiserver at "
                        f"{self.host}: {exc}",
                        hint="check the cluster is up and the kubeconfig's server address",
                    ) from exc
                delay = self.backoff * 2**attempt
            else:
                if status < 400:
                    text = data.decode("utf-8", "replace")
                    if raw:
                        return text
                    return json.loads(text) if text else {}
                err = api_error(
                    method, path, status, _decode(data), unauthorized_hint=self.unauthorized_hint
                )
                if not err.transient or attempt >= limit:
                    raise err
                delay = _retry_after(resp) or self.backoff * 2**attempt
            attempt += 1
            self.log.debug("kubernetes %s %s: transient failure, retry %d", method, path, attempt)
            self.sleep(min(delay, 10.0))

    def stream(
        self,
        path: str,
        *,
        query: Query | None = None,
        timeout: float | tuple[float, float] | None = None,
    ) -> StreamedResponse:
        """A GET whose body is read line by line (pod logs with follow, watches). Errors raise
        like :meth:`request`, without retries (the caller resumes)."""
        try:
            resp = self._send("GET", path, query, None, None, timeout)
        except _CONNECTION_ERRORS as exc:
            raise BackendError(
                f"kubernetes GET {path}: cannot reach the apiserver at {self.host}: {exc}",
                hint="check the cluster is up",
            ) from exc
        if int(resp.status) >= 400:
            data = resp.read()
            raise api_error(
                "GET",
                path,
                int(resp.status),
                _decode(data),
                unauthorized_hint=self.unauthorized_hint,
            )
        return StreamedResponse(resp.response)

    # -- conveniences ---------------------------------------------------------------------

    def get(self, path: str, **query: str | int | bool | None) -> Any:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str, **query: str | int | bool | None) -> Any:
        try:
            return self.request("GET", path, query=query)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, body=dict(body))

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Any:
        return self.request(
            "PATCH", path, body=dict(patch), content_type="application/merge-patch+json"
        )

    def delete(self, path: str, body: Mapping[str, Any] | None = None, **query: Any) -> Any:
        return self.request("DELETE", path, query=query, body=dict(body) if body else None)

    def close(self) -> None:
        self.api_client.close()


class StreamedResponse:
    """Lines of a streamed body; ``close()`` (from any thread) ends the iteration."""

    def __init__(self, response: Any) -> None:
        self._resp = response

    def lines(self) -> Iterator[str]:
        pending = b""
        for chunk in self._resp.stream(4096, decode_content=False):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace").rstrip("\r")
        if pending:
            yield pending.decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self._resp.shutdown() if hasattr(self._resp, "shutdown") else None
            self._resp.close()
            self._resp.release_conn()
        except Exception:  # closing a connection another thread reads: best effort
            return


def ns_path(namespace: str, resource: str, name: str | None = None, *, group: str = "") -> str:
    """The REST path of a namespaced resource: ``group`` is ``""`` (core v1) or like
    ``batch/v1``.

    >>> ns_path("jr", "pods", "x")
    '/api/v1/namespaces/jr/pods/x'
    >>> ns_path("jr", "jobs", group="batch/v1")
    '/apis/batch/v1/namespaces/jr/jobs'
    """
    base = f"/apis/{group}" if group else "/api/v1"
    path = f"{base}/namespaces/{quote(namespace)}/{resource}"
    return f"{path}/{quote(name)}" if name else path


def _q(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decode(data: bytes) -> Any:
    text = data.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _retry_after(resp: Any) -> float | None:
    try:
        value = resp.headers.get("Retry-After")
        return float(value) if value else None
    except (TypeError, ValueError, AttributeError):
        return None
