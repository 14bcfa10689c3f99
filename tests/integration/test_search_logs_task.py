"""The ``search_logs`` Prefect task on the test Prefect server: each search publishes the lines
it matched as a table artifact of its task run, with every filter (job, worker, stream,
tenant, since/until, text, regex). The cluster is the embedded local default (SQLite logs)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId
from prefect.settings import PREFECT_API_URL, temporary_settings

import juliarun
from juliarun.logs import LogLine
from juliarun.tasks.observe import search_logs

pytestmark = pytest.mark.prefect_server

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url


def stored_lines() -> list[LogLine]:
    """Two jobs; ``alpha`` has two workers writing to both streams, one line a second."""
    lines = []
    for i in range(8):
        worker = f"alpha-{i % 2}"
        stream = "stderr" if i % 4 == 3 else "stdout"
        message = f"step {i} loss=0.{9 - i}" if stream == "stdout" else f"warning {i}"
        lines.append(LogLine(T0 + timedelta(seconds=i), "alpha", worker, stream, message))
    lines.append(
        LogLine(T0 + timedelta(seconds=2), "beta", "beta-0", "stdout", "step 0", tenant="acme")
    )
    return lines


# name -> (search_logs keyword arguments, the (job, worker, line) rows it must publish)
CASES: dict[str, tuple[dict[str, Any], list[tuple[str, str, str]]]] = {
    "text": (
        {"text": "step"},
        [
            ("alpha", "alpha-0", "step 0 loss=0.9"),
            ("alpha", "alpha-1", "step 1 loss=0.8"),
            ("alpha", "alpha-0", "step 2 loss=0.7"),
            ("beta", "beta-0", "step 0"),
            ("alpha", "alpha-0", "step 4 loss=0.5"),
            ("alpha", "alpha-1", "step 5 loss=0.4"),
            ("alpha", "alpha-0", "step 6 loss=0.3"),
        ],
    ),
    "job": ({"text": "step", "job": "beta"}, [("beta", "beta-0", "step 0")]),
    "tenant": ({"text": "step", "tenant": "acme"}, [("beta", "beta-0", "step 0")]),
    "worker": (
        {"text": "step", "job": "alpha", "worker": "alpha-1"},
        [
            ("alpha", "alpha-1", "step 1 loss=0.8"),
            ("alpha", "alpha-1", "step 5 loss=0.4"),
        ],
    ),
    "stream": (
        {"regex": ".", "job": "alpha", "stream": "stderr"},
        [
            ("alpha", "alpha-1", "warning 3"),
            ("alpha", "alpha-1", "warning 7"),
        ],
    ),
    "since-until": (
        {
            "regex": ".",
            "job": "alpha",
            "since": T0 + timedelta(seconds=2),
            "until": T0 + timedelta(seconds=4),
        },
        [("alpha", "alpha-0", "step 2 loss=0.7"), ("alpha", "alpha-1", "warning 3")],
    ),
    "regex": (
        {"regex": r"loss=0\.[0-4]$"},
        [
            ("alpha", "alpha-1", "step 5 loss=0.4"),
            ("alpha", "alpha-0", "step 6 loss=0.3"),
        ],
    ),
    "limit": (
        {"text": "step", "job": "alpha", "limit": 2},
        [
            ("alpha", "alpha-1", "step 5 loss=0.4"),
            ("alpha", "alpha-0", "step 6 loss=0.3"),
        ],
    ),
}


def test_search_logs_publishes_the_matching_lines_as_a_table_artifact(
    prefect_api: str, juliarun_home: Path
) -> None:
    with juliarun.init() as ctx:
        assert ctx.logs.write(stored_lines()) == 9

    @flow(name=f"search-logs-{uuid.uuid4().hex[:8]}")
    def searches() -> dict[str, tuple[uuid.UUID, list[str]]]:
        out = {}
        for case, (kwargs, _rows) in CASES.items():
            future = search_logs.submit("local", **kwargs)
            out[case] = (future.task_run_id, future.result())
        return out

    results = searches()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                task_run_id=ArtifactFilterTaskRunId(any_=[tid for tid, _ in results.values()])
            )
        )
    by_task_run = {a.task_run_id: a for a in artifacts}
    assert len(by_task_run) == len(CASES)
    for case, (task_run_id, rendered) in results.items():
        artifact = by_task_run[task_run_id]
        assert artifact.type == "table" and artifact.key == "log-search", case
        data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        rows = [(r["job"], r["worker"], r["line"]) for r in data]
        assert rows == CASES[case][1], case
        assert [r["line"] for r in data] == [x.rsplit(", ", 1)[-1] for x in rendered], case
        for r in data:
            assert datetime.fromisoformat(r["time"]) >= T0
            assert r["stream"] in {"stdout", "stderr"}
