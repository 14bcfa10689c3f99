"""One context per cluster per run: the tasks of a flow run share one connection (one API
client, one pair of stores), and runs in the same process (a served deployment) share the
contexts of the default clusters (``local`` / ``docker`` / ``kubernetes``) for as long as the
settings that built them stay the same. The settings are read once per flow run (reading them
costs milliseconds, and a run's tasks would each read them again), so a setting changed while a
run goes on is picked up by the next run. A saved cluster block is loaded once per flow run, so
a block saved again is picked up by the next run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator

from prefect.context import FlowRunContext, TaskRunContext

from juliarun.blocks.cluster import DEFAULT_CLUSTERS, connect
from juliarun.context import Context
from juliarun.settings import load_settings

MAX_CONTEXTS = 8  # the least recently used beyond this are closed
MAX_RUN_KEYS = 64  # the keys of the most recent (run, cluster) pairs kept

_lock = threading.Lock()
_contexts: OrderedDict[tuple[str, ...], Context] = OrderedDict()
_run_keys: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()


def _run_id() -> str | None:
    task_run = TaskRunContext.get()
    if task_run is not None:
        return str(task_run.task_run.flow_run_id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return str(flow_run.flow_run.id)
    return None


def _key(cluster: str) -> tuple[str, ...] | None:
    run = _run_id()
    if run is None:
        return _settings_key(cluster, None)
    with _lock:
        key = _run_keys.get((run, cluster))
        if key is not None:
            _run_keys.move_to_end((run, cluster))
            return key
    key = _settings_key(cluster, run)
    if key is not None:  # always, within a run
        with _lock:
            _run_keys[(run, cluster)] = key
            while len(_run_keys) > MAX_RUN_KEYS:
                _run_keys.popitem(last=False)
    return key


def _settings_key(cluster: str, run: str | None) -> tuple[str, ...] | None:
    """The shared context's key from the settings as they are now: the cluster and a
    fingerprint of the settings, and the run too for a saved block (loaded once per run)."""
    settings = load_settings()
    name = cluster or settings.cluster or "local"
    config = json.dumps(settings.model_dump(mode="json"), sort_keys=True, default=str)
    secret = settings.influx_token.get_secret_value()
    fingerprint = hashlib.sha256(f"{config}\0{secret}".encode()).hexdigest()
    if name in DEFAULT_CLUSTERS:
        return (name, fingerprint)
    return None if run is None else (name, fingerprint, run)


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
