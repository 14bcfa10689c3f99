"""Issue 14: the build flows put the build's steps in the flow run's logs, as ``juliarun build``
shows them (``step 2/4: COPY ...``, the builder's lines under it, ``step 2/4 done in 1.2s``), and
a failed build names the step it failed at. Read back through the Prefect API."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings

from juliarun.errors import BuildError
from juliarun.flows import build_image
from juliarun.specs import ImageSpec

pytestmark = [pytest.mark.prefect_server, pytest.mark.docker]


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url


def _run_logs(flow_run_id: uuid.UUID) -> list[str]:
    """The run's log messages once all have arrived: logs reach the API in batches, in the
    order they were written, shortly after the run ends; the last is the flow run's own
    "Finished in state ..." (a task run's own comes earlier)."""
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            ordered = sorted(logs, key=lambda e: e.timestamp)
            messages = [entry.message for entry in ordered]
            if time.monotonic() > deadline or any(
                e.task_run_id is None and e.message.startswith("Finished in state ")
                for e in ordered
            ):
                return messages
            time.sleep(0.5)


def _spec(tmp_path: Path, base: str, labels: dict[str, str], run: str) -> ImageSpec:
    stamp = tmp_path / "stamp.txt"
    stamp.write_text(f"{uuid.uuid4()}\n")  # a new content hash: built, not a cached task run
    return ImageSpec(
        name="juliarun/test-build-logs",
        base=base,
        files={"/opt/stamp.txt": str(stamp)},
        run=[run],
        labels=labels,
    )


def test_the_image_build_flow_logs_its_steps(
    prefect_api: str,
    registry: str,
    base_image: str,
    docker_labels: dict[str, str],
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, base_image, docker_labels, "echo built-by-the-flow")
    state = build_image(spec, registry, return_state=True)
    assert state.is_completed(), state.message
    messages = _run_logs(state.state_details.flow_run_id)
    steps = [m for m in messages if re.fullmatch(r"step \d+/\d+: .+", m)]
    total = len(steps)
    assert total >= 3, messages
    assert steps[0] == f"step 1/{total}: FROM {base_image}"
    assert any(re.fullmatch(rf"step \d+/{total}: COPY .*stamp.*", m) for m in steps), steps
    run = next(i for i, m in enumerate(messages) if m.endswith("RUN echo built-by-the-flow"))
    assert re.fullmatch(rf"step \d+/{total}: RUN echo built-by-the-flow", messages[run])
    assert "  | built-by-the-flow" in messages[run:]
    done = [m for m in messages if re.fullmatch(rf"step \d+/{total} done in \d+\.\ds", m)]
    assert len(done) >= total, messages  # every numbered step ends (the push is one more)
    assert any(m.startswith("step ") and ": push to " in m for m in messages), messages


def test_a_failed_image_build_names_its_step_in_the_logs(
    prefect_api: str,
    registry: str,
    base_image: str,
    docker_labels: dict[str, str],
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, base_image, docker_labels, "echo about-to-fail; exit 3")
    state = build_image(spec, registry, return_state=True)
    assert state.is_failed()
    with pytest.raises(BuildError):
        state.result()
    messages = _run_logs(state.state_details.flow_run_id)
    failed = [m for m in messages if re.fullmatch(r"step \d+/\d+ failed: .*", m)]
    assert len(failed) == 1 and failed[0].endswith(": RUN echo about-to-fail; exit 3"), messages
    assert "  | about-to-fail" in messages
