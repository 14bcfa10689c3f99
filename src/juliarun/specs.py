"""The vocabulary of juliarun: pydantic models for every user input.

Every model forbids unknown fields, validates names as DNS-1123 labels and resources as Kubernetes
quantities, and fails before any side effect with an error naming the field and the rule.

>>> job = JuliaBatch("helloworld", "/mnt/juliarun/helloworld/helloworld.jl", "juliarun")
>>> job
JuliaBatch('helloworld')
>>> job.storage, job.restart
(['juliarun'], 'Never')
>>> workers = JuliaParBatchWorkers("workers", "/mnt/juliarun/w.jl", "juliarun", nworkers=3)
>>> workers.nworkers, workers.resources.cpu
(3, '1')
>>> JuliaBatch("Hello_World", "/mnt/juliarun/h.jl", "juliarun")
Traceback (most recent call last):
...
juliarun.errors.SpecError: invalid JuliaBatch: name: must be a DNS-1123 label...
"""

from __future__ import annotations

import hashlib
import json
import re
from contextvars import ContextVar
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, WithJsonSchema
from pydantic_core import CoreSchema

from juliarun.errors import SpecError

__all__ = [
    "AccessMode",
    "Batch",
    "BundlePackage",
    "BundleSpec",
    "ContainerDefaults",
    "ImageSpec",
    "JobSpec",
    "JuliaBatch",
    "JuliaParBatchWorkers",
    "NodeType",
    "Resources",
    "StorageSpec",
    "TenantQuota",
    "TenantSpec",
    "TenantUser",
    "VolumeMode",
    "is_job_name",
    "parse_cpu",
    "parse_memory",
    "parse_quantity",
    "validate_spec",
]

# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------

# Matched with fullmatch (``$`` would accept a trailing newline); ASCII digits only (``\d``
# also matches other scripts' digits, which Kubernetes rejects).
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(
    r"(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?"
)
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_FIELD_IN_MESSAGE = re.compile(r"^([a-z_][a-z0-9_.]*): (.*)$", re.DOTALL)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_job_name(value: object) -> bool:
    """Whether ``value`` can name a job (a DNS-1123 label): what a backend checks before a
    name becomes a path or an API call.

    >>> is_job_name("train-3"), is_job_name("../etc"), is_job_name("/tmp/x"), is_job_name("A")
    (True, False, False, False)
    """
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS1123_LABEL.fullmatch(value))


# How deep a spec's values may nest (a real spec nests three or four levels).
MAX_DEPTH = 16


def _depth_rule(data: Any) -> None:
    """Refuse input nesting deeper than :data:`MAX_DEPTH` (checked before anything else)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    seen: set[int] = set()  # YAML aliases share values: each is walked once
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list | tuple):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if depth > MAX_DEPTH:
            raise ValueError(f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)


def _nul_rule(model: BaseModel) -> None:
    """Refuse NUL bytes in every string of a valid spec (mapping keys included): a NUL cannot
    reach a process argument, an environment variable or a path, so it fails here, naming the
    field, rather than when a process starts. Runs after the fields' own rules, so a field with
    a stricter rule (a name) reports that rule."""
    stack: list[tuple[str, Any]] = [
        (name, getattr(model, name)) for name in type(model).model_fields
    ]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError(f"{path}: must not contain NUL bytes")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    raise ValueError(f"{path}: a key must not contain NUL bytes")
                stack.append((path, item))
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}.{index}", item) for index, item in enumerate(value))
        # a nested spec (resources) checked itself


def _dns_label(value: str) -> str:
    if len(value) > 63:
        raise ValueError(f"must be a DNS-1123 label of at most 63 characters (got {len(value)})")
    if not _DNS1123_LABEL.fullmatch(value):
        raise ValueError(
            "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending "
            f"with a letter or digit (got {value!r})"
        )
    return value


def parse_quantity(value: str) -> Decimal:
    """A Kubernetes quantity as a number: ``parse_quantity("1Gi") == 1073741824``.

    >>> parse_quantity("500m"), parse_quantity("2"), parse_quantity("1Ki")
    (Decimal('0.500'), Decimal('2'), Decimal('1024'))
    """
    match = _QUANTITY.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    suffix = match.group("suffix") or ""
    try:
        number = Decimal(match.group("num"))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from exc
    try:
        if suffix in _SUFFIX:  # before the exponent test: "E" and "Ei" are suffixes too
            return number * _SUFFIX[suffix]
        return number * (Decimal(10) ** int(suffix[1:]))
    except ArithmeticError as exc:  # decimal.Overflow: an exponent beyond Decimal's range
        raise ValueError(f"{value!r} is out of range for a Kubernetes quantity") from exc


def parse_cpu(value: str) -> float:
    """CPU cores of a quantity: ``parse_cpu("500m") == 0.5``."""
    return float(parse_quantity(value))


def parse_memory(value: str) -> int:
    """Bytes of a quantity: ``parse_memory("1Gi") == 1073741824``."""
    return int(parse_quantity(value))


# The smallest request each kind can express once a runtime rounds it (Docker's nano_cpus and
# memory bytes, Kubernetes' millicores): anything less would round to 0, which reads as
# "unlimited". The largest is what a 64-bit signed integer holds (Kubernetes' own bound).
_QUANTITY_MIN = {
    "cpu": (Decimal("0.001"), "1m (a thousandth of a core)"),
    "memory": (Decimal(1), "1 byte"),
}
_QUANTITY_MAX = Decimal(2**63 - 1)


def _positive_quantity(kind: str, example: str) -> Any:
    def check(value: str) -> str:
        try:
            number = parse_quantity(value)
        except ValueError:
            raise ValueError(
                f"must be a Kubernetes {kind} quantity such as {example} (got {value!r})"
            ) from None
        if number <= 0:
            raise ValueError(
                f"must be a positive {kind} quantity such as {example} (got {value!r})"
            )
        least, text = _QUANTITY_MIN[kind]
        if number < least:
            raise ValueError(
                f"must be at least {text}: {value!r} rounds to 0, which runtimes read as "
                f"unlimited (e.g. {example})"
            )
        if number > _QUANTITY_MAX:
            raise ValueError(f"must be at most {_QUANTITY_MAX} (got {value[:40]!r}...)")
        return value.strip()

    return check


def _image_ref(value: str) -> str:
    """An image reference as an engine takes it: not empty, no whitespace or control
    characters, and not starting with '-' (it would read as an option)."""
    if not value.strip():
        raise ValueError("must not be empty")
    if value.startswith("-"):
        raise ValueError(f"must not start with '-' (got {value!r})")
    if len(value) > 512 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"must be an image reference such as julia:1.10 (got {value!r})")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _command(value: list[str]) -> list[str]:
    if value and not value[0].strip():
        raise ValueError("the program (the first item) must not be blank")
    return value


def _git_text(what: str) -> Any:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"must not be blank (a git {what})")
        if value.startswith("-"):
            raise ValueError("must not start with '-': git would read it as an option")
        if any(not c.isprintable() for c in value):
            raise ValueError(f"must not contain control characters (a git {what})")
        return value

    return check


_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def _node_labels(value: dict[str, str]) -> dict[str, str]:
    """Kubernetes label keys (``[prefix/]name``) and values, none empty."""
    for key, label in value.items():
        prefix, _, name = key.rpartition("/")
        if (
            len(name) > 63
            or not _LABEL_NAME.fullmatch(name)
            or (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)))
            or ("/" in key and not prefix)
        ):
            raise ValueError(f"label key {key!r} must be [prefix/]name, name like gpu-type")
        if len(label) > 63 or not _LABEL_NAME.fullmatch(label):
            raise ValueError(
                f"label {key!r}: the value must be 1 to 63 letters, digits, '-', '_' or '.', "
                f"starting and ending with a letter or digit (got {label!r})"
            )
    return value


def _to_str(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


def _one_or_many(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


# Variables a job may be given under juliarun's prefix: the platform sets none of them (a queue
# handle's ``env`` for its workers).
JOB_ENV_PREFIXES = ("JULIARUN_QUEUE_",)


def _env_map(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"environment variable name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
        if key.startswith("JULIARUN_") and not key.startswith(JOB_ENV_PREFIXES):
            raise ValueError(f"environment variable {key!r}: the JULIARUN_ prefix is reserved")
    return value


# What a form (a Prefect parameter form, any JSON-schema client) is told about these strings, so
# it refuses what the model would. Validation itself stays the validators' (their messages
# name the rule); the patterns are JSON-schema (ECMA 262 and Python ``re``) alike.
NAME_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A positive quantity: a number with a non-zero digit, then a suffix or an exponent.
QUANTITY_PATTERN = (
    r"^\s*\+?(?=[0-9.]*[1-9])(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?\s*$"
)
_NAME_SCHEMA: dict[str, Any] = {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63}

Name = Annotated[str, AfterValidator(_dns_label), WithJsonSchema(_NAME_SCHEMA)]
Cpu = Annotated[
    str,
    BeforeValidator(_to_str),
    AfterValidator(_positive_quantity("cpu", "500m or 2")),
    WithJsonSchema({"type": "string", "pattern": QUANTITY_PATTERN, "examples": ["500m", "2"]}),
]
Memory = Annotated[
    str,
    BeforeValidator(_to_str),
    AfterValidator(_positive_quantity("memory", "512Mi or 1Gi")),
    WithJsonSchema({"type": "string", "pattern": QUANTITY_PATTERN, "examples": ["512Mi", "4Gi"]}),
]
EnvMap = Annotated[dict[str, str], AfterValidator(_env_map)]
NodeType = Literal["gpu", "spot", "highmem", "highcpu"]


# True while a spec is being validated: a nested spec (``resources``) then lets pydantic's
# ValidationError through, so its errors are reported under the parent's field path and
# together with the parent's other errors, not as a separate SpecError of the nested model.
_VALIDATING: ContextVar[bool] = ContextVar("juliarun_spec_validating", default=False)


_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain_text(text: str) -> str:
    """A docstring as a form shows it: no reStructuredText markup, paragraphs kept.

    >>> plain_text("Run ``Batch(name)``: see :class:`~juliarun.specs.JobSpec`.")
    'Run Batch(name): see juliarun.specs.JobSpec.'
    """
    text = _RST_ROLE.sub(r"\1", text).replace("``", "")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(p for p in paragraphs if p)


def _form_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    """Shape a spec's JSON schema into a form a person can fill: plain-text descriptions,
    required fields first (Prefect's forms order fields by ``position``), and a job's ``kind``
    fixed to its one value (a choice of one, not a text box) and required, so a union of job
    kinds tells a missing kind from a wrong one."""
    if cls.__doc__:
        schema["description"] = plain_text(cls.__doc__)
    properties: dict[str, Any] = schema.get("properties", {})
    required: list[str] = list(schema.get("required", []))
    kind = properties.get("kind", {})
    if "const" in kind:  # a job kind: the discriminator of AnyJob
        value = kind.pop("const")
        kind.update(enum=[value], default=value)
        kind.setdefault("description", f"The job's kind: {value}.")
        required = ["kind", *(r for r in required if r != "kind")]
    for prop in properties.values():
        if "description" in prop:
            prop["description"] = plain_text(prop["description"])
    order = [*required, *(name for name in properties if name not in required)]
    schema["properties"] = {name: properties[name] for name in order}
    for position, name in enumerate(order):
        schema["properties"][name]["position"] = position
    if required:
        schema["required"] = required


class _Model(BaseModel):
    """Base of every spec: unknown fields are errors; errors become :class:`SpecError`."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, json_schema_extra=_form_schema
    )

    @model_validator(mode="before")
    @classmethod
    def _not_too_deep(cls, data: Any) -> Any:
        _depth_rule(data)
        return data

    @model_validator(mode="after")
    def _no_nul(self) -> Self:
        _nul_rule(self)
        return self

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        """As pydantic's, raising :class:`SpecError` (naming every field) on bad input."""
        if _VALIDATING.get():
            return super().model_validate(obj, *args, **kwargs)
        token = _VALIDATING.set(True)
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise spec_error(cls.__name__, exc) from exc
        finally:
            _VALIDATING.reset(token)

    def __init__(self, /, **data: Any) -> None:
        if _VALIDATING.get():
            super().__init__(**data)
            return
        token = _VALIDATING.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise spec_error(type(self).__name__, exc) from exc
        finally:
            _VALIDATING.reset(token)


def spec_error(model: str, exc: ValidationError) -> SpecError:
    """A :class:`SpecError` listing every ``(field, rule)`` of a pydantic validation error."""
    errors: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        field_in_msg = _FIELD_IN_MESSAGE.match(msg)
        if field_in_msg:  # a model-level rule names its field first: "url: is required ..."
            inner, msg = field_in_msg.group(1), field_in_msg.group(2)
            loc = f"{loc}.{inner}" if loc else inner
        loc = loc or "(spec)"
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not allowed)"
        errors.append((loc, msg))
    return SpecError(model, errors)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith("function-") or part in _JOB_KINDS)


# ---------------------------------------------------------------------------------------------
# Resources and storage
# ---------------------------------------------------------------------------------------------


class Resources(_Model):
    """What one worker process needs: CPU and memory as Kubernetes quantities, a GPU count,
    and the kind of node to run on (a named type or custom node labels)."""

    cpu: Cpu = Field("1", description="CPU per worker as a Kubernetes quantity, e.g. 500m or 2.")
    memory: Memory = Field("1Gi", description="Memory per worker, e.g. 512Mi or 4Gi.")
    gpu: int = Field(0, ge=0, le=64, description="GPUs per worker (nvidia.com/gpu).")
    node_type: NodeType | None = Field(
        None, description="Node type to run on: gpu, spot, highmem or highcpu."
    )
    node_labels: Annotated[dict[str, str], AfterValidator(_node_labels)] = Field(
        default_factory=dict, description="Custom node labels the node must carry."
    )

    @property
    def cpu_cores(self) -> float:
        return parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)


StorageKind = Literal["host", "ramdisk", "volume", "git"]
AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"]
VolumeMode = Literal["Filesystem", "Block"]
# A StorageClass name is a DNS-1123 subdomain.
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _storage_class(value: str) -> str:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            "must be a StorageClass name (a DNS-1123 subdomain: lowercase letters, digits, "
            f"'-' and '.'), e.g. ssd or network (got {value!r})"
        )
    return value


class StorageSpec(_Model):
    """Named storage, defined once and used by name: a host directory, a RAM disk, a volume
    (a Kubernetes PersistentVolumeClaim of a storage class; a Docker named volume; a directory
    on local) or a git checkout at a ref. Jobs see it at ``/mnt/<name>``.

    >>> StorageSpec(name="data", kind="host", path="/srv/data").kind
    'host'
    >>> vol = StorageSpec(name="scratch", kind="volume", storage_class="ssd", size="10Gi")
    >>> vol.access_mode, vol.volume_mode
    ('ReadWriteOnce', 'Filesystem')
    >>> StorageSpec(name="code", kind="git")
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid StorageSpec: url: is required when kind is 'git' ...
    >>> StorageSpec(name="scratch", kind="volume", storage_class="ssd")
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid StorageSpec: size: is required when kind is 'volume' ...
    """

    name: Name = Field(description="The name jobs use (a DNS-1123 label).")
    kind: StorageKind = Field(
        "host", description="host directory, ramdisk (tmpfs), volume (a claim) or git."
    )
    path: str | None = Field(None, description="host: the directory (absolute path).")
    size: Memory | None = Field(
        None, description="ramdisk: the size limit, e.g. 256Mi; volume: the size, e.g. 10Gi."
    )
    storage_class: Annotated[str, AfterValidator(_storage_class)] | None = Field(
        None,
        description="volume: the Kubernetes StorageClass, e.g. ssd or network (None: the "
        "cluster's default class).",
    )
    access_mode: AccessMode | None = Field(
        None,
        description="volume: ReadWriteOnce (default), ReadOnlyMany or ReadWriteMany.",
    )
    volume_mode: VolumeMode | None = Field(
        None,
        description="volume: Filesystem (default; mounted at /mnt/<name>) or Block (a raw "
        "device at /mnt/<name>, Kubernetes only).",
    )
    url: Annotated[str, AfterValidator(_git_text("repository URL"))] | None = Field(
        None, description="git: the repository URL or path."
    )
    ref: Annotated[str, AfterValidator(_git_text("ref"))] | None = Field(
        None, description="git: branch, tag or commit (default: HEAD)."
    )
    aliases: list[Name] = Field(default_factory=list, description="Other names for it.")

    @model_validator(mode="after")
    def _kind_fields(self) -> Self:
        required = {"host": "path", "git": "url", "volume": "size"}.get(self.kind)
        if required and not getattr(self, required):
            raise ValueError(f"{required}: is required when kind is {self.kind!r}")
        if self.kind == "host" and self.path and not self.path.startswith("/"):
            raise ValueError(f"path: must be absolute (got {self.path!r})")
        only = (
            ("path", {"host"}),
            ("url", {"git"}),
            ("ref", {"git"}),
            ("size", {"ramdisk", "volume"}),
            ("storage_class", {"volume"}),
            ("access_mode", {"volume"}),
            ("volume_mode", {"volume"}),
        )
        for other, kinds in only:
            if getattr(self, other) and self.kind not in kinds:
                raise ValueError(f"{other}: only applies when kind is {' or '.join(sorted(kinds))}")
        if self.kind == "volume":
            # defaults of a volume (frozen model: set through object.__setattr__)
            object.__setattr__(self, "access_mode", self.access_mode or "ReadWriteOnce")
            object.__setattr__(self, "volume_mode", self.volume_mode or "Filesystem")
        return self


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


class JobSpec(_Model):
    """Fields shared by every kind of job."""

    positional: ClassVar[tuple[str, ...]] = ("name",)

    kind: str
    name: Name = Field(description="Job name (a DNS-1123 label, unique per cluster).")
    storage: Annotated[
        list[Name],
        BeforeValidator(_one_or_many),
        # one name or a list of names, as the model takes them
        WithJsonSchema({"anyOf": [{"type": "array", "items": _NAME_SCHEMA}, _NAME_SCHEMA]}),
    ] = Field(
        default_factory=list,
        description="Storage to mount, by name, each at /mnt/<name>. Storage is named and "
        "defined once: a juliarun Storage block saved in the Prefect UI (Blocks; the block's "
        "name is the storage name), `juliarun storage define NAME`, or define_storage in "
        "Python.",
    )
    env: EnvMap = Field(default_factory=dict, description="Extra environment variables.")
    image: Annotated[str, AfterValidator(_image_ref)] | None = Field(
        None, description="Container image (Docker and Kubernetes)."
    )
    pkg_bundle: Name | None = Field(None, description="Package bundle to mount (by name).")
    placement: Name = Field(
        "pack",
        description="Placement policy where juliarun places jobs whole (a cluster with "
        "placement 'juliarun'): pack (the fewest nodes), spread, or a registered policy name.",
    )
    resources: Resources = Field(default_factory=Resources, description="Per-worker resources.")
    restart: Literal["Never", "OnFailure"] = Field(
        "Never", description="Restart a worker that exits non-zero (OnFailure) or not (Never)."
    )
    backoff_limit: int = Field(
        3, ge=0, le=100, description="Restarts allowed per worker before the job fails."
    )
    tenant: Name = Field("default", description="Tenant (namespace) the job belongs to.")
    interruptible: bool = Field(
        True,
        description="False: the job must not be interrupted: the cluster autoscaler never "
        "removes a node its workers run on (pods labelled juliarun.io/interruptible=false "
        "and annotated cluster-autoscaler.kubernetes.io/safe-to-evict=false).",
    )

    def __init__(self, *args: Any, **data: Any) -> None:
        if len(args) > len(self.positional):
            raise SpecError(
                type(self).__name__,
                [("(arguments)", f"takes at most {len(self.positional)} positional arguments")],
            )
        for field_name, value in zip(self.positional, args, strict=False):
            if field_name in data:
                raise SpecError(
                    type(self).__name__, [(field_name, "given both by position and by name")]
                )
            data[field_name] = value
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _resource_shortcuts(cls, data: Any) -> Any:
        """``cpu=``, ``memory=``, ``gpu=``, ``node_type=`` are shortcuts into ``resources``."""
        if isinstance(data, dict):
            data = dict(data)  # never change the caller's mapping
            shortcuts = {k: data.pop(k) for k in ("cpu", "memory", "gpu", "node_type") if k in data}
            if shortcuts:
                resources = data.get("resources") or {}
                if isinstance(resources, Resources):
                    resources = resources.model_dump()
                if isinstance(resources, dict):  # anything else fails as ``resources`` below
                    data["resources"] = {**resources, **shortcuts}
        return data

    def desired_workers(self) -> int:
        """How many worker processes the job runs."""
        return 1

    def spec_hash(self) -> str:
        """A content hash of the spec: same spec, same hash."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __str__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class JuliaBatch(JobSpec):
    """A Julia script run once to completion: ``JuliaBatch(name, script, storage)``."""

    positional: ClassVar[tuple[str, ...]] = ("name", "script", "storage")

    kind: Literal["JuliaBatch"] = "JuliaBatch"
    script: Annotated[str, AfterValidator(_not_blank)] = Field(
        min_length=1, description="Julia script, e.g. /mnt/<storage>/main.jl."
    )
    args: list[str] = Field(default_factory=list, description="Arguments to the script.")

    if TYPE_CHECKING:

        def __init__(
            self, name: str = ..., script: str = ..., storage: str | list[str] = ..., **data: Any
        ) -> None: ...


class JuliaParBatchWorkers(JobSpec):
    """``nworkers`` copies of a Julia script, each a worker; the count can be scaled while it
    runs. ``JuliaParBatchWorkers(name, script, storage, nworkers=1, cpu=..., memory=...)``."""

    positional: ClassVar[tuple[str, ...]] = ("name", "script", "storage")

    kind: Literal["JuliaParBatchWorkers"] = "JuliaParBatchWorkers"
    script: Annotated[str, AfterValidator(_not_blank)] = Field(
        min_length=1, description="Julia script each worker runs."
    )
    args: list[str] = Field(default_factory=list, description="Arguments to the script.")
    nworkers: int = Field(1, ge=0, le=1000, description="Number of workers.")
    restart: Literal["Never", "OnFailure"] = Field(
        "OnFailure", description="Restart a worker that exits non-zero (OnFailure) or not (Never)."
    )

    def desired_workers(self) -> int:
        return self.nworkers

    if TYPE_CHECKING:

        def __init__(
            self, name: str = ..., script: str = ..., storage: str | list[str] = ..., **data: Any
        ) -> None: ...


class Batch(JobSpec):
    """Any command, run once to completion: ``Batch(name, command=[...])``."""

    positional: ClassVar[tuple[str, ...]] = ("name", "command", "storage")

    kind: Literal["Batch"] = "Batch"
    command: Annotated[list[str], AfterValidator(_command)] = Field(
        min_length=1, description="The command and its arguments."
    )

    if TYPE_CHECKING:

        def __init__(
            self,
            name: str = ...,
            command: list[str] = ...,
            storage: str | list[str] = ...,
            **data: Any,
        ) -> None: ...


_JOB_KINDS = {"JuliaBatch", "JuliaParBatchWorkers", "Batch"}


# Keywords that only constrain a value: a form's copy of a job kind leaves them to the rules.
_RULE_KEYWORDS = frozenset(
    {
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
    }
)


def _form_copy(schema: Any, resolve: Any, root: bool = True) -> Any:
    """A job kind's schema as the form shows it: every field, type, choice, default and
    description, with references inlined, but none of the value rules (patterns, lengths,
    bounds, a nested object's required or unknown fields), which the union's rules check
    instead. Only the kind's own required fields and its closed set of fields stay."""
    if isinstance(schema, list):
        return [_form_copy(item, resolve, root=False) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = resolve({"$ref": schema["$ref"]})
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return {**_form_copy(target, resolve, root), **_form_copy(rest, resolve, root)}
    copied: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _RULE_KEYWORDS:
            continue
        if not root and (key == "required" or (key == "additionalProperties" and not value)):
            continue
        if key == "properties":
            copied[key] = {
                name: _form_copy(sub, resolve, root=False) for name, sub in value.items()
            }
        elif key in ("default", "examples", "enum", "const", "required"):
            copied[key] = value
        else:
            copied[key] = _form_copy(value, resolve, root=False)
    return copied


class _JobUnionSchema:
    """The union of job kinds as Prefect validates it and a form shows it.

    - **The rules**: ``kind`` is required and one of the kinds, and the full schema of the
      spec's kind applies by kind (``if``/``then``): a refused spec is reported at the field
      and with the rule ("'Bad_Name' does not match ...", "'kind' is a required property"),
      not as matching none of the kinds.
    - **The form**: one member per kind (tabs in Prefect's form) in ``oneOf``, each a copy of
      the kind's schema without value rules (patterns, lengths, bounds), so the union itself
      only fails where the rules report at the job's level too (a missing or unknown field)
      and Prefect's message names the field rather than "is not valid under any of the given
      schemas".

    Only the JSON schema changes; validation is the discriminated union's."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        kinds = ["JuliaBatch", "JuliaParBatchWorkers", "Batch"]
        schema["required"] = ["kind"]
        schema["properties"] = {"kind": {"enum": kinds}}
        members: dict[str, str] = schema["discriminator"]["mapping"]  # kind -> $ref
        schema["allOf"] = [
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"$ref": members[kind]},
            }
            for kind in kinds
        ]
        schema["oneOf"] = [
            _form_copy({"$ref": members[kind]}, handler.resolve_ref_schema) for kind in kinds
        ]
        return schema


AnyJob = Annotated[
    JuliaBatch | JuliaParBatchWorkers | Batch,
    Field(discriminator="kind"),
    _JobUnionSchema(),
]


def validate_spec(data: dict[str, Any]) -> JuliaBatch | JuliaParBatchWorkers | Batch:
    """Build a job spec from a mapping with a ``kind`` key (as read from YAML or JSON)."""
    from pydantic import TypeAdapter

    if not isinstance(data, dict):
        raise SpecError("job", [("(spec)", "must be a mapping of fields")])
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in _JOB_KINDS:
        raise SpecError("job", [("kind", f"must be one of {', '.join(sorted(_JOB_KINDS))}")])
    try:
        job: JuliaBatch | JuliaParBatchWorkers | Batch = TypeAdapter(AnyJob).validate_python(data)
    except ValidationError as exc:
        raise spec_error(str(kind), exc) from exc
    return job


# ---------------------------------------------------------------------------------------------
# Tenants
# ---------------------------------------------------------------------------------------------


class TenantQuota(_Model):
    """A tenant's ResourceQuota: totals over every pod of the namespace (``None``: no limit)."""

    cpu: Cpu | None = Field(None, description="Total CPU requested (requests.cpu), e.g. 8.")
    memory: Memory | None = Field(
        None, description="Total memory requested and limited (requests/limits.memory), e.g. 32Gi."
    )
    gpu: int | None = Field(None, ge=0, description="Total GPUs (requests.nvidia.com/gpu).")
    pods: int | None = Field(None, ge=0, description="Pods at once (workers of all jobs).")
    jobs: int | None = Field(None, ge=0, description="Jobs at once (count/jobs.batch).")


class ContainerDefaults(_Model):
    """The tenant's LimitRange: what a container that sets no request or limit gets.

    juliarun's jobs always request cpu and memory and limit memory; only a CPU limit comes from
    here, so leave ``cpu_limit`` unset or at least the CPU jobs request."""

    cpu_request: Cpu | None = Field("100m", description="Default CPU request.")
    memory_request: Memory | None = Field("256Mi", description="Default memory request.")
    cpu_limit: Cpu | None = Field(None, description="Default CPU limit (None: unlimited).")
    memory_limit: Memory | None = Field("1Gi", description="Default memory limit.")

    @model_validator(mode="after")
    def _request_within_limit(self) -> Self:
        for what in ("cpu", "memory"):
            request, limit = getattr(self, f"{what}_request"), getattr(self, f"{what}_limit")
            if request and limit and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"{what}_request: must not exceed {what}_limit ({limit})")
        return self


class TenantUser(_Model):
    """A user or group of the tenant and its role: ``edit`` submits, lists and deletes jobs and
    reads pods and logs; ``view`` only reads.

    Members are named as the apiserver knows them: a client certificate's CN (user) or O
    (group), or a signed-in person's user or group with their issuer's prefix (``oidc1:alice``,
    ``oidc1:team-a``). Kubernetes' own ``system:`` names are refused: binding
    ``system:authenticated`` would admit everyone any issuer signs in.

    >>> TenantUser(name="oidc2:team-b", kind="Group").name
    'oidc2:team-b'
    >>> TenantUser(name="system:authenticated", kind="Group")
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid TenantUser: name: 'system:authenticated' is a Kubernetes...
    """

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[^\s/]+$",
        description="User or group as the apiserver names it: a client certificate's CN or O, "
        "or an OIDC user or group with its issuer's prefix (e.g. oidc1:team-a).",
    )
    kind: Literal["User", "Group"] = Field("User", description="User or Group.")
    role: Literal["edit", "view"] = Field("edit", description="edit or view.")

    @field_validator("name")
    @classmethod
    def _not_system(cls, value: str) -> str:
        if value.lower().startswith("system:"):
            raise ValueError(
                f"{value!r} is a Kubernetes system name (system:authenticated is everyone signed "
                "in); name the tenant's own users and groups"
            )
        return value


class TenantSpec(_Model):
    """A tenant: namespace ``name`` with a ResourceQuota, a LimitRange, and roles for its users.

    >>> t = TenantSpec(name="team-a", quota={"cpu": 4, "jobs": 10}, users=[{"name": "alice"}])
    >>> t.quota.cpu, t.users[0].role
    ('4', 'edit')
    >>> TenantSpec(name="kube-system")
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid TenantSpec: name: is reserved...
    """

    name: Name = Field(description="The tenant; its namespace has the same name.")
    quota: TenantQuota = Field(default_factory=TenantQuota, description="The ResourceQuota.")
    defaults: ContainerDefaults = Field(
        default_factory=ContainerDefaults, description="The LimitRange's container defaults."
    )
    users: list[TenantUser] = Field(
        default_factory=list, description="Users and groups with their role."
    )
    host_paths: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Node directories the tenant's pods may mount as hostPath, each exactly as "
        "written (a directory below one is refused too: the tenant can write in it, and a "
        "symlink there would lead anywhere); the cluster refuses any other hostPath in the "
        "tenant's namespace.",
    )

    @field_validator("host_paths")
    @classmethod
    def _plain_directories(cls, value: list[str]) -> list[str]:
        for path in value:
            parts = path.split("/")
            if not path.startswith("/") or path == "/" or path.endswith("/"):
                raise ValueError(
                    f"{path!r} must be an absolute directory other than '/', without a trailing '/'"
                )
            if any(part in ("", ".", "..") for part in parts[1:]) or "," in path:
                raise ValueError(f"{path!r} must be a plain path (no '.', '..', '//' or ',')")
        for path in value:
            for other in value:
                if other.startswith(path + "/"):
                    raise ValueError(
                        f"{other!r} is inside {path!r}: the tenant could replace it with a "
                        "symlink to anywhere; grant directories that do not nest"
                    )
        return value

    @model_validator(mode="after")
    def _not_reserved(self) -> Self:
        if self.name == "default" or self.name.startswith("kube-"):
            raise ValueError(
                f"name: is reserved ({self.name!r}: 'default' and 'kube-*' are not tenants)"
            )
        seen: set[tuple[str, str]] = set()
        for user in self.users:
            key = (user.kind, user.name)
            if key in seen:
                raise ValueError(f"users: {user.kind} {user.name!r} is listed twice")
            seen.add(key)
        return self


# ---------------------------------------------------------------------------------------------
# Images and package bundles
# ---------------------------------------------------------------------------------------------

# A repository path as Docker names it: lowercase components joined by '/'.
_IMAGE_NAME = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(?:=[A-Za-z0-9.+:~-]+)?")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_JULIA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _image_name(value: str) -> str:
    if len(value) > 200 or not _IMAGE_NAME.fullmatch(value):
        raise ValueError(
            "must be an image repository name: lowercase components of letters, digits, "
            f"'.', '_' or '-', joined by '/' (got {value!r})"
        )
    return value


def _apt_packages(value: list[str]) -> list[str]:
    for package in value:
        if not _APT_PACKAGE.fullmatch(package):
            raise ValueError(f"{package!r} is not a Debian package name (optionally =version)")
    return value


def _absolute_keys(value: dict[str, str]) -> dict[str, str]:
    for dest in value:
        if not dest.startswith("/"):
            raise ValueError(f"destination {dest!r} must be an absolute path in the image")
    return value


class ImageSpec(_Model):
    """A container image, built from a base image by :func:`juliarun.builders.images.build_image`
    and tagged ``<registry>/<name>:<content hash>``.

    >>> spec = ImageSpec(name="juliarun/app", base="debian:bookworm", apt=["curl"])
    >>> spec.apt, spec.bundle
    (['curl'], None)
    >>> ImageSpec(name="App", base="debian:bookworm")
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid ImageSpec: name: must be an image repository name...
    """

    name: Annotated[str, AfterValidator(_image_name)] = Field(
        description="Repository name in the registry, e.g. juliarun/app."
    )
    base: Annotated[str, AfterValidator(_image_ref)] = Field(
        min_length=1, description="Base image (present on the engine or pullable)."
    )
    apt: Annotated[list[str], AfterValidator(_apt_packages)] = Field(
        default_factory=list, description="Debian packages to install with apt-get."
    )
    files: Annotated[dict[str, str], AfterValidator(_absolute_keys)] = Field(
        default_factory=dict,
        description="Files or directories to copy in: destination in the image -> path here.",
    )
    context: str | None = Field(
        None, description="A build-context directory here, copied to `workdir` in the image."
    )
    workdir: str = Field("/opt/app", description="Working directory (and where context goes).")
    run: list[str] = Field(
        default_factory=list, description="Shell commands run at build time, one RUN step each."
    )
    env: EnvMap = Field(default_factory=dict, description="Environment variables of the image.")
    entrypoint: list[str] | None = Field(None, description="The image's entrypoint.")
    bundle: str | None = Field(
        None,
        description="A built package bundle address (directory here) to bake in; the image's "
        "JULIA_DEPOT_PATH/JULIA_PROJECT then point at it.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the image.")

    @model_validator(mode="after")
    def _paths(self) -> Self:
        if not self.workdir.startswith("/"):
            raise ValueError(f"workdir: must be absolute (got {self.workdir!r})")
        return self


def _julia_name(value: str) -> str:
    if not _JULIA_NAME.fullmatch(value):
        raise ValueError(f"must be a Julia package name (got {value!r})")
    return value


def _uuid(value: str) -> str:
    if not _UUID.fullmatch(value):
        raise ValueError(f"must be a lowercase UUID (got {value!r})")
    return value


class BundlePackage(_Model):
    """A Julia package from a local directory (its ``Project.toml`` names it)."""

    name: Annotated[str, AfterValidator(_julia_name)] = Field(
        description="Package name, as in its Project.toml."
    )
    uuid: Annotated[str, AfterValidator(_uuid)] = Field(
        description="Package UUID, as in its Project.toml."
    )
    path: str = Field(min_length=1, description="The package directory on this machine.")


class BundleSpec(_Model):
    """A Julia package bundle: an environment precompiled into a depot that jobs with
    ``pkg_bundle=<name>`` use read-only. Give either ``packages`` (local path packages and
    standard-library names; juliarun writes Project.toml and Manifest.toml) or ``project`` and
    ``manifest`` (the texts of both files, already resolved).

    >>> spec = BundleSpec(name="greet", packages=["Statistics"])
    >>> spec.packages
    ['Statistics']
    >>> BundleSpec(name="greet")
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid BundleSpec: packages: give packages, or project and...
    """

    name: Name = Field(description="Bundle name jobs use as pkg_bundle (a DNS-1123 label).")
    packages: list[BundlePackage | str] = Field(
        default_factory=list,
        description="Local path packages (name, uuid, path) and standard-library names.",
    )
    project: str | None = Field(None, description="Project.toml text (with manifest).")
    manifest: str | None = Field(None, description="Manifest.toml text (with project).")
    julia_image: Annotated[str, AfterValidator(_image_ref)] | None = Field(
        None, description="Image the builder runs in on Docker (default: the cluster's)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        texts = self.project is not None or self.manifest is not None
        if self.packages and texts:
            raise ValueError("packages: give packages, or project and manifest, not both")
        if not self.packages and not texts:
            raise ValueError("packages: give packages, or project and manifest")
        if texts and (self.project is None or self.manifest is None):
            missing = "manifest" if self.manifest is None else "project"
            raise ValueError(
                f"{missing}: is required with {'project' if missing == 'manifest' else 'manifest'}"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Node pools (the cluster autoscaler's unit)
# ---------------------------------------------------------------------------------------------

POOL_LABEL = "juliarun.io/pool"
NODE_TYPE_LABEL = "juliarun.io/node-type"  # the default node-type map's label and taint key
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
ProviderKind = Literal["kwok", "aws", "azure", "gcp"]


class NodeTaint(_Model):
    """A taint every node of a pool carries."""

    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9./_-]+$", description="Key."
    )
    value: str = Field("", max_length=63, pattern=r"^[A-Za-z0-9._-]*$", description="Value.")
    effect: TaintEffect = Field(
        "NoSchedule", description="NoSchedule, PreferNoSchedule or NoExecute."
    )


class NodePool(_Model):
    """A group of identical nodes the cluster autoscaler adds and removes: every node carries
    the label ``juliarun.io/pool: <name>`` (plus the node type's label and taint, and
    ``labels`` / ``taints``), and has ``cpu``, ``memory``, ``gpu`` and ``pods`` allocatable.

    >>> pool = NodePool(name="highcpu", node_type="highcpu", cpu="4", memory="16Gi", max=10)
    >>> (pool.min, pool.max, pool.provider, pool.cpu_millis, pool.memory_bytes >> 30)
    (0, 10, 'kwok', 4000, 16)
    """

    name: Name = Field(description="Pool name (a DNS label): the juliarun.io/pool label value.")
    node_type: NodeType | None = Field(
        None,
        description="Node type its nodes are (gpu, spot, highmem, highcpu): jobs of that "
        "type land there.",
    )
    cpu: Cpu = Field(description="Allocatable CPU per node, e.g. 4.")
    memory: Memory = Field(description="Allocatable memory per node, e.g. 16Gi.")
    gpu: int = Field(0, ge=0, le=64, description="GPUs per node (nvidia.com/gpu).")
    pods: int = Field(110, ge=1, le=1000, description="Pods per node.")
    min: int = Field(0, ge=0, le=10000, description="Nodes kept at least.")
    max: int = Field(ge=0, le=10000, description="Nodes at most.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra node labels.")
    taints: list[NodeTaint] = Field(default_factory=list, description="Extra node taints.")
    price: float = Field(0.0, ge=0, description="Price per node-hour (to prefer cheaper pools).")
    spot: bool = Field(False, description="Nodes may be taken back by the provider at any time.")
    provider: ProviderKind = Field(
        "kwok",
        description="Who makes the nodes: kwok (simulated, on the cluster), aws (EC2 Fleet), "
        "azure (VMs of a Flexible VM scale set) or gcp (a managed instance group).",
    )
    provider_options: dict[str, str] = Field(
        default_factory=dict,
        description="Provider settings: for aws launch_template (required), region, subnet, "
        "instance_type, endpoint; for azure and gcp see juliarun.providers.azure / .gcp.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> NodePool:
        if self.min > self.max:
            raise ValueError(f"min: must be at most max ({self.min} > {self.max})")
        reserved = {POOL_LABEL, NODE_TYPE_LABEL}
        clash = sorted(reserved & set(self.labels))
        if clash:
            raise ValueError(f"labels: {clash[0]} is set by juliarun (not allowed)")
        return self

    @property
    def cpu_millis(self) -> int:
        return int(parse_quantity(self.cpu) * 1000)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    def node_labels(self) -> dict[str, str]:
        """Every label a node of this pool carries."""
        labels = {**self.labels, POOL_LABEL: self.name}
        if self.node_type is not None:
            labels[NODE_TYPE_LABEL] = self.node_type
        return labels

    def node_taints(self) -> list[NodeTaint]:
        """Every taint a node of this pool carries: the node type's, then ``taints``."""
        own = list(self.taints)
        if self.node_type is not None:
            own.insert(0, NodeTaint(key=NODE_TYPE_LABEL, value=self.node_type))
        return own

    def node_name(self, index: int) -> str:
        """The name of the pool's node number ``index``: derived, so creating it again after a
        restart finds the same node instead of making a second one."""
        return f"{self.name}-{index}"
