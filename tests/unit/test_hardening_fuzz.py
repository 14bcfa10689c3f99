"""Issue 13, fuzzing: generated specs of every model in :mod:`juliarun.specs`, YAML files through
``juliarun submit`` and job-name arguments through the command line. Whatever comes in, the
only error is juliarun's own (:class:`~juliarun.errors.SpecError` naming the field for a spec),
and the command line answers in one printable line. At least 5,000 cases a run; the count is
recorded as the ``fuzz_cases`` property and printed (``pytest -rA``)."""

from __future__ import annotations

import codecs
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import typer.main
import typer.testing
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import juliarun.cli
from juliarun import specs
from juliarun.cli import app
from juliarun.errors import JuliaRunError, SpecError
from juliarun.metrics.alerts import AbsenceRule, ThresholdRule, parse_rules
from juliarun.scaling.policy import HPAPolicy, ScalingPolicy, ScalingRules

CASES: Counter[str] = Counter()
MINIMUM = 5000
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _command_built_once() -> Any:
    """Typer's test runner builds the whole click command tree again on every call (about 20 ms
    idle, over 150 ms on a loaded machine); the `juliarun` process builds it once, and so do the
    thousands of calls here."""
    built = typer.main.get_command(app)
    patch = pytest.MonkeyPatch()
    patch.setattr(typer.testing, "_get_command", lambda _app: built)
    yield
    patch.undo()


# Every spec model, with one valid input to mutate (a mutation of a valid spec reaches the
# deeper rules; a spec made from nothing is refused at its first field).
VALID: dict[type[specs._Model], dict[str, Any]] = {
    specs.JuliaBatch: {"kind": "JuliaBatch", "name": "a", "script": "/mnt/s/m.jl", "storage": "s"},
    specs.JuliaParBatchWorkers: {
        "kind": "JuliaParBatchWorkers",
        "name": "w",
        "script": "/mnt/s/w.jl",
        "nworkers": 3,
    },
    specs.Batch: {"kind": "Batch", "name": "b", "command": ["echo", "hi"], "image": "julia:1"},
    specs.Resources: {"cpu": "500m", "memory": "1Gi", "node_labels": {"pool": "a"}},
    specs.StorageSpec: {"name": "code", "kind": "git", "url": "https://x/r.git", "ref": "main"},
    specs.TenantQuota: {"cpu": "4", "memory": "8Gi", "jobs": 3},
    specs.ContainerDefaults: {"cpu_request": "100m", "memory_limit": "1Gi"},
    specs.TenantUser: {"name": "alice", "role": "view"},
    specs.TenantSpec: {"name": "team-a", "quota": {"cpu": 4}, "users": [{"name": "bob"}]},
    specs.ImageSpec: {"name": "juliarun/app", "base": "debian:bookworm", "apt": ["curl"]},
    specs.BundlePackage: {
        "name": "Greet",
        "uuid": "01234567-89ab-cdef-0123-456789abcdef",
        "path": "/src/Greet",
    },
    specs.BundleSpec: {"name": "greet", "packages": ["Statistics"], "julia_image": "julia:1"},
    specs.NodePool: {
        "name": "highcpu",
        "node_type": "highcpu",
        "cpu": "4",
        "memory": "16Gi",
        "max": 10,
        "taints": [{"key": "dedicated", "value": "julia"}],
    },
    specs.NodeTaint: {"key": "dedicated", "value": "julia", "effect": "NoExecute"},
    # The process autoscaler's policy (scaling/policy.py) and alert rules are specs too.
    HPAPolicy: {"target": 5, "min_workers": 1, "max_workers": 10},
    ScalingRules: {"stabilization": 60, "policies": [{"type": "Pods", "value": 4}]},
    ScalingPolicy: {"type": "Percent", "value": 100, "period": 15},
    ThresholdRule: {"name": "busy", "metric": "queue", "window": 60, "op": ">", "value": 5},
    AbsenceRule: {"name": "gone", "metric": "queue", "window": 60, "lookback": 600},
}
JOB_KINDS = {specs.JuliaBatch, specs.JuliaParBatchWorkers, specs.Batch}

TRICKY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "-",
        "-v",
        "--upload-pack=x",
        "500m",
        "0.5",
        "1e-300",
        "1e400",
        "0",
        "-1",
        "1Gi",
        "1m",
        "nan",
        "inf",
        "Batch",
        "JuliaBatch",
        "JuliaParBatchWorkers",
        "git",
        "host",
        "ramdisk",
        "volume",
        "/abs/path",
        "rel/path",
        "../..",
        "a" * 70,
        "A",
        "\x1b[31mred",
        "line\nbreak",
        "é",
        "\u202e",
        "kube-system",
        "default",
        "OnFailure",
        "ReadOnlyMany",
        "Block",
        "edit",
        "Group",
        "JULIARUN_X",
        "PATH",
        "\t",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    TRICKY,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(TRICKY, st.text(max_size=6)), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def spec_input(draw: st.DrawFn) -> tuple[type[specs._Model], Any]:
    model = draw(st.sampled_from(sorted(VALID, key=lambda m: m.__name__)))
    if draw(st.integers(0, 9)) == 0:
        return model, draw(VALUES)  # anything at all
    data = dict(VALID[model])
    fields = [*model.model_fields, "cpu", "memory", "gpu", "node_type", "bogus"]
    for key in draw(st.lists(st.sampled_from(fields), max_size=3)):
        data[key] = draw(VALUES | TRICKY)
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=1)):
        data.pop(key, None)
    return model, data


def check_rejection(err: SpecError, model: type[specs._Model], data: Any) -> None:
    known = set(model.model_fields) | {"(spec)", "(arguments)", "kind"}
    if model in JOB_KINDS:  # validate_spec builds the kind the data names
        known |= {f for kind in JOB_KINDS for f in kind.model_fields}
    keys = {str(k) for k in data} if isinstance(data, dict) else set()
    assert err.errors, err
    for field, rule in err.errors:
        assert field and rule, err
        assert field.split(".")[0] in known or field in keys, (field, rule, data)


@settings(
    max_examples=int(os.environ.get("FUZZ_SPECS", "3600")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec_input())
def test_every_spec_model_refuses_with_spec_errors_naming_fields(
    case: tuple[type[specs._Model], Any],
) -> None:
    model, data = case
    CASES["specs"] += 1
    calls = [lambda: model.model_validate(data)]
    if isinstance(data, dict) and all(isinstance(k, str) for k in data):
        calls.append(lambda: model(**data))
    if model in JOB_KINDS:
        calls.append(lambda: specs.validate_spec(data))
    for call in calls:
        try:
            call()
        except SpecError as err:
            check_rejection(err, model, data)
    if model in (ThresholdRule, AbsenceRule):
        try:
            parse_rules([data])
        except SpecError as err:  # fields are numbered by the rule's place in the list
            assert all(f == "0" or f.startswith("0.") for f, _ in err.errors), err
            stripped = [(f.removeprefix("0.") if f != "0" else "(spec)", r) for f, r in err.errors]
            check_rejection(SpecError(err.model, stripped), model, data)


# -- YAML files through `juliarun submit` ---------------------------------------------------


class ValidatedError(JuliaRunError):
    """Raised instead of connecting to a cluster: the spec passed validation."""


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(cluster: str | None = None) -> Any:
        raise ValidatedError("validated")

    monkeypatch.setattr(juliarun.cli.api, "init", init)


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1", "cp1252", "utf-16-le"]


@st.composite
def yaml_file(draw: st.DrawFn) -> bytes:
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return draw(st.binary(max_size=64))
    model = draw(st.sampled_from(sorted(JOB_KINDS, key=lambda m: m.__name__)))
    _, data = draw(spec_input()) if shape == 1 else (model, dict(VALID[model]))
    if shape > 1 and isinstance(data, dict):
        for key in draw(
            st.lists(st.sampled_from([*model.model_fields, "cpu", "memory"]), max_size=3)
        ):
            data[key] = draw(VALUES)
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        text = "kind: Batch\n"
    extra = draw(
        st.sampled_from(
            [
                "",
                "name: twice\nname: again\n",
                "memory: " + "9" * 5000 + "\n",
                "x: " + "[" * 100 + "]" * 100 + "\n",  # deeper: test_hardening_local.py
                "? [a, b]\n: c\n",
                "&a x: *a\n",
                "kind: {JuliaBatch: 1}\n",
                "\x00: 1\n",
                "%TAG ! tag:x,1:\n---\n",
                "!!python/object:os.system x\n",
            ]
        )
    )
    encoding = draw(st.sampled_from(ENCODINGS))
    return codecs.encode(text + extra, encoding, errors="replace")


ONE_ERROR = re.compile(r"error: (invalid \S+: \S[^\n]*: \S|validated$|\S)")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check_cli(result: Any) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert not CONTROL.search(result.output), result.output
    if result.exit_code == 1:
        lines = result.output.splitlines()
        assert 1 <= len(lines) <= 2, result.output
        assert ONE_ERROR.match(lines[0]), lines[0]
        assert len(lines) == 1 or lines[1].startswith("hint: "), result.output


@settings(
    max_examples=int(os.environ.get("FUZZ_YAML", "800")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(yaml_file())
def test_yaml_files_through_submit_are_one_line_errors(
    no_cluster: None, tmp_path: Path, content: bytes
) -> None:
    CASES["yaml"] += 1
    path = tmp_path / "job.yaml"
    path.write_bytes(content)
    result = runner.invoke(app, ["submit", str(path)])
    check_cli(result)
    assert result.exit_code == 1  # refused, or validated and stopped before any cluster


# -- job-name arguments ---------------------------------------------------------------------

NAMES = st.one_of(
    TRICKY,
    st.text(max_size=20),
    st.from_regex(r"[a-z0-9][-a-z0-9]{0,61}[a-z0-9]", fullmatch=True),
    st.sampled_from(["/etc", "/tmp/x", "..", ".", "a/b", "~root", "-rf", "--help"]),
)


@settings(
    max_examples=int(os.environ.get("FUZZ_ARGS", "700")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(["status", "tail", "delete", "scale", "logs collect"]),
    NAMES.filter(lambda n: "\x00" not in n),  # argv cannot carry NUL
    st.one_of(st.integers(-5, 2000).map(str), TRICKY),
)
def test_job_name_arguments_are_checked_before_use(
    no_cluster: None, command: str, name: str, workers: str
) -> None:
    CASES["arguments"] += 1
    argv = [*command.split(), "--", name]
    if command == "scale":
        argv.append(workers)
    result = runner.invoke(app, argv)
    check_cli(result)
    if result.exit_code == 1 and not specs.is_job_name(name):
        assert "job: must be a job name (a DNS-1123 label)" in result.output
    if specs.is_job_name(name) and result.exit_code == 1:
        assert result.output.startswith("error: validated")


def test_fuzz_case_count(record_property: Any) -> None:
    """Runs last in this module: the cases generated above."""
    total = sum(CASES.values())
    record_property("fuzz_cases", total)
    print(f"fuzz cases: {total} ({dict(CASES)})")
    if set(CASES) == {"specs", "yaml", "arguments"} and not any(
        k.startswith("FUZZ_") for k in os.environ
    ):
        assert total >= MINIMUM
