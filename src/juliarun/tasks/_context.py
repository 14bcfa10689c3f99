"""One API context per cluster name per process, shared by the tasks of a flow run."""

from __future__ import annotations

import threading

from juliarun.api import Context, init

_lock = threading.Lock()
_contexts: dict[str, Context] = {}


def context(cluster: str) -> Context:
    with _lock:
        ctx = _contexts.get(cluster)
        if ctx is None:
            ctx = _contexts[cluster] = init(cluster)
        return ctx
