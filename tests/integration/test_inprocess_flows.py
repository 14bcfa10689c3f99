"""juliarun's flows called in-process: no heartbeat thread to wait for unless the user asked
for one, and the result storage and persistence Prefect would choose, read from the server
once instead of three times per run (juliarun.flows._flow)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.context import FlowRunContext
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)

from juliarun.flows import _flow
from juliarun.flows._flow import JuliaRunFlow, flow

pytestmark = pytest.mark.prefect_server


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        _flow._server_default.clear()
        yield prefect_api_url


@flow(name="juliarun-probe")
def probe() -> dict[str, Any]:
    run = FlowRunContext.get()
    assert run is not None
    storage = run.result_store.result_storage
    return {
        "heartbeat": get_current_settings().flows.heartbeat_frequency,
        "persist": run.persist_result,
        "basepath": getattr(storage, "basepath", None),
    }


@flow(name="juliarun-probe-parent")
def parent() -> dict[str, Any]:
    return probe()


def test_a_juliarun_flow_is_a_prefect_flow_of_its_own_class() -> None:
    assert isinstance(probe, JuliaRunFlow)
    assert isinstance(probe.with_options(name="other"), JuliaRunFlow)
    assert probe.with_options(name="other").name == "other"


def test_an_inprocess_call_runs_without_the_heartbeat_thread(prefect_api: str) -> None:
    assert get_current_settings().flows.heartbeat_frequency is not None  # Prefect's default: on
    assert probe()["heartbeat"] is None
    assert parent()["heartbeat"] is None  # a subflow call too


def test_a_heartbeat_the_user_chose_is_kept(prefect_api: str) -> None:
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 45}):
        assert probe()["heartbeat"] == 45


def test_result_storage_is_prefects_choice_read_once(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    read = SyncPrefectClient.read_server_default_result_storage

    def counting(self: SyncPrefectClient) -> Any:
        reads.append("read")
        return read(self)

    monkeypatch.setattr(SyncPrefectClient, "read_server_default_result_storage", counting)
    settings = get_current_settings()
    results = [probe() for _ in range(3)]
    assert len(reads) == 1  # Prefect's own path reads it three times per run
    for result in results:
        assert result["persist"] is bool(settings.results.persist_by_default)
        assert result["basepath"] == str(settings.results.local_storage_path)
