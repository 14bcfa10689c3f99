"""`juliarun demo cluster` on the test cluster (kwok nodes, the real scheduler): a job larger
than the cluster makes nodes appear, runs and ends, the nodes go; the next job, started on the
headroom kept free, waits for no scale-up."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from juliarun.demo_cluster import run
from tests.integration.fixtures._service import require
from tests.integration.fixtures.kubernetes import _probe_kwok

pytestmark = pytest.mark.kwok


def test_the_cluster_demo_grows_runs_and_shrinks(kube_ctx: Any) -> None:
    require("kwok", _probe_kwok)
    out = io.StringIO()
    seen = run(out, workers=8, seconds=10, interval=1.0)
    text = out.getvalue()
    assert seen["most_nodes"] >= 4  # 8 workers of 2 cpu on 4-cpu nodes, plus headroom
    assert seen["final_nodes"] == 0
    assert seen["next_at_once"] == 1  # the headroom held room for it
    assert re.search(r"^adding \d node\(s\) to demo-\w+: ", text, re.M)
    assert "big: succeeded" in text
    assert re.search(r"^removing node demo-\w+-\d+: ", text, re.M)
    assert f"nodes rose to {seen['most_nodes']} and came back to 0" in text
