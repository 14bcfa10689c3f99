"""Issue 14, item 2: the run-job and run-pipeline forms, as Prefect validates them. The schema a
deployment carries refuses what the model refuses (names, quantities), takes what the model
takes (``storage: code``), orders required fields first, fixes a job's kind, says a missing kind
in so many words, and shows no reStructuredText; a spec the schema lets through but the model
refuses fails the run with juliarun's one-line message."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate

from juliarun.errors import SpecError
from juliarun.flows import run_job, run_pipeline
from juliarun.specs import NAME_PATTERN, validate_spec


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return parameter_schema(run_job).model_dump()


def _check(schema: dict[str, Any], job: dict[str, Any]) -> str | None:
    """Prefect's own check of a run's parameters (as the server does on a new run); the
    message it fails with, else None."""
    try:
        validate({"job": job}, schema, raise_on_error=True)
    except ValidationError as exc:
        return str(exc)
    return None


BATCH = {"kind": "Batch", "name": "ok", "command": ["true"]}


@pytest.mark.parametrize(
    "job",
    [
        BATCH,
        {**BATCH, "storage": "code"},
        {**BATCH, "storage": ["code", "data"]},
        {**BATCH, "resources": {"cpu": "500m", "memory": "1.5Gi"}},
        {**BATCH, "resources": {"cpu": "2", "memory": "1e9"}},
        {"kind": "JuliaBatch", "name": "j", "script": "/mnt/code/a.jl", "storage": "code"},
        {"kind": "JuliaParBatchWorkers", "name": "p", "script": "/a.jl", "nworkers": 2},
    ],
)
def test_the_schema_takes_what_the_model_takes(schema: dict[str, Any], job: dict[str, Any]) -> None:
    validate_spec(job)  # the model takes it
    assert _check(schema, job) is None


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({**BATCH, "name": "Bad_Name"}, "name"),
        ({**BATCH, "name": "x" * 64}, "name"),
        ({**BATCH, "storage": "Code"}, "storage"),
        ({**BATCH, "storage": ["ok", "no_underscore"]}, "storage"),
        ({**BATCH, "resources": {"cpu": "0"}}, "resources"),
        ({**BATCH, "resources": {"cpu": "-1"}}, "resources"),
        ({**BATCH, "resources": {"memory": "lots"}}, "resources"),
        ({**BATCH, "resources": {"memory": "0Gi"}}, "resources"),
        ({**BATCH, "pkg_bundle": "Bundle"}, "pkg_bundle"),
    ],
)
def test_the_schema_refuses_what_the_model_refuses(
    schema: dict[str, Any], job: dict[str, Any], field: str
) -> None:
    with pytest.raises(SpecError) as refused:
        validate_spec(job)
    assert refused.value.errors[0][0].startswith(field)
    assert _check(schema, job) is not None


def test_a_missing_kind_is_named(schema: dict[str, Any]) -> None:
    message = _check(schema, {"name": "a", "script": "/a.jl"})
    assert (
        message
        == "Validation failed for field 'job'. Failure reason: 'kind' is a required property"
    )


def test_each_kind_is_fixed_and_its_required_fields_come_first(schema: dict[str, Any]) -> None:
    definitions = schema["definitions"]
    required = {
        "Batch": ["kind", "name", "command"],
        "JuliaBatch": ["kind", "name", "script"],
        "JuliaParBatchWorkers": ["kind", "name", "script"],
    }
    for kind, fields in required.items():
        member = definitions[kind]
        assert member["required"] == fields
        assert list(member["properties"])[: len(fields)] == fields
        positions = [p["position"] for p in member["properties"].values()]
        assert positions == list(range(len(positions)))
        assert member["properties"]["kind"]["enum"] == [kind]
        assert "const" not in member["properties"]["kind"]


def test_descriptions_are_plain_text() -> None:
    for flow in (run_job, run_pipeline):
        text = str(parameter_schema(flow).model_dump())
        for markup in ("``", ":class:", ":func:"):
            assert markup not in text, (flow.name, markup)
    described = parameter_schema(run_job).model_dump()["properties"]
    assert all(described[p].get("description") for p in ("job", "cluster", "timeout"))


def test_the_form_has_one_storage_notion() -> None:
    """Storage is named and defined once (a Storage block, the CLI, Python); a job's storage
    field names what it mounts, and that is the only storage in the run forms. Python and API
    callers may still pass definitions to the flow (not in the form)."""
    for flow in (run_job, run_pipeline):
        schema = parameter_schema(flow).model_dump()
        assert "storage" not in schema["properties"], flow.name
        assert "StorageSpec" not in schema["definitions"], flow.name
        for kind in ("JuliaBatch", "JuliaParBatchWorkers", "Batch"):
            text = schema["definitions"][kind]["properties"]["storage"]["description"]
            assert text.startswith("Storage to mount, by name, each at /mnt/<name>."), text
            assert "juliarun Storage block saved in the Prefect UI" in text
            assert "juliarun storage define NAME" in text


def test_a_refused_spec_fails_the_run_with_juliaruns_message() -> None:
    """The flow itself checks the spec: a mapping the model refuses fails the run, whose state
    message is juliarun's one line; a Python caller gets the SpecError."""
    job = {**BATCH, "command": [" "]}
    state = run_job(job, return_state=True)  # type: ignore[arg-type]
    assert state.is_failed()
    assert state.message == (
        "invalid Batch: command: the program (the first item) must not be blank "
        "(hint: fix the named fields and submit again; nothing was created)"
    )
    with pytest.raises(SpecError, match="command: the program"):
        run_job(job)  # type: ignore[arg-type]


def test_an_unknown_field_is_named(schema: dict[str, Any]) -> None:
    message = _check(schema, {"kind": "JuliaBatch", "name": "a", "scirpt": "/a.jl"})
    assert message == (
        "Validation failed for field 'job'. Failure reason: "
        "Additional properties are not allowed ('scirpt' was unexpected)"
    )


def test_the_form_names_the_field_it_refuses(schema: dict[str, Any]) -> None:
    """What the UI's form shows beside each field (Prefect's error tree of every error): a bad
    name is reported at ``job.name`` with the rule, besides the union's own line."""
    from prefect.utilities.schema_tools.validation import build_error_obj

    tree = build_error_obj(validate({"job": {**BATCH, "name": "Bad_Name"}}, schema))
    assert {e["property"] for e in tree["errors"]} == {"job"}
    by_field = {
        e["property"]: e["errors"]
        for job in tree["errors"]
        for e in job["errors"]
        if isinstance(e, dict)
    }
    assert by_field == {"name": [f"'Bad_Name' does not match '{NAME_PATTERN}'"]}


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            {**BATCH, "name": "Bad_Name"},
            f"'job.name'. Failure reason: 'Bad_Name' does not match '{NAME_PATTERN}'",
        ),
        (
            {**BATCH, "storage": ["ok", "Bad"]},
            f"'job.storage[1]'. Failure reason: 'Bad' does not match '{NAME_PATTERN}'",
        ),
        ({**BATCH, "command": []}, "'job.command'. Failure reason: [] should be non-empty"),
    ],
)
def test_a_refused_value_is_named_at_its_field(
    schema: dict[str, Any], job: dict[str, Any], message: str
) -> None:
    """Prefect's one-line message (what its API answers) names the field and the rule, not
    "is not valid under any of the given schemas": the union's members, which the form shows
    as tabs, carry no value rules; the kind's rules apply by kind."""
    assert _check(schema, job) == f"Validation failed for field {message}"


def test_the_form_members_carry_every_field_but_no_value_rule(schema: dict[str, Any]) -> None:
    members = {m["title"]: m for m in schema["properties"]["job"]["oneOf"]}
    assert list(members) == ["JuliaBatch", "JuliaParBatchWorkers", "Batch"]
    for kind, member in members.items():
        rules = schema["definitions"][kind]
        assert list(member["properties"]) == list(rules["properties"])
        assert member["required"] == rules["required"]
        assert member["properties"]["kind"]["enum"] == [kind]
        assert "pattern" not in str(member) and "maxLength" not in str(member)
    assert members["Batch"]["properties"]["resources"]["properties"]["cpu"]["type"] == "string"
