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

from juliarun._files import private_dir, private_file
from juliarun.errors import SpecError, StorageError, StorageNotFoundError
from juliarun.specs import StorageSpec


class StorageCatalog:
    """Storage specs by name, persisted in ``path`` (a JSON file), safe across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, object]]]:
        private_dir(self.path.parent)
        lock = private_file(self.path.with_suffix(".lock"))
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            data = self._load()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(json.dumps(data, indent=2, sort_keys=True))
                os.replace(tmp, self.path)

    def _load(self) -> dict[str, dict[str, object]]:
        """The catalog as stored; a file that is not a catalog is one clear error."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise self._corrupt(f"cannot be read ({exc})") from exc
        try:
            data = json.loads(text or "{}")
        except ValueError as exc:
            raise self._corrupt(f"is not JSON ({exc})") from exc
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise self._corrupt("is not a mapping of storage specs")
        return data

    def _corrupt(self, why: str) -> StorageError:
        return StorageError(
            f"the storage catalog {self.path} {why}",
            hint=f"fix it, or move it away to start an empty catalog: mv {self.path} "
            f"{self.path}.bad",
        )

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
