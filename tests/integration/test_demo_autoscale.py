"""`juliarun demo autoscale`: the talk's process-autoscaler session on the embedded default,
with a real RabbitMQ broker and real Julia workers: the workers rise to at least 5 and come
back to 1, and every message is processed exactly once (counted by id)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from juliarun.demo_autoscale import run

pytestmark = [pytest.mark.julia, pytest.mark.rabbitmq]


def test_the_process_autoscaler_demo_scales_up_and_back_and_loses_nothing(
    juliarun_home: Path, julia: str, amqp_url: str
) -> None:
    out = io.StringIO()
    counts = run(
        out,
        bursts=3,
        per_burst=40,
        work_seconds=0.3,
        interval=1.0,
        window=3.0,
        scale_down_after=6.0,
    )
    text = out.getvalue()
    assert counts["published"] == 120
    assert (counts["processed"], counts["distinct"]) == (120, 120)  # each id exactly once
    assert counts["most_workers"] >= 5
    assert counts["final_workers"] == 1
    changes = [int(n) for n in re.findall(r"^changing scale of workers to (\d+)$", text, re.M)]
    assert max(changes) == counts["most_workers"] and changes[-1] == 1
    assert "120 results for 120 messages: 120 distinct, 0 processed more than once" in text
