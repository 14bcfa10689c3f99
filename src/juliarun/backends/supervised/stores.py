"""How a supervisor gets its log and metric store configs: through its stdin, once, at start.

The configs hold the stores' credentials (an Elasticsearch password, an InfluxDB token), and a
job can read its own job directory (on local it runs as the same user), so they are never
written to a file: ``submit`` writes them to the new supervisor's stdin and closes it.

>>> data = stores_json({"kind": "sqlite", "path": "/l.db"}, {"kind": "sqlite", "path": "/m.db"})
>>> import io
>>> read_stores(io.BytesIO(data))["metric_store"]["path"]
'/m.db'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

from juliarun.errors import BackendError


def stores_json(log_store: Mapping[str, Any], metric_store: Mapping[str, Any]) -> bytes:
    return json.dumps({"log_store": dict(log_store), "metric_store": dict(metric_store)}).encode()


def read_stores(stream: IO[bytes]) -> dict[str, Any]:
    """``{"log_store": ..., "metric_store": ...}`` as ``submit`` wrote them."""
    try:
        data = json.loads(stream.read() or b"{}")
    except ValueError as exc:
        raise BackendError("the supervisor's store configs are not JSON") from exc
    if not isinstance(data, dict) or not {"log_store", "metric_store"} <= set(data):
        raise BackendError(
            "the supervisor got no store configs on its stdin",
            hint="supervisors are started by submit; do not start one by hand",
        )
    return data
