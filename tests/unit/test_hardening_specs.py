"""Issue 13, specs: input that used to pass validation and fail later (or never) is refused up
front, naming the field and the rule."""

from __future__ import annotations

from typing import Any

import pytest

from juliarun.errors import SpecError
from juliarun.specs import (
    Batch,
    BundleSpec,
    ImageSpec,
    JuliaBatch,
    JuliaParBatchWorkers,
    Resources,
    StorageSpec,
    TenantSpec,
    validate_spec,
)

BATCH = {"kind": "Batch", "name": "a", "command": ["echo", "hi"]}
JULIA = {"kind": "JuliaBatch", "name": "a", "script": "/mnt/s/m.jl", "storage": "s"}


def refused(data: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        validate_spec(data)
    return dict(info.value.errors)


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"command": ["ec\x00ho"]}, "command.0", "must not contain NUL bytes"),
        ({"command": ["echo", "a\x00b"]}, "command.1", "must not contain NUL bytes"),
        ({"env": {"A": "b\x00"}}, "env", "must not contain NUL bytes"),
        ({"command": [""]}, "command", "the program (the first item) must not be blank"),
        ({"command": ["  "]}, "command", "the program (the first item) must not be blank"),
        ({"image": ""}, "image", "must not be empty"),
        ({"image": "-v"}, "image", "must not start with '-' (got '-v')"),
        ({"image": "julia:1.10 --rm"}, "image", "must be an image reference"),
        ({"memory": "500m"}, "resources.memory", "must be at least 1 byte: '500m' rounds to 0"),
        ({"memory": 0.5}, "resources.memory", "must be at least 1 byte: '0.5' rounds to 0"),
        ({"cpu": "1e-300"}, "resources.cpu", "must be at least 1m (a thousandth of a core)"),
        ({"cpu": "0.0001"}, "resources.cpu", "must be at least 1m"),
        ({"memory": "1e40"}, "resources.memory", "must be at most 9223372036854775807"),
        ({"resources": {"node_labels": {"": "x"}}}, "resources.node_labels", "label key ''"),
        ({"resources": {"node_labels": {"pool": ""}}}, "resources.node_labels", "the value"),
        ({"resources": {"node_labels": {"a\x00": "x"}}}, "resources.node_labels", "label key"),
        ({"resources": {"node_labels": {"/x": "y"}}}, "resources.node_labels", "label key"),
        ({"kind": {"a": 1}}, "kind", "must be one of"),
        ({"kind": ["Batch"]}, "kind", "must be one of"),
    ],
)
def test_batch_inputs_refused_naming_the_field(
    change: dict[str, Any], field: str, rule: str
) -> None:
    errors = refused({**BATCH, **change})
    assert list(errors) == [field]
    assert rule in errors[field]


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"script": "   "}, "script", "must not be blank"),
        ({"script": "/mnt/s/m\x00.jl"}, "script", "must not contain NUL bytes"),
        ({"args": ["x", "\x00"]}, "args.1", "must not contain NUL bytes"),
        ({"kind": "JuliaParBatchWorkers", "script": " \t"}, "script", "must not be blank"),
    ],
)
def test_julia_inputs_refused_naming_the_field(
    change: dict[str, Any], field: str, rule: str
) -> None:
    errors = refused({**JULIA, **change})
    assert list(errors) == [field] and rule in errors[field]


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"kind": "git", "url": "--upload-pack=touch /tmp/x"}, "url", "must not start with '-'"),
        ({"kind": "git", "url": "-"}, "url", "must not start with '-'"),
        ({"kind": "git", "url": "  "}, "url", "must not be blank"),
        ({"kind": "git", "url": "/r", "ref": "--output=/x"}, "ref", "must not start with '-'"),
        ({"kind": "git", "url": "/r", "ref": "main\n"}, "ref", "control characters"),
        ({"kind": "host", "path": "/srv/\x00d"}, "path", "must not contain NUL bytes"),
        ({"kind": "ramdisk", "size": "500m"}, "size", "must be at least 1 byte"),
    ],
)
def test_storage_inputs_refused_naming_the_field(
    fields: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(SpecError) as info:
        StorageSpec(name="s", **fields)
    errors = dict(info.value.errors)
    assert list(errors) == [field] and rule in errors[field]


def test_images_and_bundles_refuse_option_like_images() -> None:
    with pytest.raises(SpecError, match=r"base: must not start with '-'"):
        ImageSpec(name="app", base="--privileged")
    with pytest.raises(SpecError, match=r"julia_image: must not be empty"):
        BundleSpec(name="b", packages=["Statistics"], julia_image=" ")
    with pytest.raises(SpecError, match=r"run\.0: must not contain NUL bytes"):
        ImageSpec(name="app", base="debian", run=["echo \x00"])


def test_model_validate_of_non_mappings_is_a_spec_error() -> None:
    for model in (Batch, JuliaBatch, JuliaParBatchWorkers, Resources, StorageSpec, TenantSpec):
        for bad in ([1, 2], "x", 3, None):
            with pytest.raises(SpecError) as info:
                model.model_validate(bad)
            assert info.value.errors[0][0] == "(spec)"


def test_deep_nesting_is_refused_before_anything_walks_it() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    errors = refused({**BATCH, "command": deep})
    assert errors == {"(spec)": "nests deeper than 16 levels"}


def test_valid_edge_values_still_pass() -> None:
    job = validate_spec({**BATCH, "cpu": "1m", "memory": "1", "image": "ghcr.io/a/b:1@sha256:00"})
    assert (job.resources.cpu, job.resources.memory) == ("1m", "1")
    assert validate_spec({**BATCH, "command": ["echo", ""]}).command == ["echo", ""]  # type: ignore[union-attr]
    labels = {"example.com/pool": "gpu-a", "zone": "eu.1"}
    assert Resources(node_labels=labels).node_labels == labels


def test_alert_rules_that_are_not_mappings_are_spec_errors() -> None:
    from juliarun.metrics.alerts import parse_rules

    with pytest.raises(SpecError) as info:
        parse_rules([None, ["x"], {"kind": "absence", "name": "n", "metric": "m", "window": 60}])  # type: ignore[list-item]
    assert info.value.errors == [
        ("0", "must be a mapping of fields"),
        ("1", "must be a mapping of fields"),
    ]
