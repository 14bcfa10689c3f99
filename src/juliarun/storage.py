"""The storage catalog: named storage defined once (``define``) and resolved by name or alias.

The catalog is a JSON file under ``JULIARUN_HOME`` shared by every process on the machine; the
Prefect ``Storage`` block (``juliarun.blocks``) persists the same specs on a Prefect server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from juliarun.errors import SpecError, StorageNotFoundError
from juliarun.specs import StorageSpec


class StorageCatalog:
    """Storage specs by name, persisted in ``path`` (a JSON file), safe across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, object]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_suffix(".lock")
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            data: dict[str, dict[str, object]] = {}
            if self.path.exists():
                data = json.loads(self.path.read_text() or "{}")
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
                os.replace(tmp, self.path)

    def define(self, spec: StorageSpec) -> StorageSpec:
        """Add or replace ``spec``; an alias already used by other storage is an error."""
        with self._locked() as data:
            for other_name, other in data.items():
                if other_name == spec.name:
                    continue
                other_names = {other_name, *other.get("aliases", [])}  # type: ignore[misc]
                clash = other_names & {spec.name, *spec.aliases}
                if clash:
                    field = "name" if spec.name in clash else "aliases"
                    taken = spec.name if spec.name in clash else sorted(clash)[0]
                    raise SpecError(
                        "StorageSpec",
                        [(field, f"{taken!r} already names storage {other_name!r}")],
                    )
            data[spec.name] = spec.model_dump(mode="json")
        return spec

    def remove(self, name: str) -> bool:
        with self._locked() as data:
            return data.pop(name, None) is not None

    def all(self) -> list[StorageSpec]:
        with self._locked() as data:
            return [StorageSpec.model_validate(v) for _, v in sorted(data.items())]

    def get(self, name: str) -> StorageSpec:
        """The storage called ``name`` (or aliased so); raises :class:`StorageNotFoundError`."""
        specs = self.all()
        for spec in specs:
            if name == spec.name or name in spec.aliases:
                return spec
        raise StorageNotFoundError(name, [s.name for s in specs])

    def resolve(self, names: Sequence[str]) -> list[StorageSpec]:
        """Specs for every name, in order; the first unknown name raises."""
        return [self.get(n) for n in names]
