"""Each task opens its own API context for the cluster it is given and closes it after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from juliarun.api import Context, init


@contextlib.contextmanager
def context(cluster: str) -> Iterator[Context]:
    ctx = init(cluster)
    try:
        yield ctx
    finally:
        ctx.close()
