"""Issue 14: a run of run-job created through Prefect's API with a job the rules refuse is
refused by the Prefect server with a message naming the field and the rule, as juliarun's own
check does, not "is not valid under any of the given schemas" (see juliarun.specs'
_JobUnionSchema). The deployment is this module's own (a unique name, no worker or serve
process: a refused run is never created, and the test checks none was)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

from juliarun.flows import run_job
from juliarun.specs import NAME_PATTERN

pytestmark = [pytest.mark.prefect_server]

BATCH = {"kind": "Batch", "name": "ok", "command": ["true"]}
PAR = {"kind": "JuliaParBatchWorkers", "name": "ok", "script": "/a.jl"}
PREFIX = "Error creating flow run: Validation failed for field"


@pytest.fixture(scope="module")
def deployment(prefect_api_url: str) -> Iterator[UUID]:
    from prefect.client.orchestration import get_client

    name = f"user-validation-{uuid.uuid4().hex[:6]}"
    deployment_id = run_job.to_deployment(name=name, parameters={"job": BATCH}).apply()
    try:
        yield deployment_id
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def _refused(deployment_id: UUID, job: Any) -> str:
    """The server's answer to a new run of ``job``: its detail when refused (and no run of
    the deployment exists), else the test fails."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        try:
            run = client.create_flow_run_from_deployment(deployment_id, parameters={"job": job})
        except PrefectHTTPStatusError as exc:
            assert exc.response.status_code == 409
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            assert runs == []
            return str(exc.response.json()["detail"])
        client.delete_flow_run(run.id)
    raise AssertionError(f"the server took {job!r}")


@pytest.mark.parametrize(
    ("job", "detail"),
    [
        (
            {**BATCH, "name": "Bad_Name"},
            f"'job.name'. Failure reason: 'Bad_Name' does not match '{NAME_PATTERN}'",
        ),
        (
            {"kind": "JuliaBatch", "name": "a", "scirpt": "/a.jl"},
            "'job'. Failure reason: Additional properties are not allowed "
            "('scirpt' was unexpected)",
        ),
        ({"name": "a", "script": "/a.jl"}, "'job'. Failure reason: 'kind' is a required property"),
        ({"kind": "Batch", "name": "a"}, "'job'. Failure reason: 'command' is a required property"),
        ({**BATCH, "command": []}, "'job.command'. Failure reason: [] should be non-empty"),
        (
            {**BATCH, "storage": ["code", "Data"]},
            f"'job.storage[1]'. Failure reason: 'Data' does not match '{NAME_PATTERN}'",
        ),
        (
            {**BATCH, "resources": {"cpuu": "1"}},
            "'job.resources'. Failure reason: Additional properties are not allowed "
            "('cpuu' was unexpected)",
        ),
        (
            {**PAR, "nworkers": -1},
            "'job.nworkers'. Failure reason: -1 is less than the minimum of 0",
        ),
    ],
    ids=[
        "bad-name",
        "unknown-field",
        "missing-kind",
        "missing-command",
        "empty-command",
        "bad-storage-name",
        "unknown-resource",
        "negative-workers",
    ],
)
def test_the_server_names_the_field_and_the_rule(
    deployment: UUID, job: dict[str, Any], detail: str
) -> None:
    assert _refused(deployment, job) == f"{PREFIX} {detail}"


def test_a_bad_quantity_is_named_at_its_field(deployment: UUID) -> None:
    detail = _refused(deployment, {**BATCH, "resources": {"cpu": "lots"}})
    assert detail.startswith(f"{PREFIX} 'job.resources.cpu'. Failure reason: 'lots' does not match")


def test_one_storage_notion_on_the_server_and_definitions_still_taken(deployment: UUID) -> None:
    """The deployment's form, as the server keeps it, has one storage: the job's names. A run
    created through the API with storage definitions beside the job (as before) is taken."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        schema = client.read_deployment(deployment).parameter_openapi_schema
        assert schema is not None
        assert "storage" not in schema["properties"]
        assert schema["definitions"]["Batch"]["properties"]["storage"]["description"].startswith(
            "Storage to mount, by name, each at /mnt/<name>."
        )
        definitions = [{"name": "code", "kind": "host", "path": "/srv/code"}]
        run = client.create_flow_run_from_deployment(
            deployment, parameters={"job": {**BATCH, "storage": ["code"]}, "storage": definitions}
        )
        try:
            assert run.parameters["storage"] == definitions
        finally:
            client.delete_flow_run(run.id)
