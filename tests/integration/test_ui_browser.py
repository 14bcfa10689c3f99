"""Issue 14, item 1: the Prefect UI in a real headless browser, against `juliarun serve`.

A person opens the run-job deployment's run form, fills it for a job (each kind), submits, opens
the run, waits for it to complete, reads the job's lines in the run's logs and the worker table
artifact. Both UIs Prefect ships: v2 (the default, under /v2) and v1 (at the root).

`juliarun serve` runs once for the module, on its own JULIARUN_HOME, against a Prefect server of
the module's own (the same version as the test server): on the shared server another
`juliarun serve` would pick this module's runs of run-job up. The form's ``cluster`` is a
LocalCluster block on this module's home. A failed test leaves its last page under
test-output/ (see fixtures/browser.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from juliarun.backends.local import LocalBackend
from juliarun.deployments.serve import example_job
from tests.integration.fixtures.prefect import RUN_JOB, _served
from tests.integration.prefect_ui import (
    RunFormV1,
    RunFormV2,
    open_run_from_list,
    page_text,
    read_table,
    wait_for,
    wait_for_state,
    wait_for_text,
)

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

# One worker runs the module (its Prefect server and `juliarun serve` are module fixtures, made
# once), beside the shared-names group: they serve on a server of their own.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.prefect_server,
    pytest.mark.julia,
    pytest.mark.xdist_group("browser-ui"),
]


@dataclass(frozen=True)
class Served:
    ui: str  # the UI's base address (the API server's, without /api)
    deployment_id: str  # run-job's
    cluster: str  # the LocalCluster block the form names
    home: Path


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


PREFECT_SERVER = (sys.executable, "-m", "prefect", "server", "start")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def private_prefect(
    prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A Prefect server of this module's own (the test server's version, its UI included), so
    no other `juliarun serve` on the shared server picks this module's runs of run-job up (a
    served deployment is run by whichever serve process polls it). Stopped by its PID."""
    import urllib.request

    root = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url,  # the UI calls this server, not the default port's
    }
    env.pop("PREFECT_API_URL", None)
    log_path = root / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*PREFECT_SERVER, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"prefect server exited:\n{log_path.read_text()}"
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not healthy:\n{log_path.read_text()}"
            time.sleep(0.5)
        yield api_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def served(
    private_prefect: str, julia: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`juliarun serve --cluster local` on a fresh home against this module's Prefect server,
    the storage ``code`` defined there (a host directory with the Julia scripts), and a
    LocalCluster block naming that home."""
    prefect_api_url = private_prefect
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from juliarun.backends.local import LocalBackend
    from juliarun.blocks import LocalCluster
    from juliarun.specs import StorageSpec
    from juliarun.storage import StorageCatalog

    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    code = root / "code"
    code.mkdir()
    (code / "hello.jl").write_text(
        'println("hello from JuliaBatch ", VERSION)\nprintln(stderr, "to err")\n'
    )
    (code / "worker.jl").write_text(
        'println("worker ", ENV["JULIARUN_WORKER_INDEX"], " says hi")\n'
    )
    cluster = _unique("ui")
    log_path = root / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "JULIARUN_HOME": str(home)}
    env.pop("JULIARUN_CLUSTER", None)
    started = datetime.now(UTC)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "juliarun.cli", "serve", "--cluster", "local"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not _served(prefect_api_url, RUN_JOB, since=started):
            assert proc.poll() is None, f"juliarun serve exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"run-job not served:\n{log_path.read_text()}"
            time.sleep(0.5)
        with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
            LocalCluster(home=str(home)).save(cluster)
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(RUN_JOB)
        # The storage catalog is the served process's (its JULIARUN_HOME), not the block's.
        StorageCatalog(home / "storage.json").define(
            StorageSpec(name="code", kind="host", path=str(code))
        )
        yield Served(
            ui=prefect_api_url.removesuffix("/").removesuffix("/api"),
            deployment_id=str(deployment.id),
            cluster=cluster,
            home=home,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
            LocalCluster.delete(cluster)
        backend = LocalBackend(home)
        for job in backend.jobs():
            backend.delete(job.name, force=True)


def _read_run_v2(
    driver: WebDriver, served: Served, run_id: str, job: str, lines: tuple[str, ...]
) -> list[dict[str, str]]:
    """On the v2 run page: wait for Completed, wait for the job's ``lines`` in the Logs tab,
    open the job's artifact from the Artifacts tab and return its table's rows."""
    from selenium.webdriver.common.by import By

    state = wait_for_state(driver, ("Completed", "Failed", "Crashed"))
    assert state == "Completed", page_text(driver)
    wait_for_text(
        driver,
        f"{served.ui}/v2/runs/flow-run/{run_id}?tab=Logs",
        lines,
        f"the lines of {job} in the run's logs",
    )
    driver.get(f"{served.ui}/v2/runs/flow-run/{run_id}?tab=Artifacts")
    wait_for(
        driver,
        f"the artifact job-{job}",
        lambda: driver.find_elements(By.XPATH, f"//*[normalize-space()='job-{job}']"),
    )[0].click()
    return read_table(driver, "worker")


def _submit_v2(driver: WebDriver, served: Served, form: RunFormV2, job: str) -> str:
    form.flow_text("cluster", served.cluster)
    run_name = form.run_name()
    form.submit()
    return open_run_from_list(driver, (run_name, job))


def test_v2_the_form_opens_with_a_working_example(chrome: WebDriver, served: Served) -> None:
    """The run-job form opens filled with the example Batch: only the cluster is changed; the
    example runs as it is, its line is in the logs and its worker in the table."""
    form = RunFormV2(chrome, served.ui, served.deployment_id)
    assert form.job_tabs() == [
        ("JuliaBatch", False),
        ("JuliaParBatchWorkers", False),
        ("Batch", True),
    ]
    run_id = _submit_v2(chrome, served, form, "hello-juliarun")
    (row,) = _read_run_v2(
        chrome, served, run_id, "hello-juliarun", ("hello-juliarun-0 | hello from juliarun",)
    )
    assert (row["worker"], row["state"], row["exit_code"]) == (
        "hello-juliarun-0",
        "succeeded",
        "0",
    )


def test_v2_batch(chrome: WebDriver, served: Served) -> None:
    job = _unique("ui-batch")
    form = RunFormV2(chrome, served.ui, served.deployment_id)
    form.choose_kind("Batch")
    form.job_text("Name", job)
    form.job_list("Command", ["bash", "-c", "echo from the form; echo to err >&2"])
    assert form.selected_kind() == "Batch"
    run_id = _submit_v2(chrome, served, form, job)
    (row,) = _read_run_v2(
        chrome, served, run_id, job, (f"{job}-0 | from the form", f"{job}-0 | to err")
    )
    assert (row["worker"], row["state"], row["exit_code"]) == (f"{job}-0", "succeeded", "0")


def test_v2_julia_batch(chrome: WebDriver, served: Served) -> None:
    job = _unique("ui-jl")
    form = RunFormV2(chrome, served.ui, served.deployment_id)
    form.choose_kind("JuliaBatch")
    form.job_text("Script", "/mnt/code/hello.jl")
    form.job_text("Name", job)
    form.job_list("Storage", ["code"])
    assert form.selected_kind() == "JuliaBatch"
    run_id = _submit_v2(chrome, served, form, job)
    (row,) = _read_run_v2(
        chrome, served, run_id, job, (f"{job}-0 | hello from JuliaBatch 1.5.3", f"{job}-0 | to err")
    )
    assert (row["worker"], row["state"], row["exit_code"]) == (f"{job}-0", "succeeded", "0")


def test_v2_julia_par_batch_workers(chrome: WebDriver, served: Served) -> None:
    job = _unique("ui-par")
    form = RunFormV2(chrome, served.ui, served.deployment_id)
    form.choose_kind("JuliaParBatchWorkers")
    # Nworkers first: it is the one field only this kind has (see the module's report notes:
    # the form picks the kind from the fields filled in, so filling Name first jumps back to
    # JuliaBatch).
    form.job_text("Nworkers", "2")
    form.job_text("Script", "/mnt/code/worker.jl")
    form.job_text("Name", job)
    form.job_list("Storage", ["code"])
    assert form.selected_kind() == "JuliaParBatchWorkers"
    run_id = _submit_v2(chrome, served, form, job)
    rows = _read_run_v2(
        chrome, served, run_id, job, (f"{job}-0 | worker 0 says hi", f"{job}-1 | worker 1 says hi")
    )
    rows = sorted(rows, key=lambda r: r["worker"])
    assert [(r["worker"], r["state"], r["exit_code"]) for r in rows] == [
        (f"{job}-0", "succeeded", "0"),
        (f"{job}-1", "succeeded", "0"),
    ]


def _run_v1(driver: WebDriver, served: Served, form: RunFormV1, job: str) -> str:
    """Set the cluster, submit, and return the run page's text once the run completed."""
    form.flow_text("cluster", served.cluster)
    run_name = form.run_name()
    form.submit()
    run_id = open_run_from_list(driver, (run_name, job))
    state = wait_for_state(driver, ("Completed", "Failed", "Crashed"))
    assert state == "Completed", page_text(driver)
    return run_id


def test_v1_the_example_job_runs_from_the_json_box(chrome: WebDriver, served: Served) -> None:
    """v1 shows ``job`` as a JSON text box, filled with the example: a person changes only the
    cluster and submits; the run completes with the example's line in its logs."""
    form = RunFormV1(chrome, served.ui, served.deployment_id)
    text = wait_for(chrome, "the job's JSON box to be filled", form.job_json, timeout=30)
    assert json.loads(text) == example_job()
    run_id = _run_v1(chrome, served, form, "hello-juliarun")
    wait_for_text(
        chrome,
        f"{served.ui}/runs/flow-run/{run_id}?tab=Logs",
        ("hello-juliarun-0 | hello from juliarun",),
        "the example's line in the run's logs",
    )


def test_v1_julia_par_batch_workers_typed_as_json(chrome: WebDriver, served: Served) -> None:
    """Any other job has to be typed into v1's JSON box: a JuliaParBatchWorkers of two, whose
    lines and worker table (on the artifact's page) the run shows."""
    job = _unique("ui-v1par")
    form = RunFormV1(chrome, served.ui, served.deployment_id)
    form.type_job_json(
        json.dumps(
            {
                "kind": "JuliaParBatchWorkers",
                "name": job,
                "script": "/mnt/code/worker.jl",
                "storage": ["code"],
                "nworkers": 2,
            }
        )
    )
    run_id = _run_v1(chrome, served, form, job)
    wait_for_text(
        chrome,
        f"{served.ui}/runs/flow-run/{run_id}?tab=Logs",
        (f"{job}-0 | worker 0 says hi", f"{job}-1 | worker 1 says hi"),
        f"the lines of {job} in the run's logs",
    )
    artifact = _artifact_id(served, f"job-{job}")
    chrome.get(f"{served.ui}/artifacts/artifact/{artifact}")
    rows = sorted(read_table(chrome, "worker"), key=lambda r: r["worker"])
    assert [(r["worker"], r["state"], r["exit_code"]) for r in rows] == [
        (f"{job}-0", "succeeded", "0"),
        (f"{job}-1", "succeeded", "0"),
    ]


def _artifact_id(served: Served, key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: f"{served.ui}/api"}),
        get_client(sync_client=True) as client,
    ):
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return str(artifact.id)


def test_v2_a_failed_job_fails_the_run_with_its_reason(chrome: WebDriver, served: Served) -> None:
    """A job that exits 3: the run is Failed, and its page says why in juliarun's words (the
    job's exit code and last line), which the test reads off the page (kept as a screenshot
    under test-output/ when the reason is missing)."""
    job = _unique("ui-fail")
    form = RunFormV2(chrome, served.ui, served.deployment_id)
    form.job_text("Name", job)
    form.job_list("Command", ["bash", "-c", "echo about to fail; exit 3"])
    run_id = _submit_v2(chrome, served, form, job)
    assert wait_for_state(chrome, ("Completed", "Failed", "Crashed")) == "Failed"
    details = wait_for_text(
        chrome,
        f"{served.ui}/v2/runs/flow-run/{run_id}?tab=Details",
        (f"job '{job}' failed: worker {job}-0 exit code 3",),
        "the job's reason on the run's Details tab",
    )
    assert "last lines: about to fail" in " ".join(details.split())


def test_v2_a_refused_spec_fails_the_run_in_one_line(chrome: WebDriver, served: Served) -> None:
    """A Batch whose program is blank passes the form (a list of one text) but not juliarun's
    rules: the run fails before anything is created, its page says why in juliarun's one line
    naming the field (kept as a screenshot under test-output/ when it does not), and its logs
    say it once, with no Python traceback."""
    job = _unique("ui-refused")
    form = RunFormV2(chrome, served.ui, served.deployment_id)
    form.job_text("Name", job)
    form.job_list("Command", [" ", "-e", 'println("never")'])
    run_id = _submit_v2(chrome, served, form, job)
    assert wait_for_state(chrome, ("Completed", "Failed", "Crashed")) == "Failed"
    reason = (
        "invalid Batch: command: the program (the first item) must not be blank "
        "(hint: fix the named fields and submit again; nothing was created)"
    )
    wait_for_text(
        chrome,
        f"{served.ui}/v2/runs/flow-run/{run_id}?tab=Details",
        (reason,),
        "juliarun's reason on the run's Details tab",
    )
    logs = wait_for_text(
        chrome,
        f"{served.ui}/v2/runs/flow-run/{run_id}?tab=Logs",
        (f"Finished in state Failed({reason!r})",),
        "the run's one failure line in its logs",
    )
    assert logs.count("must not be blank") == 1, logs
    assert "Traceback" not in logs and "ValidationError" not in logs, logs
    assert job not in {j.name for j in LocalBackend(served.home).jobs()}


def test_v2_the_form_refuses_a_bad_name_at_its_field(chrome: WebDriver, served: Served) -> None:
    """``Bad_Name`` is not a DNS-1123 label: the form says so beside the Name field and stays
    open; no run is created."""
    from selenium.webdriver.common.by import By

    from tests.integration.prefect_ui import field_group

    form = RunFormV2(chrome, served.ui, served.deployment_id)
    form.job_text("Name", "Bad_Name")
    chrome.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()
    wait_for(
        chrome,
        "the Name field's error",
        lambda: "'Bad_Name' does not match" in field_group(form.job_panel(), "Name").text,
    )
    time.sleep(2)  # a run would have taken the browser to the deployment's runs by now
    assert "/run" in chrome.current_url and "tab=Runs" not in chrome.current_url
    assert form.selected_kind() == "Batch"


def test_v2_the_cluster_report_shows_free_capacity_as_a_picture(
    chrome: WebDriver, served: Served
) -> None:
    """The cluster-report deployment's run publishes the capacity picture beside the table:
    the artifact's page shows the PNG (decoded by the browser) and the numbers below it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: f"{served.ui}/api"}),
        get_client(sync_client=True) as client,
    ):
        report = client.read_deployment_by_name("cluster-report/cluster-report")
    form = RunFormV2(chrome, served.ui, str(report.id), parameter="cluster")
    form.flow_text("cluster", served.cluster)
    run_name = form.run_name()
    form.submit()
    run_id = open_run_from_list(chrome, (run_name,))
    assert wait_for_state(chrome, ("Completed", "Failed", "Crashed")) == "Completed"
    with (
        temporary_settings(updates={PREFECT_API_URL: f"{served.ui}/api"}),
        get_client(sync_client=True) as client,
    ):
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    (picture,) = [a for a in artifacts if a.type == "markdown"]
    assert picture.key is not None and picture.key.endswith("-capacity")
    chrome.get(f"{served.ui}/v2/artifacts/artifact/{picture.id}")
    sizes = wait_for(
        chrome,
        "the capacity picture, decoded",
        lambda: [
            width
            for width in chrome.execute_script(
                "return [...document.images]"
                ".filter(i => i.src.startsWith('data:image/png;base64,'))"
                ".map(i => i.complete ? i.naturalWidth : 0)"
            )
            if width
        ],
    )
    assert sizes[0] >= 400
    wait_for(chrome, "the numbers below the picture", lambda: read_table(chrome, "node"))
