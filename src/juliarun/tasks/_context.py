"""One context per cluster per run: the tasks of a flow run share one connection (one API
client, one pair of stores), and runs in the same process (a served deployment) share the
contexts of the default clusters (``local`` / ``docker`` / ``kubernetes``) for as long as the
settings that built them stay the same (the settings are read again whenever the environment
they come from changed). A saved cluster block is loaded once per flow run, so a block saved
again is picked up by the next run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator

from prefect.context import FlowRunContext, TaskRunContext

from juliarun.blocks.cluster import DEFAULT_CLUSTERS, connect
from juliarun.context import Context
from juliarun.settings import load_settings

MAX_CONTEXTS = 8  # the least recently used beyond this are closed
MAX_FINGERPRINTS = 8  # settings fingerprints of the most recent (cluster, environment) pairs

_lock = threading.Lock()
_contexts: OrderedDict[tuple[str, ...], Context] = OrderedDict()
_fingerprints: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, str]] = OrderedDict()


def _run_id() -> str | None:
    task_run = TaskRunContext.get()
    if task_run is not None:
        return str(task_run.task_run.flow_run_id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return str(flow_run.flow_run.id)
    return None


def _key(cluster: str) -> tuple[str, ...] | None:
    name, fingerprint = _fingerprint(cluster)
    if name in DEFAULT_CLUSTERS:
        return (name, fingerprint)
    run = _run_id()
    return None if run is None else (name, fingerprint, run)


def _fingerprint(cluster: str) -> tuple[str, str]:
    """The cluster's name and a fingerprint of the settings. The settings come from the
    environment alone, so they are read again only when it changed: reading them costs
    milliseconds, and every task of every run asks."""
    environment = tuple(sorted(os.environ.items()))
    with _lock:
        cached = _fingerprints.get((cluster, environment))
        if cached is not None:
            _fingerprints.move_to_end((cluster, environment))
            return cached
    settings = load_settings()
    name = cluster or settings.cluster or "local"
    config = json.dumps(settings.model_dump(mode="json"), sort_keys=True, default=str)
    secret = settings.influx_token.get_secret_value()
    fingerprint = hashlib.sha256(f"{config}\0{secret}".encode()).hexdigest()
    with _lock:
        _fingerprints[(cluster, environment)] = (name, fingerprint)
        while len(_fingerprints) > MAX_FINGERPRINTS:
            _fingerprints.popitem(last=False)
    return name, fingerprint


def shared_context(cluster: str) -> Context | None:
    """The shared context for ``cluster`` (connecting on first use), or ``None`` when it is
    a saved block used outside a flow run (nothing to share it with)."""
    key = _key(cluster)
    if key is None:
        return None
    with _lock:
        ctx = _contexts.get(key)
        if ctx is not None:
            _contexts.move_to_end(key)
            return ctx
    ctx = connect(cluster)
    with _lock:
        if key in _contexts:  # another thread connected first
            ctx.close()
            return _contexts[key]
        _contexts[key] = ctx
        while len(_contexts) > MAX_CONTEXTS:
            _, old = _contexts.popitem(last=False)
            old.close()
    return ctx


@contextlib.contextmanager
def context(cluster: str) -> Iterator[Context]:
    """The run's context for ``cluster`` (shared, left open), or a private one closed after."""
    ctx = shared_context(cluster)
    if ctx is not None:
        yield ctx
        return
    ctx = connect(cluster)
    try:
        yield ctx
    finally:
        ctx.close()


def close_all() -> None:
    """Close every shared context (a served process that stops)."""
    with _lock:
        contexts = list(_contexts.values())
        _contexts.clear()
    for ctx in contexts:
        ctx.close()
