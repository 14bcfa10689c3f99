"""The spec vocabulary: construction, shortcuts, defaults, hashing, and every rule's error."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from juliarun.errors import JuliaRunError, SpecError
from juliarun.specs import (
    Batch,
    JuliaBatch,
    JuliaParBatchWorkers,
    Resources,
    StorageSpec,
    parse_cpu,
    parse_memory,
    parse_quantity,
    validate_spec,
)

# Oracles written independently of the implementation's regular expressions.
LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
QUANTITY = (
    r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?"
)
BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
FEW = settings(max_examples=100, deadline=None)


def is_label(value: str) -> bool:
    return len(value) <= 63 and re.fullmatch(LABEL, value) is not None


def is_quantity(value: str) -> bool:
    return re.fullmatch(QUANTITY, value.strip()) is not None


def spec_errors(make: Any) -> dict[str, str]:
    """Build a spec expecting it to fail; its errors as ``{field path: rule}``."""
    with pytest.raises(SpecError) as info:
        make()
    err = info.value
    assert isinstance(err, JuliaRunError)
    assert err.errors, "a SpecError lists at least one (field, rule)"
    return dict(err.errors)


def job(**overrides: Any) -> JuliaBatch:
    return JuliaBatch("hello", "/mnt/code/main.jl", "code", **overrides)


# ---------------------------------------------------------------------------------------------
# Construction and defaults
# ---------------------------------------------------------------------------------------------


def test_julia_batch_positional_as_in_the_seed() -> None:
    j = JuliaBatch("helloworld", "/mnt/juliarun/helloworld/helloworld.jl", "juliarun")
    assert j.kind == "JuliaBatch"
    assert j.name == "helloworld"
    assert j.script == "/mnt/juliarun/helloworld/helloworld.jl"
    assert j.storage == ["juliarun"]
    assert j.desired_workers() == 1


def test_julia_batch_positional_equals_keyword() -> None:
    by_position = JuliaBatch("hello", "/mnt/code/main.jl", "code")
    by_name = JuliaBatch(name="hello", script="/mnt/code/main.jl", storage=["code"])
    mixed = JuliaBatch("hello", script="/mnt/code/main.jl", storage="code")
    assert by_position == by_name == mixed
    assert by_position.spec_hash() == by_name.spec_hash() == mixed.spec_hash()


def test_julia_batch_defaults() -> None:
    j = JuliaBatch("hello", "/mnt/code/main.jl")
    assert j.storage == []
    assert j.args == []
    assert j.env == {}
    assert j.image is None
    assert j.pkg_bundle is None
    assert j.restart == "Never"
    assert j.backoff_limit == 3
    assert j.tenant == "default"
    assert j.resources == Resources()
    assert (j.resources.cpu, j.resources.memory, j.resources.gpu) == ("1", "1Gi", 0)
    assert j.resources.node_type is None
    assert j.resources.node_labels == {}


def test_par_batch_workers_as_in_the_seed() -> None:
    w = JuliaParBatchWorkers(
        "workers", "/mnt/juliarun/w.jl", "juliarun", nworkers=3, cpu="500m", memory="1Gi"
    )
    assert w.kind == "JuliaParBatchWorkers"
    assert w.storage == ["juliarun"]
    assert w.nworkers == 3
    assert w.desired_workers() == 3
    assert w.resources.cpu == "500m"
    assert w.resources.cpu_cores == 0.5
    assert w.resources.memory == "1Gi"
    assert w.resources.memory_bytes == 2**30


def test_par_batch_workers_defaults_restart_on_failure() -> None:
    w = JuliaParBatchWorkers("workers", "/mnt/code/w.jl")
    assert w.restart == "OnFailure"
    assert w.nworkers == 1
    assert JuliaParBatchWorkers("w", "/w.jl", restart="Never").restart == "Never"


def test_batch_keyword_command() -> None:
    b = Batch("build", command=["bash", "-c", "echo hi"])
    assert b.kind == "Batch"
    assert b.command == ["bash", "-c", "echo hi"]
    assert b.restart == "Never"
    assert b.storage == []


def test_batch_positional_command_and_storage() -> None:
    b = Batch("build", ["make", "all"], ["src", "out"])
    assert b.command == ["make", "all"]
    assert b.storage == ["src", "out"]


def test_storage_accepts_one_name_many_or_none() -> None:
    assert JuliaBatch("a", "/s.jl", storage=None).storage == []
    assert JuliaBatch("a", "/s.jl", ["x", "y"]).storage == ["x", "y"]
    assert JuliaBatch("a", "/s.jl", "x").storage == ["x"]


def test_resource_shortcuts_fill_resources() -> None:
    j = job(cpu="2", memory="4Gi", gpu=1, node_type="gpu")
    assert j.resources == Resources(cpu="2", memory="4Gi", gpu=1, node_type="gpu")
    assert j.resources.cpu_cores == 2.0
    assert j.resources.memory_bytes == 4 * 2**30


def test_resource_shortcuts_merge_with_explicit_resources() -> None:
    from_dict = job(resources={"memory": "2Gi", "node_labels": {"zone": "a"}}, cpu="250m")
    assert from_dict.resources.cpu == "250m"
    assert from_dict.resources.memory == "2Gi"
    assert from_dict.resources.node_labels == {"zone": "a"}
    # A shortcut wins over the same field of resources.
    from_model = job(resources=Resources(cpu="4", gpu=2), cpu="3")
    assert (from_model.resources.cpu, from_model.resources.gpu) == ("3", 2)


def test_numeric_cpu_and_memory_become_quantities() -> None:
    j = job(cpu=2, memory=1024)
    assert j.resources.cpu == "2"
    assert j.resources.memory == "1024"
    assert job(cpu=0.5).resources.cpu_cores == 0.5


def test_quantities_are_trimmed() -> None:
    assert Resources(cpu=" 2 ", memory="\t1Gi\n").model_dump()["cpu"] == "2"
    assert Resources(memory="\t1Gi\n").memory == "1Gi"


def test_validate_spec_does_not_change_the_callers_mapping() -> None:
    data = {"kind": "Batch", "name": "b", "command": ["true"], "cpu": "2"}
    before = dict(data)
    assert validate_spec(data).resources.cpu == "2"
    assert data == before


# ---------------------------------------------------------------------------------------------
# Hash, repr, round trip
# ---------------------------------------------------------------------------------------------


def test_spec_hash_is_stable_and_short_hex() -> None:
    h = job().spec_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert h == job().spec_hash()
    # Order of dict keys given does not matter.
    a = job(env={"A": "1", "B": "2"}, resources={"cpu": "2", "memory": "2Gi"})
    b = job(env={"B": "2", "A": "1"}, resources={"memory": "2Gi", "cpu": "2"})
    assert a.spec_hash() == b.spec_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"args": ["--fast"]},
        {"env": {"A": "1"}},
        {"image": "julia:1.10"},
        {"pkg_bundle": "bundle"},
        {"cpu": "2"},
        {"memory": "2Gi"},
        {"gpu": 1},
        {"node_type": "spot"},
        {"restart": "OnFailure"},
        {"backoff_limit": 4},
        {"tenant": "team-a"},
        {"storage": ["other"]},
        {"script": "/mnt/code/other.jl"},
    ],
)
def test_spec_hash_changes_with_any_field(change: dict[str, Any]) -> None:
    base = {"name": "hello", "script": "/mnt/code/main.jl", "storage": ["code"]}
    assert JuliaBatch(**{**base, **change}).spec_hash() != JuliaBatch(**base).spec_hash()


def test_spec_hash_differs_by_name_and_kind() -> None:
    assert job().spec_hash() != JuliaBatch("other", "/mnt/code/main.jl", "code").spec_hash()
    workers = JuliaParBatchWorkers("hello", "/mnt/code/main.jl", "code", restart="Never")
    assert workers.spec_hash() != job().spec_hash()


def test_repr_and_str() -> None:
    assert repr(JuliaBatch("helloworld", "/h.jl")) == "JuliaBatch('helloworld')"
    assert str(JuliaBatch("helloworld", "/h.jl")) == "JuliaBatch(helloworld)"
    assert repr(JuliaParBatchWorkers("w", "/w.jl")) == "JuliaParBatchWorkers('w')"
    assert repr(Batch("b", command=["true"])) == "Batch('b')"


@pytest.mark.parametrize(
    "spec",
    [
        JuliaBatch(
            "hello",
            "/mnt/code/main.jl",
            ["code", "data"],
            args=["1"],
            env={"X": "y"},
            cpu="250m",
            gpu=1,
            node_type="gpu",
        ),
        JuliaParBatchWorkers("workers", "/w.jl", "code", nworkers=7, memory="3Gi", tenant="t1"),
        Batch("build", command=["make"], image="alpine:3", backoff_limit=0),
    ],
    ids=["JuliaBatch", "JuliaParBatchWorkers", "Batch"],
)
def test_model_dump_round_trips_through_validate_spec(spec: Any) -> None:
    again = validate_spec(spec.model_dump())
    assert type(again) is type(spec)
    assert again == spec
    assert again.spec_hash() == spec.spec_hash()
    via_json = validate_spec(json.loads(json.dumps(spec.model_dump(mode="json"))))
    assert via_json == spec


def test_storage_spec_round_trip() -> None:
    spec = StorageSpec(name="code", kind="git", url="https://example.com/r.git", ref="v1")
    assert StorageSpec.model_validate(spec.model_dump(mode="json")) == spec


# ---------------------------------------------------------------------------------------------
# Invalid input: every error is a SpecError naming the field path and the rule
# ---------------------------------------------------------------------------------------------


def test_spec_error_is_not_a_value_error() -> None:
    # Deliberately not a ValueError: pydantic would wrap a ValueError raised inside validation
    # (custom __init__ of a nested spec) instead of letting the SpecError with its paths through.
    with pytest.raises(SpecError) as info:
        JuliaBatch("Bad", "/s.jl")
    assert not isinstance(info.value, ValueError)


def test_spec_error_message_names_model_field_and_hint() -> None:
    with pytest.raises(SpecError) as info:
        JuliaBatch("Hello_World", "/s.jl")
    err = info.value
    assert err.model == "JuliaBatch"
    assert str(err).startswith("invalid JuliaBatch: name: must be a DNS-1123 label")
    assert err.hint and "nothing was created" in err.hint


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("Hello", "DNS-1123"),
        ("hello_world", "DNS-1123"),
        ("a" * 64, "at most 63"),
        ("-hello", "DNS-1123"),
        ("hello-", "DNS-1123"),
        ("", "DNS-1123"),
        ("hello\n", "DNS-1123"),
        ("héllo", "DNS-1123"),
        ("hello.world", "DNS-1123"),
    ],
)
def test_bad_names(name: str, rule: str) -> None:
    errors = spec_errors(lambda: JuliaBatch(name, "/s.jl"))
    assert list(errors) == ["name"]
    assert rule in errors["name"]


def test_longest_and_shortest_names_are_fine() -> None:
    assert JuliaBatch("a" * 63, "/s.jl").name == "a" * 63
    assert JuliaBatch("a", "/s.jl").name == "a"
    assert JuliaBatch("0-9", "/s.jl").name == "0-9"


@pytest.mark.parametrize(
    ("overrides", "path", "rule"),
    [
        ({"cpu": "-1"}, "resources.cpu", "positive"),
        ({"cpu": "0"}, "resources.cpu", "positive"),
        ({"cpu": "0m"}, "resources.cpu", "positive"),
        ({"cpu": "lots"}, "resources.cpu", "Kubernetes cpu quantity"),
        ({"cpu": ""}, "resources.cpu", "Kubernetes cpu quantity"),
        ({"cpu": "1.5.2"}, "resources.cpu", "Kubernetes cpu quantity"),
        ({"cpu": "2 cores"}, "resources.cpu", "Kubernetes cpu quantity"),
        ({"cpu": "1e9999999"}, "resources.cpu", "quantity"),
        ({"cpu": "\u0661"}, "resources.cpu", "Kubernetes cpu quantity"),
        ({"cpu": True}, "resources.cpu", "string"),
        ({"memory": "lots"}, "resources.memory", "Kubernetes memory quantity"),
        ({"memory": "-1Gi"}, "resources.memory", "positive"),
        ({"memory": "1GB"}, "resources.memory", "Kubernetes memory quantity"),
        ({"memory": "1gi"}, "resources.memory", "Kubernetes memory quantity"),
        ({"gpu": -1}, "resources.gpu", "greater than or equal to 0"),
        ({"gpu": 65}, "resources.gpu", "less than or equal to 64"),
        ({"node_type": "tpu"}, "resources.node_type", "'gpu'"),
        ({"resources": {"cpu": "0"}}, "resources.cpu", "positive"),
        ({"resources": {"disk": "1Gi"}}, "resources.disk", "unknown field"),
        ({"resources": "big"}, "resources", "dictionary"),
        ({"resources": "big", "cpu": "2"}, "resources", "dictionary"),
        ({"bogus": 1}, "bogus", "unknown field"),
        ({"script": ""}, "script", "at least 1 character"),
        ({"restart": "Always"}, "restart", "'Never' or 'OnFailure'"),
        ({"backoff_limit": -1}, "backoff_limit", "greater than or equal to 0"),
        ({"backoff_limit": 101}, "backoff_limit", "less than or equal to 100"),
        ({"tenant": "Team"}, "tenant", "DNS-1123"),
        ({"pkg_bundle": "My_Bundle"}, "pkg_bundle", "DNS-1123"),
        ({"storage": ["ok", "Not_OK"]}, "storage.1", "DNS-1123"),
        ({"env": {"1BAD": "x"}}, "env", "'1BAD'"),
        ({"env": {"has-dash": "x"}}, "env", "'has-dash'"),
        ({"env": {"FOO\n": "x"}}, "env", "must match"),
        ({"env": {"": "x"}}, "env", "must match"),
        ({"env": {"JULIARUN_HOME": "/tmp"}}, "env", "JULIARUN_ prefix is reserved"),
        ({"env": {"A": 1}}, "env.A", "string"),
    ],
)
def test_invalid_job_fields(overrides: dict[str, Any], path: str, rule: str) -> None:
    errors = spec_errors(lambda: JuliaBatch("hello", **{"script": "/s.jl", **overrides}))
    assert path in errors, errors
    assert rule in errors[path]


def test_unknown_field_rule_text() -> None:
    assert spec_errors(lambda: job(colour="blue")) == {"colour": "unknown field (not allowed)"}


def test_all_errors_are_reported_at_once() -> None:
    errors = spec_errors(
        lambda: JuliaBatch("Bad_Name", "", cpu="lots", memory="-1Gi", gpu=-1, extra=1)
    )
    assert set(errors) == {
        "name",
        "script",
        "resources.cpu",
        "resources.memory",
        "resources.gpu",
        "extra",
    }


def test_resources_alone_name_their_own_fields() -> None:
    errors = spec_errors(lambda: Resources(cpu="0", memory="lots"))
    assert set(errors) == {"cpu", "memory"}


@pytest.mark.parametrize(
    ("nworkers", "ok"), [(-1, False), (0, True), (1, True), (1000, True), (1001, False)]
)
def test_nworkers_range(nworkers: int, ok: bool) -> None:
    make = lambda: JuliaParBatchWorkers("w", "/w.jl", nworkers=nworkers)  # noqa: E731
    if ok:
        assert make().desired_workers() == nworkers
    else:
        assert "nworkers" in spec_errors(make)


def test_batch_needs_a_command() -> None:
    assert "command" in spec_errors(lambda: Batch("b"))
    assert "at least 1 item" in spec_errors(lambda: Batch("b", command=[]))["command"]


def test_positional_argument_errors() -> None:
    errors = spec_errors(lambda: JuliaBatch("a", "/s.jl", "x", "extra"))
    assert errors == {"(arguments)": "takes at most 3 positional arguments"}
    errors = spec_errors(lambda: JuliaBatch("a", "/s.jl", name="b"))
    assert errors == {"name": "given both by position and by name"}


def test_valid_env_names_are_accepted() -> None:
    env = {"FOO_BAR": "1", "_x": "2", "julia_num_threads": "4", "JULIA_NUM_THREADS": "4"}
    assert job(env=env).env == env


# ---------------------------------------------------------------------------------------------
# validate_spec
# ---------------------------------------------------------------------------------------------


def test_validate_spec_builds_each_kind() -> None:
    assert isinstance(
        validate_spec({"kind": "JuliaBatch", "name": "a", "script": "/a.jl"}), JuliaBatch
    )
    w = validate_spec({"kind": "JuliaParBatchWorkers", "name": "w", "script": "/w.jl"})
    assert isinstance(w, JuliaParBatchWorkers)
    assert w.restart == "OnFailure"
    b = validate_spec({"kind": "Batch", "name": "b", "command": ["true"], "storage": "s"})
    assert isinstance(b, Batch)
    assert b.storage == ["s"]


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "CronJob", "name": "a"},
        {"kind": "juliabatch", "name": "a", "script": "/a.jl"},
        {"name": "a", "script": "/a.jl"},
        {"kind": None},
    ],
)
def test_validate_spec_unknown_kind(data: dict[str, Any]) -> None:
    errors = spec_errors(lambda: validate_spec(data))
    assert list(errors) == ["kind"]
    assert "must be one of Batch, JuliaBatch, JuliaParBatchWorkers" in errors["kind"]


def test_validate_spec_needs_a_mapping() -> None:
    assert list(spec_errors(lambda: validate_spec(["kind", "Batch"]))) == ["(spec)"]  # type: ignore[arg-type]


def test_validate_spec_field_errors_name_paths_without_kind_tags() -> None:
    data = {
        "kind": "JuliaParBatchWorkers",
        "name": "w",
        "script": "/w.jl",
        "nworkers": 5000,
        "resources": {"cpu": "lots"},
        "memory": "0",
        "typo": True,
    }
    with pytest.raises(SpecError) as info:
        validate_spec(data)
    assert info.value.model == "JuliaParBatchWorkers"
    errors = dict(info.value.errors)
    assert set(errors) == {"nworkers", "resources.cpu", "resources.memory", "typo"}
    assert errors["typo"] == "unknown field (not allowed)"


def test_validate_spec_kind_specific_fields_are_unknown_elsewhere() -> None:
    errors = spec_errors(
        lambda: validate_spec({"kind": "Batch", "name": "b", "command": ["x"], "nworkers": 2})
    )
    assert errors == {"nworkers": "unknown field (not allowed)"}


# ---------------------------------------------------------------------------------------------
# StorageSpec
# ---------------------------------------------------------------------------------------------


def test_storage_spec_valid_kinds() -> None:
    host = StorageSpec(name="data", path="/srv/data")
    assert host.kind == "host"
    ram = StorageSpec(name="scratch", kind="ramdisk", size="256Mi", aliases=["tmp", "fast"])
    assert (ram.size, ram.aliases) == ("256Mi", ["tmp", "fast"])
    assert StorageSpec(name="ram", kind="ramdisk").size is None
    git = StorageSpec(name="code", kind="git", url="https://example.com/r.git")
    assert git.ref is None
    assert StorageSpec(name="code", kind="git", url="/srv/repo", ref="v1").ref == "v1"
    vol = StorageSpec(
        name="db", kind="volume", size="5Gi", storage_class="network", access_mode="ReadWriteMany"
    )
    assert (vol.storage_class, vol.access_mode, vol.volume_mode) == (
        "network",
        "ReadWriteMany",
        "Filesystem",
    )


@pytest.mark.parametrize(
    ("fields", "path", "rule"),
    [
        ({"kind": "host"}, "path", "is required when kind is 'host'"),
        ({"kind": "host", "path": ""}, "path", "is required when kind is 'host'"),
        ({"kind": "host", "path": "srv/data"}, "path", "must be absolute"),
        ({"kind": "git"}, "url", "is required when kind is 'git'"),
        ({"kind": "host", "path": "/d", "size": "1Gi"}, "size", "only applies when kind is"),
        ({"kind": "git", "url": "/r", "size": "1Gi"}, "size", "only applies when kind is"),
        ({"kind": "ramdisk", "size": "lots"}, "size", "Kubernetes memory quantity"),
        ({"kind": "ramdisk", "size": "0"}, "size", "positive"),
        ({"kind": "ramdisk", "path": "/d"}, "path", "only applies when kind is host"),
        ({"kind": "ramdisk", "url": "/r"}, "url", "only applies when kind is git"),
        ({"kind": "host", "path": "/d", "ref": "main"}, "ref", "only applies when kind is git"),
        ({"kind": "git", "url": "/r", "path": "/d"}, "path", "only applies when kind is host"),
        ({"kind": "nfs", "path": "/d"}, "kind", "'host', 'ramdisk', 'volume' or 'git'"),
        ({"kind": "volume"}, "size", "is required when kind is 'volume'"),
        ({"kind": "volume", "size": "1Gi", "storage_class": "SSD"}, "storage_class", "subdomain"),
        ({"kind": "volume", "size": "1Gi", "access_mode": "RWX"}, "access_mode", "ReadWriteMany"),
        ({"kind": "volume", "size": "1Gi", "volume_mode": "Raw"}, "volume_mode", "'Block'"),
        ({"kind": "host", "path": "/d", "storage_class": "ssd"}, "storage_class", "volume"),
        ({"kind": "ramdisk", "access_mode": "ReadWriteOnce"}, "access_mode", "volume"),
        ({"kind": "ramdisk", "aliases": ["ok", "Bad"]}, "aliases.1", "DNS-1123"),
        ({"kind": "ramdisk", "mode": "ro"}, "mode", "unknown field"),
    ],
)
def test_invalid_storage_specs(fields: dict[str, Any], path: str, rule: str) -> None:
    errors = spec_errors(lambda: StorageSpec(name="store", **fields))
    assert path in errors, errors
    assert rule in errors[path]


def test_storage_spec_bad_name() -> None:
    errors = spec_errors(lambda: StorageSpec(name="My_Store", kind="ramdisk"))
    assert list(errors) == ["name"]


def test_storage_spec_model_validate_raises_spec_error() -> None:
    errors = spec_errors(lambda: StorageSpec.model_validate({"name": "x", "kind": "git"}))
    assert errors == {"url": "is required when kind is 'git'"}


# ---------------------------------------------------------------------------------------------
# Quantities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1Ki", Decimal(1024)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("100n", Decimal("1e-7")),
        ("3u", Decimal("3e-6")),
        ("2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("5E", Decimal(5 * 10**18)),
        ("1e-3", Decimal("0.001")),
        (".5", Decimal("0.5")),
        ("+1M", Decimal(10**6)),
        ("-2", Decimal(-2)),
        (" 4Mi ", Decimal(4 * 2**20)),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "lots", "1K", "1 Gi", "Gi", "1Gib", "--1", "1e", "0x10"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_parse_cpu_and_memory() -> None:
    assert parse_cpu("500m") == 0.5
    assert parse_cpu("2") == 2.0
    assert parse_cpu("100m") == pytest.approx(0.1)
    assert isinstance(parse_cpu("1"), float)
    assert parse_memory("1Gi") == 1073741824
    assert parse_memory("512Mi") == 512 * 2**20
    assert parse_memory("1G") == 10**9
    assert parse_memory("1500m") == 1  # fractional bytes truncate
    assert isinstance(parse_memory("1Gi"), int)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

non_labels = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[a-z0-9]{64,80}", fullmatch=True),
    st.from_regex(LABEL, fullmatch=True).map(lambda s: s[:40] + "-"),
    st.from_regex(LABEL, fullmatch=True).map(lambda s: "-" + s[:40]),
    st.from_regex(LABEL, fullmatch=True).map(lambda s: s[:40] + "\n"),
    st.from_regex(r"[a-z0-9]{1,10}[A-Z_. ][a-z0-9]{1,10}", fullmatch=True),
).filter(lambda s: not is_label(s))


@FEW
@given(non_labels)
@example("")
@example("a" * 64)
def test_non_labels_are_rejected_naming_name(name: str) -> None:
    errors = spec_errors(lambda: JuliaBatch(name, "/s.jl"))
    assert list(errors) == ["name"]
    assert "DNS-1123 label" in errors["name"]


@FEW
@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True))
def test_labels_are_accepted(name: str) -> None:
    assert JuliaBatch(name, "/s.jl", name).name == name
    assert StorageSpec(name=name, kind="ramdisk", aliases=[name]).name == name


non_quantities = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"[0-9]{1,4}[A-Za-z]{1,3}", fullmatch=True),
    st.from_regex(r"[A-Za-z]{1,4}[0-9]{0,3}", fullmatch=True),
).filter(lambda s: not is_quantity(s))


@FEW
@given(non_quantities, st.sampled_from(["cpu", "memory"]))
def test_non_quantities_are_rejected_naming_the_resource(value: str, field: str) -> None:
    errors = spec_errors(lambda: job(**{field: value}))
    assert list(errors) == [f"resources.{field}"]
    assert f"Kubernetes {field} quantity" in errors[f"resources.{field}"]


@FEW
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(BINARY)))
def test_binary_quantities(n: int, suffix: str) -> None:
    text = f"{n}{suffix}"
    assert parse_quantity(text) == n * BINARY[suffix]
    assert parse_memory(text) == n * BINARY[suffix]


@FEW
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(DECIMAL)))
def test_decimal_quantities(n: int, suffix: str) -> None:
    assert parse_quantity(f"{n}{suffix}") == n * DECIMAL[suffix]
    assert parse_quantity(f"{n}e{len(str(DECIMAL[suffix])) - 1}") == n * DECIMAL[suffix]


@FEW
@given(st.integers(min_value=1, max_value=10**6))
def test_millicores(n: int) -> None:
    assert parse_quantity(f"{n}m") == Decimal(n) / 1000
    assert parse_cpu(f"{n}m") == pytest.approx(n / 1000)
    r = Resources(cpu=f"{n}m", memory=f"{n}Mi")
    assert r.cpu_cores == pytest.approx(n / 1000)
    assert r.memory_bytes == n * 2**20


@FEW
@given(
    st.integers(min_value=1, max_value=10**4),
    st.sampled_from(["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "Ti"]),
)
def test_positive_quantities_are_accepted_as_given(n: int, suffix: str) -> None:
    # Memory below one byte (e.g. 500m) is refused: see test_hardening_specs.py.
    memory = f"{n}{suffix}" if parse_quantity(f"{n}{suffix}") >= 1 else "1Gi"
    r = job(cpu=f"{n}{suffix}", memory=memory).resources
    assert (r.cpu, r.memory) == (f"{n}{suffix}", memory)
    assert Decimal(r.cpu_cores) == pytest.approx(parse_quantity(r.cpu))
