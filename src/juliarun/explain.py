"""What a spec kind's fields are, read from its pydantic model: name, type, default and
description, nested models (``resources``) flattened as ``resources.cpu``. ``juliarun explain
KIND`` prints it, with the kind's example from the repository's ``examples/`` folder.

>>> rows = {row.name: row for row in fields("JuliaBatch")}
>>> rows["script"].required, rows["script"].type
(True, 'string')
>>> rows["resources.cpu"].default, rows["restart"].type
("'1'", 'Never | OnFailure')
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from juliarun.errors import SpecError
from juliarun.specs import (
    Batch,
    BundleSpec,
    ImageSpec,
    JuliaBatch,
    JuliaParBatchWorkers,
    StorageSpec,
)

__all__ = ["KINDS", "FieldRow", "example", "fields", "model_of"]

KINDS: dict[str, type[BaseModel]] = {
    "JuliaBatch": JuliaBatch,
    "JuliaParBatchWorkers": JuliaParBatchWorkers,
    "Batch": Batch,
    "Storage": StorageSpec,
    "Image": ImageSpec,
    "Bundle": BundleSpec,
}
# Where the examples live: examples/<kind in lower case>.yaml of the repository.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


_OWN = {"kind": "The kind of spec: this one (the key that selects it in a spec file)."}


@dataclass(frozen=True)
class FieldRow:
    """One field: its dotted name, type, whether it is required, default and description."""

    name: str
    type: str
    required: bool
    default: str
    description: str


def model_of(kind: str) -> type[BaseModel]:
    """The model of a kind name (any case: ``juliabatch`` is ``JuliaBatch``).

    >>> model_of("batch").__name__
    'Batch'
    """
    for name, model in KINDS.items():
        if name.lower() == kind.lower() or model.__name__.lower() == kind.lower():
            return model
    raise SpecError(
        "arguments",
        [("kind", f"must be one of {', '.join(KINDS)} (got {kind[:80]!r})")],
        hint="`juliarun explain JuliaBatch` shows a job kind's fields",
    )


def type_name(annotation: Any) -> str:
    """A type as a person reads it.

    >>> type_name(list[str]), type_name(dict[str, str]), type_name(int | None)
    ('list of string', 'mapping of string to string', 'integer or null')
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        named = [type_name(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(named))
        return f"{text} or null" if type(None) in args else text
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in simple:
        return simple[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return "" if isinstance(value, BaseModel) else repr(value)
    if info.default is PydanticUndefined:
        return ""
    return repr(info.default)


def _nested(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def fields(kind: str) -> list[FieldRow]:
    """Every field of ``kind``: required ones first, then in the model's order; a nested model
    (``resources``) contributes its own fields under its name."""
    model = model_of(kind)
    rows: list[FieldRow] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            nested = _nested(info.annotation)
            if nested is not None:
                walk(nested, f"{prefix}{name}.")
                continue
            rows.append(
                FieldRow(
                    f"{prefix}{name}",
                    type_name(info.annotation),
                    info.is_required(),
                    _default(info),
                    " ".join((info.description or _OWN.get(name, "")).split()),
                )
            )

    walk(model, "")
    return sorted(rows, key=lambda row: (row.name != "kind", not row.required))


def example(kind: str, root: Path = EXAMPLES) -> tuple[Path, str] | None:
    """The example spec file of ``kind`` and its text, when the examples folder has one."""
    path = root / f"{model_of(kind).__name__.lower()}.yaml"
    if path.is_file():
        return path, path.read_text()
    name = next(k for k, m in KINDS.items() if m is model_of(kind)).lower()
    path = root / f"{name}.yaml"
    return (path, path.read_text()) if path.is_file() else None
