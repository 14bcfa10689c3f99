"""The ``flow`` decorator of juliarun's flows: Prefect's, with quick returns when called in-process.

Two costs of a flow called from Python are Prefect's defaults rather than the flow's work, and
:class:`JuliaRunFlow` removes both without changing what a run records:

- **The heartbeat join.** The flow engine keeps a flow-run heartbeat thread that sleeps in
  whole seconds and is joined when a synchronous run ends, so a flow called in-process waits up
  to a second (half a second on average) after its work is done. The heartbeat is how Prefect
  tells a crashed *deployment* run from a live one; a flow called in-process has no deployment
  and its caller sees it end. So an in-process call runs without it, unless the user set
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` themselves (environment, profile or
  ``temporary_settings``): then their setting holds.
- **Three reads of the server's default result storage per run.** With no result storage on
  the flow, Prefect asks the server for its default storage block three times as each
  top-level run starts. A top-level in-process call asks once a minute instead and, when the
  server names no block (the usual case), runs with exactly the storage and persistence Prefect
  would have chosen (the local result path, ``PREFECT_RESULTS_PERSIST_BY_DEFAULT``). When the
  server or the settings name a block, Prefect's own path runs unchanged.
- **A new API client per run.** Each top-level run builds its own Prefect client and closes it
  when it ends: a TLS context loaded from the certificate bundle, a CSRF token fetched, a new
  connection (tens of milliseconds before the run's first request). A top-level in-process
  call of a synchronous flow uses its thread's client instead, kept open, one per client
  settings (the API's address, credentials, TLS, timeouts, headers: a
  ``temporary_settings`` that changes none of them, a heartbeat frequency say, shares it); the
  client is Prefect's own, built and entered as Prefect's engine does it (an idle connection
  the server closed is replaced by the next request, as in any long run). A client the caller
  entered themselves (``SyncClientContext``) is used as Prefect would use it.

Runs started from a deployment (``juliarun serve``, a worker) do not go through ``__call__`` and
keep Prefect's behaviour as it is.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast
from uuid import UUID

from prefect import Flow
from prefect.context import FlowRunContext, SettingsContext, SyncClientContext, TaskRunContext
from prefect.settings import Settings, get_current_settings

R = TypeVar("R")

SERVER_DEFAULT_TTL = 60.0
"""Seconds a read of the server's default result storage is reused."""

MAX_CLIENTS = 4
"""Prefect clients a thread keeps open, one per client settings (the least recently used
beyond this are closed)."""

_lock = threading.Lock()
_quiet: dict[int, tuple[Settings, Settings]] = {}
_server_default: dict[str, tuple[float, UUID | None]] = {}
_clients = threading.local()  # .entries: [(client settings, pid, started SyncClientContext)]


def _without_heartbeat(settings: Settings) -> Settings | None:
    """``settings`` with the flow-run heartbeat off, or None when the user chose a frequency
    (or it is off already). A shallow copy, cached per settings object: Prefect's own
    ``temporary_settings`` re-reads every source and costs tens of milliseconds."""
    flows = settings.flows
    if flows.heartbeat_frequency is None or "heartbeat_frequency" in flows.model_fields_set:
        return None
    with _lock:
        cached = _quiet.get(id(settings))
        if cached is not None and cached[0] is settings:
            return cached[1]
        quiet = settings.model_copy(
            update={"flows": flows.model_copy(update={"heartbeat_frequency": None})}
        )
        if len(_quiet) > 16:
            _quiet.clear()
        _quiet[id(settings)] = (settings, quiet)
        return quiet


def _server_default_storage(settings: Settings, clock: Callable[[], float]) -> UUID | None:
    """The server's default result-storage block, read at most once per
    :data:`SERVER_DEFAULT_TTL` per API URL; None when it names none or cannot be asked (as
    Prefect itself falls back to local storage then)."""
    from prefect.client.orchestration import get_client

    key = str(settings.api.url)
    now = clock()
    with _lock:
        cached = _server_default.get(key)
        if cached is not None and now - cached[0] < SERVER_DEFAULT_TTL:
            return cached[1]
    try:
        with get_client(sync_client=True) as client:
            block_id = client.read_server_default_result_storage().default_result_storage_block_id
    except Exception:  # Prefect falls back to local storage on any failure too
        block_id = None
    with _lock:
        _server_default[key] = (now, block_id)
    return block_id


def _client_settings(settings: Settings) -> dict[str, Any]:
    """The settings a Prefect client is built from (the API's address, credentials, TLS,
    timeouts, headers, CSRF and retries, the ephemeral server): two settings objects that agree
    on these get the same client, whatever else differs (a heartbeat frequency, a log level)."""
    return {
        "api": settings.api.model_dump(),  # secrets stay SecretStr: compared by their value
        "client": settings.client.model_dump(),
        "cloud": settings.cloud.api_url,
        "ephemeral": settings.server.ephemeral.model_dump(),
        "unit_test_mode": settings.testing.unit_test_mode,
    }


def _client_context(settings: Settings) -> SyncClientContext:
    """This thread's started Prefect client context for ``settings``: built and entered once
    (as Prefect's engine enters its own, API version check included) and left open. A thread
    keeps the clients of its :data:`MAX_CLIENTS` most recently used client settings; the one
    dropped beyond them is closed, and a forked child builds its own."""
    wanted = _client_settings(settings)
    pid = os.getpid()
    entries: list[tuple[dict[str, Any], int, SyncClientContext]] = _clients.__dict__.setdefault(
        "entries", []
    )
    for i, (built_for, built_in, client_context) in enumerate(entries):
        if built_for == wanted and built_in == pid and not client_context.client._closed:
            entries.append(entries.pop(i))  # the most recently used last
            return client_context
    client_context = SyncClientContext()
    # Entered in a copy of the context: the client starts, and stays started, but the
    # context variable is set only for the calls that use it (see JuliaRunFlow.__call__).
    try:
        contextvars.copy_context().run(client_context.__enter__)
    except BaseException:  # the API version check failed: Prefect's engine would raise it too
        client_context.client.__exit__(None, None, None)
        raise
    entries.append((wanted, pid, client_context))
    while len(entries) > MAX_CLIENTS:
        _, built_in, dropped = entries.pop(0)
        if built_in == pid:  # a parent's client is the parent's to close
            dropped.client.__exit__(None, None, None)
    return client_context


class JuliaRunFlow(Flow[Any, Any]):
    """A Prefect flow whose in-process calls return as soon as their work is done."""

    def _top_level(self, settings: Settings, clock: Callable[[], float]) -> Flow[Any, Any]:
        """The flow to run for a top-level call: this one with the result storage and
        persistence Prefect would choose made explicit, or itself when a block decides them."""
        if self.result_storage is not None or self.persist_result is not None:
            return self
        if settings.results.default_storage_block is not None:
            return self
        if _server_default_storage(settings, clock) is not None:
            return self
        path = str(settings.results.local_storage_path)
        persist = bool(settings.results.persist_by_default)
        variants: dict[tuple[str, bool], Flow[Any, Any]] = self.__dict__.setdefault("_variants", {})
        variant = variants.get((path, persist))
        if variant is None:
            variant = cast(
                Flow[Any, Any],
                Flow.with_options(self, result_storage=Path(path), persist_result=persist),
            )
            variants[(path, persist)] = variant
        return variant

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        settings = get_current_settings()
        if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
            return self._call(settings, self, args, kwargs)
        if SyncClientContext.get() is not None or self.isasync:
            return self._call(settings, self._top_level(settings, time.monotonic), args, kwargs)
        token = SyncClientContext.__var__.set(_client_context(settings))
        try:
            return self._call(settings, self._top_level(settings, time.monotonic), args, kwargs)
        finally:
            SyncClientContext.__var__.reset(token)

    def _call(
        self,
        settings: Settings,
        target: Flow[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        call = cast(Callable[..., Any], Flow.__call__)
        quiet = _without_heartbeat(settings)
        if quiet is None:
            return call(target, *args, **kwargs)
        current = SettingsContext.get()
        assert current is not None  # Prefect always has a global settings context
        with SettingsContext(profile=current.profile, settings=quiet):
            return call(target, *args, **kwargs)

    def with_options(self, **kwargs: Any) -> JuliaRunFlow:
        new = super().with_options(**kwargs)
        new.__class__ = JuliaRunFlow
        return cast(JuliaRunFlow, new)


def flow(**options: Any) -> Callable[[Callable[..., R]], Flow[..., R]]:
    """``prefect.flow(**options)`` making a :class:`JuliaRunFlow`."""

    def decorate(fn: Callable[..., R]) -> Flow[..., R]:
        return JuliaRunFlow(fn, **options)

    return decorate
