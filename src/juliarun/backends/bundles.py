"""Where a job's package bundle is: ``<home>/bundles/<name>/current`` points at the newest
built address, whose ``bundle.json`` names the ``root`` path jobs must see it at (Julia 1.5
only reuses a precompiled cache when the package source is where it was compiled)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from juliarun.errors import SpecError
from juliarun.specs import JobSpec

CURRENT = "current"


def bundle_dir(home: Path, name: str) -> Path:
    return home / "bundles" / name


def bundle_info(address: Path) -> dict[str, Any]:
    """The ``bundle.json`` of a built address."""
    data: dict[str, Any] = json.loads((address / "bundle.json").read_text())
    return data


def current_address(home: Path, name: str) -> Path | None:
    """The address ``<home>/bundles/<name>/current`` points at (``None``: never built)."""
    link = bundle_dir(home, name) / CURRENT
    target = link.resolve() if link.is_symlink() else None
    return target if target is not None and (target / "bundle.json").is_file() else None


@dataclass(frozen=True)
class JobBundle:
    """The bundle address a job uses: ``path`` here, ``root`` where the job sees it."""

    path: Path
    root: str

    def env(self) -> dict[str, str]:
        """``JULIA_DEPOT_PATH`` (the trailing ``:`` keeps Julia's own depots for the standard
        libraries) and ``JULIA_PROJECT``."""
        return {"JULIA_DEPOT_PATH": f"{self.root}/depot:", "JULIA_PROJECT": f"{self.root}/env"}


def job_bundle(home: Path, job: JobSpec) -> JobBundle | None:
    """The current address of the job's ``pkg_bundle``; :class:`SpecError` when not built."""
    if job.pkg_bundle is None:
        return None
    address = current_address(home, job.pkg_bundle)
    if address is None:
        raise SpecError(
            job.kind,
            [
                (
                    "pkg_bundle",
                    f"package bundle {job.pkg_bundle!r} not found in {home / 'bundles'}",
                )
            ],
            hint="build it first with the build_package_bundle flow",
        )
    return JobBundle(address, str(bundle_info(address)["root"]))
