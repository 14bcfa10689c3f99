"""juliarun's flows called in-process: no heartbeat thread to wait for unless the user asked
for one, the result storage and persistence Prefect would choose, read from the server once
instead of three times per run, and one Prefect client per thread rather than one per run
(juliarun.flows._flow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.context import FlowRunContext, SyncClientContext
from prefect.settings import (
    PREFECT_API_KEY,
    PREFECT_API_REQUEST_TIMEOUT,
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


CLIENTS: list[SyncPrefectClient] = []  # the client of each run of client_probe, in order


@flow(name="juliarun-probe-client")
def client_probe() -> None:
    """Records the client its run talks to the API with."""
    run = FlowRunContext.get()
    assert run is not None
    CLIENTS.append(run.client)


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


def _recorded() -> list[SyncPrefectClient]:
    CLIENTS.clear()
    return CLIENTS


def _count_clients(monkeypatch: pytest.MonkeyPatch) -> list[SyncPrefectClient]:
    built: list[SyncPrefectClient] = []
    init = SyncPrefectClient.__init__

    def counting(self: SyncPrefectClient, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "__init__", counting)
    return built


def test_inprocess_calls_of_a_thread_share_one_open_client(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _count_clients(monkeypatch)
    clients = _recorded()
    with temporary_settings(updates={PREFECT_API_REQUEST_TIMEOUT: 59}):  # no client has these
        for _ in range(3):
            client_probe()
            assert SyncClientContext.get() is None  # the caller's context is left as it was
    assert len(built) == 1  # Prefect's own path builds one per run
    assert clients == [built[0]] * 3
    assert not built[0]._closed  # left open for the next call
    assert str(built[0].api_url).rstrip("/") == prefect_api.rstrip("/")


def test_the_client_settings_decide_which_client_a_call_uses(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clients = _recorded()
    client_probe()
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 45}):  # not the client's
        client_probe()
    assert clients[1] is clients[0]
    built = _count_clients(monkeypatch)
    for key in ("key-a", "key-b", "key-a"):  # a secret: told apart by its value
        with temporary_settings(updates={PREFECT_API_KEY: key}):
            client_probe()
    assert len(built) == 2 and clients[2:] == [built[0], built[1], built[0]]
    for timeout in range(61, 61 + _flow.MAX_CLIENTS - 2):  # the thread has 3 clients so far
        with temporary_settings(updates={PREFECT_API_REQUEST_TIMEOUT: timeout}):
            client_probe()
    assert len(built) == _flow.MAX_CLIENTS and clients[5:] == built[2:]
    # The thread keeps MAX_CLIENTS clients: the least recently used (the first) was closed.
    assert clients[0]._closed
    assert not any(client._closed for client in built)


def test_another_thread_has_a_client_of_its_own(prefect_api: str) -> None:
    clients = _recorded()
    client_probe()
    settings = get_current_settings()

    def call() -> None:
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            client_probe()
        client_probe()  # this thread's client for its own settings object

    assert settings is get_current_settings()
    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    client_probe()
    assert clients[3] is clients[0]  # this thread's client is still the one it had
    assert all(c is not clients[0] for c in clients[1:3])


def test_a_client_the_caller_entered_is_the_one_the_run_uses(prefect_api: str) -> None:
    clients = _recorded()
    with SyncClientContext.get_or_create() as entered:
        client_probe()
        assert SyncClientContext.get() is entered
    assert clients == [entered.client]
    assert entered.client._closed  # the caller's, closed when they left it, as Prefect does


def test_a_connection_the_server_closed_while_idle_is_replaced(prefect_api: str) -> None:
    clients = _recorded()
    client_probe()
    # Past the server's keep-alive timeout (Prefect's default: 5 s) the server closes the
    # client's idle connection; the next call of the thread still runs, on the same client.
    time.sleep(get_current_settings().server.api.keepalive_timeout + 1.5)
    client_probe()
    assert clients[1] is clients[0] and not clients[0]._closed
