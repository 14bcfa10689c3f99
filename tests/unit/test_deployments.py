"""The deployments `juliarun serve` registers and the ones prefect.yaml declares are the same:
names, module entrypoints, default parameters (a working example job where a flow takes one)
and schedules."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from juliarun.deployments.serve import deployments, example_job
from juliarun.specs import Batch, validate_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.delenv("JULIARUN_ALERT_RULES", raising=False)
    return {d.name: d for d in deployments("local")}


def _yaml_deployments() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in config["deployments"]}


def test_served_entrypoints_are_module_paths_that_load_the_flow(served: dict[str, Any]) -> None:
    """Not a file path relative to where serve was started: any process imports the flow."""
    for name, deployment in served.items():
        assert ":" not in deployment.entrypoint, name
        assert deployment.entrypoint.startswith("juliarun.flows."), name
        assert load_flow_from_entrypoint(deployment.entrypoint).name == deployment.flow_name


def test_the_forms_open_with_a_job_that_validates(served: dict[str, Any]) -> None:
    for name in ("run-job", "run-pipeline"):
        job = validate_spec(served[name].parameters["job"])
        assert isinstance(job, Batch)
        assert job.name == "hello-juliarun"
        assert job.command == ["julia", "-e", 'println("hello from juliarun")']
        assert served[name].parameters["job"] == example_job()
    assert served["cluster-report"].parameters == {"cluster": "local"}


def test_prefect_yaml_declares_what_serve_serves(served: dict[str, Any]) -> None:
    declared = _yaml_deployments()
    assert set(declared) == {*served, "tenant"}
    for name, deployment in served.items():
        spec = declared[name]
        assert spec["entrypoint"] == deployment.entrypoint, name
        assert spec["parameters"] == deployment.parameters, name
        intervals = [timedelta(seconds=s["interval"]) for s in spec.get("schedules", [])]
        assert intervals == [s.schedule.interval for s in deployment.schedules], name
        assert spec["work_pool"]["name"] == "juliarun", name
        assert spec["tags"][0] == "juliarun", name
    assert declared["tenant"]["entrypoint"] == "juliarun.flows.tenants.ensure_tenant_flow"
    assert load_flow_from_entrypoint(declared["tenant"]["entrypoint"]).name == "tenant"


def test_every_flow_is_deployed(served: dict[str, Any]) -> None:
    """Each flow juliarun exports is a deployment of prefect.yaml, and of `juliarun serve`
    except the Kubernetes-only tenant flow."""
    import juliarun.flows

    flows = {getattr(juliarun.flows, name).name for name in juliarun.flows.__all__}
    declared = _yaml_deployments()
    in_yaml = {load_flow_from_entrypoint(d["entrypoint"]).name for d in declared.values()}
    assert flows == in_yaml
    assert flows - {"tenant"} == {d.flow_name for d in served.values()}
