"""Package bundles: a Julia environment precompiled into a depot, content-addressed.

:func:`resolve_bundle` writes ``Project.toml`` and ``Manifest.toml`` itself (local packages
tracked by path, standard libraries by uuid) and checks them before anything is built: every
``[deps]`` entry has a Manifest entry, every path exists. Nothing asks the General registry.

:func:`build_bundle` copies the package sources into ``<home>/bundles/<name>/<address>/``
(``env/``, ``packages/``, ``depot/``), then runs a builder job on the cluster through its
normal backend (local: a process; Docker: a container of the Julia image with the address
mounted read-write; Kubernetes: a Job whose pod mounts the address as a read-write hostPath —
the home must be on the node, as on the test cluster whose node is this machine) that runs
``Pkg.precompile()`` and loads every package, writing the ``.ji`` caches into
``depot/compiled``. ``<home>/bundles/<name>/current`` then points at the
address; jobs with ``pkg_bundle=<name>`` get it read-only.

Julia 1.5 accepts a cache only when the package source sits at the path it was compiled from,
so a bundle records the ``root`` its jobs see it at (``bundle.json``): on local the address
directory itself, on Docker and Kubernetes ``/mnt/jrb-<address>`` for the builder and for every
job.

>>> from juliarun.specs import BundleSpec
>>> resolved = resolve_bundle(BundleSpec(name="stats", packages=["Statistics"]), platform="local")
>>> print(resolved.project)
[deps]
Statistics = "10745b16-79ce-11e8-11f9-7d13ad32a3b2"
>>> sorted(resolved.entries)
['Libdl', 'LinearAlgebra', 'Random', 'Serialization', 'SparseArrays', 'Statistics']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from juliarun.backends.base import Backend, JobStatus
from juliarun.backends.bundles import CURRENT, bundle_dir, bundle_info, current_address
from juliarun.backends.follow import follow_job
from juliarun.errors import BuildError, JobNotFoundError, SpecError
from juliarun.logs import LogLine, LogStore
from juliarun.specs import Batch, BundlePackage, BundleSpec, StorageSpec

LineCallback = Callable[[str], None]
PREFIX = "jrb-"
STEP = "juliarun-step:"

# Julia 1.5's standard libraries: name -> (uuid, the stdlibs it depends on).
STDLIBS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Base64": ("2a0f44e3-6c83-55bd-87e4-b1978d98bd5f", ()),
    "CRC32c": ("8bf52ea8-c179-5cab-976a-9e18b702a9bc", ()),
    "Dates": ("ade2ca70-3891-5945-98fb-dc099432e06a", ("Printf",)),
    "DelimitedFiles": ("8bb1440f-4735-579b-a4ab-409b98df4dab", ("Mmap",)),
    "Distributed": (
        "8ba89e20-285c-5b6f-9357-94700520ee1b",
        ("Random", "Serialization", "Sockets"),
    ),
    "FileWatching": ("7b1f6079-737a-58dc-b8bc-7a2ca5c1b5ee", ()),
    "Future": ("9fa8497b-333b-5362-9e8d-4d0656e87820", ("Random",)),
    "InteractiveUtils": ("b77e0a4c-d291-57a0-90e8-8db25a27a240", ("Markdown",)),
    "LibGit2": ("76f85450-5226-5b5a-8eaa-529ad045b433", ("Printf",)),
    "Libdl": ("8f399da3-3557-5675-b5ff-fb832c97cbdb", ()),
    "LinearAlgebra": ("37e2e46d-f89d-539d-b4ee-838fcccc9c8e", ("Libdl",)),
    "Logging": ("56ddb016-857b-54e1-b83d-db4d58db5568", ()),
    "Markdown": ("d6f4376e-aef5-505a-96c1-9c027394607a", ("Base64",)),
    "Mmap": ("a63ad114-7e13-5084-954f-fe012c677804", ()),
    "Pkg": (
        "44cfe95a-1eb2-52ea-b672-e2afdf69b78f",
        (
            "Dates",
            "LibGit2",
            "Libdl",
            "Logging",
            "Markdown",
            "Printf",
            "REPL",
            "Random",
            "SHA",
            "UUIDs",
        ),
    ),
    "Printf": ("de0858da-6303-5e67-8744-51eddeeeb8d7", ("Unicode",)),
    "Profile": ("9abbd945-dff8-562f-b5e8-e1ebf5ef1b79", ("Printf",)),
    "REPL": (
        "3fa0cd96-eef1-5676-8a61-b3b8758bbffb",
        ("InteractiveUtils", "Markdown", "Sockets"),
    ),
    "Random": ("9a3f8284-a2c9-5f02-9a11-845980a1fd5c", ("Serialization",)),
    "SHA": ("ea8e919c-243c-51af-8825-aaa63cd721ce", ()),
    "Serialization": ("9e88b42a-f829-5b0c-bbe9-9e923198166b", ()),
    "SharedArrays": (
        "1a1011a3-84de-559e-8e89-a11a2f7dc383",
        ("Distributed", "Mmap", "Random", "Serialization"),
    ),
    "Sockets": ("6462fe0b-24de-5631-8697-dd941f90decc", ()),
    "SparseArrays": ("2f01184e-e22b-5df5-ae63-d93ebab69eaf", ("LinearAlgebra", "Random")),
    "Statistics": ("10745b16-79ce-11e8-11f9-7d13ad32a3b2", ("LinearAlgebra", "SparseArrays")),
    "SuiteSparse": (
        "4607b0f0-06f3-5cda-b6b1-a6196a1729e9",
        ("Libdl", "LinearAlgebra", "Serialization", "SparseArrays"),
    ),
    "Test": (
        "8dfed614-e22c-5e08-85e1-65c5234f0b40",
        ("Distributed", "InteractiveUtils", "Logging", "Random"),
    ),
    "UUIDs": ("cf7118a7-6976-5b1a-9a39-7adc72f591a4", ("Random", "SHA")),
    "Unicode": ("4ec0a83e-493e-50e2-b9ac-8f72acf5a8f5", ()),
}


@dataclass(frozen=True)
class ResolvedBundle:
    """A bundle's environment, checked: the files to write, the sources to copy, its digest."""

    spec: BundleSpec
    deps: dict[str, str]
    """``[deps]`` of Project.toml: name -> uuid (the packages jobs load)."""
    entries: dict[str, dict[str, Any]]
    """Manifest entries by package name (``path`` already points into ``../packages``)."""
    sources: dict[str, Path] = field(default_factory=dict)
    """Local package name -> its directory on this machine."""
    digest: str = ""

    @property
    def address(self) -> str:
        return self.digest[:16]

    @property
    def project(self) -> str:
        lines = ["[deps]", *(f'{n} = "{u}"' for n, u in sorted(self.deps.items()))]
        return "\n".join(lines)

    @property
    def manifest(self) -> str:
        blocks = []
        for name in sorted(self.entries):
            lines = [f"[[{name}]]"]
            for key, value in sorted(self.entries[name].items()):
                lines.append(f"{key} = {_toml_value(value)}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    @property
    def needs_registry(self) -> bool:
        """Whether some entry is a registry package (fetched by ``Pkg.instantiate``)."""
        return any("git-tree-sha1" in e or "repo-url" in e for e in self.entries.values())


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle address: where it is, what got compiled, and whether it was built now."""

    name: str
    address: str
    path: Path
    root: str
    built: bool
    compiled: list[str]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover


def _read_toml(text: str, field_name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError("BundleSpec", [(field_name, f"is not valid TOML: {exc}")]) from exc


def _local_package(pkg: BundlePackage) -> tuple[dict[str, Any], dict[str, str]]:
    """The Manifest entry of a local package and its own ``[deps]``."""
    root = Path(pkg.path)
    project_file = next(
        (p for p in (root / "Project.toml", root / "JuliaProject.toml") if p.is_file()), None
    )
    if not root.is_dir() or project_file is None:
        raise SpecError(
            "BundleSpec",
            [("packages", f"package {pkg.name!r}: {root} is not a package (no Project.toml)")],
        )
    project = _read_toml(project_file.read_text(), f"packages.{pkg.name}")
    problems = []
    if project.get("name") != pkg.name or project.get("uuid") != pkg.uuid:
        problems.append(
            (
                "packages",
                f"package {pkg.name!r} ({pkg.uuid}): {project_file} says name "
                f"{project.get('name')!r}, uuid {project.get('uuid')!r}",
            )
        )
    if not (root / "src" / f"{pkg.name}.jl").is_file():
        problems.append(("packages", f"package {pkg.name!r}: {root}/src/{pkg.name}.jl is missing"))
    if problems:
        raise SpecError("BundleSpec", problems)
    entry: dict[str, Any] = {"path": f"../packages/{pkg.name}", "uuid": pkg.uuid}
    if "version" in project:
        entry["version"] = str(project["version"])
    return entry, dict(project.get("deps", {}))


def _from_packages(spec: BundleSpec) -> tuple[dict[str, str], dict[str, Any], dict[str, Path]]:
    deps: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    sources: dict[str, Path] = {}
    wanted_by: dict[str, str] = {}
    for item in spec.packages:
        if isinstance(item, str):
            if item not in STDLIBS:
                raise SpecError(
                    "BundleSpec",
                    [("packages", f"{item!r} is not a Julia 1.5 standard library")],
                    hint="give local packages as {name, uuid, path}; registry packages need "
                    "project and manifest texts resolved where the registry is reachable",
                )
            deps[item] = STDLIBS[item][0]
            wanted_by.setdefault(item, "packages")
            continue
        entry, own_deps = _local_package(item)
        deps[item.name] = item.uuid
        entries[item.name] = entry
        sources[item.name] = Path(item.path).resolve()
        for dep in own_deps:
            wanted_by.setdefault(dep, item.name)
        if own_deps:
            entry["deps"] = sorted(own_deps)
    # Standard libraries and their dependencies, transitively.
    pending = [name for name in wanted_by if name not in entries]
    while pending:
        name = pending.pop()
        if name in entries:
            continue
        if name not in STDLIBS:
            raise SpecError(
                "BundleSpec",
                [
                    (
                        "manifest",
                        f"package {name!r} (needed by {wanted_by[name]}) has no Manifest "
                        "entry: it is neither a listed local package nor a standard library",
                    )
                ],
                hint=f"add {name} to packages (as a local path package)",
            )
        uuid, stdlib_deps = STDLIBS[name]
        entries[name] = {"uuid": uuid, **({"deps": list(stdlib_deps)} if stdlib_deps else {})}
        for dep in stdlib_deps:
            wanted_by.setdefault(dep, name)
            pending.append(dep)
    return deps, entries, sources


def _from_texts(spec: BundleSpec) -> tuple[dict[str, str], dict[str, Any], dict[str, Path]]:
    project = _read_toml(spec.project or "", "project")
    manifest = _read_toml(spec.manifest or "", "manifest")
    deps = {str(k): str(v) for k, v in project.get("deps", {}).items()}
    entries: dict[str, dict[str, Any]] = {}
    sources: dict[str, Path] = {}
    problems: list[tuple[str, str]] = []
    for name, value in manifest.items():
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
            problems.append(("manifest", f"entry {name!r} must be one [[{name}]] table"))
            continue
        entry = dict(value[0])
        if "path" in entry:
            path = Path(str(entry["path"]))
            if not path.is_absolute():
                problems.append(("manifest", f"package {name!r}: path {path} must be absolute"))
            elif not (path / "src" / f"{name}.jl").is_file():
                problems.append(("manifest", f"package {name!r}: {path}/src/{name}.jl is missing"))
            sources[name] = path
            entry["path"] = f"../packages/{name}"
        entries[name] = entry
    for name, uuid in deps.items():
        if name not in entries:
            problems.append(
                ("manifest", f"package {name!r} in Project.toml [deps] has no Manifest entry")
            )
        elif entries[name].get("uuid") != uuid:
            problems.append(("manifest", f"package {name!r}: uuid differs from Project.toml"))
    for name, entry in entries.items():
        entry_deps = entry.get("deps", [])
        for dep in entry_deps if isinstance(entry_deps, list) else list(entry_deps):
            if dep not in entries:
                problems.append(
                    ("manifest", f"package {dep!r} (a dependency of {name}) has no Manifest entry")
                )
    if problems:
        raise SpecError("BundleSpec", problems)
    return deps, entries, sources


def _hash_sources(digest: Any, sources: Mapping[str, Path]) -> None:
    for name in sorted(sources):
        root = sources[name]
        for item in sorted(root.rglob("*")):
            if item.is_file() and ".git" not in item.relative_to(root).parts:
                digest.update(f"{name}/{item.relative_to(root).as_posix()}\0".encode())
                digest.update(hashlib.sha256(item.read_bytes()).digest())


def resolve_bundle(
    spec: BundleSpec, *, platform: str, julia_image: str | None = None
) -> ResolvedBundle:
    """Check ``spec`` and compute its environment and content address; nothing is written.

    Raises :class:`SpecError` naming a package that has no Manifest entry or whose path does
    not hold a package."""
    deps, entries, sources = _from_packages(spec) if spec.packages else _from_texts(spec)
    resolved = ResolvedBundle(spec, deps, entries, sources)
    digest = hashlib.sha256()
    digest.update(f"{spec.name}\0{platform}\0{julia_image or ''}\0".encode())
    digest.update(resolved.project.encode() + b"\0" + resolved.manifest.encode())
    _hash_sources(digest, sources)
    return ResolvedBundle(spec, deps, entries, sources, digest.hexdigest())


def set_current(home: Path, name: str, address: str) -> None:
    link = bundle_dir(home, name) / CURRENT
    tmp = link.with_name(f".{CURRENT}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(address)
    os.replace(tmp, link)


def _builder_script(resolved: ResolvedBundle, root: str) -> str:
    uses = "; ".join(f"using {name}" for name in sorted(resolved.deps))
    steps = []
    if resolved.needs_registry:
        steps.append(("Pkg.instantiate()", "using Pkg; Pkg.instantiate()"))
    # Loading each package compiles its cache; Pkg.precompile() afterwards checks that every
    # dependency has one. (Julia 1.5.3 here segfaults when Pkg.precompile() or
    # Base.compilecache() itself has to compile; loading first leaves it nothing to do.)
    steps += [
        (uses, uses + '; println("loaded ' + ", ".join(sorted(resolved.deps)) + '")'),
        ("Pkg.precompile()", "using Pkg; Pkg.precompile()"),
    ]
    parts = ["set -e", f"cd {root}"]
    for title, code in steps:
        parts.append(f"echo '{STEP} {title}'")
        parts.append(f"julia --startup-file=no --color=no -e '{code}'")
    return "\n".join(parts)


def _job_name(spec: BundleSpec, address: str) -> str:
    return f"bundle-{address[:10]}-{spec.name}"[:63].rstrip("-")


def builder_image(spec: BundleSpec, backend: Backend) -> str | None:
    """The image the builder (and the bundle's jobs) run in; ``None`` where jobs are
    processes (local)."""
    if backend.image is None:
        return None
    return spec.julia_image or backend.image


def bundle_cache_key(spec: BundleSpec, backend: Backend) -> str:
    """The content hash of ``spec`` on ``backend`` (checks every [deps] entry in the Manifest
    and that paths exist; builds nothing). It names the cluster's home too: an address built
    for another home is not this one's."""
    resolved = resolve_bundle(spec, platform=backend.kind, julia_image=builder_image(spec, backend))
    return hashlib.sha256(f"{backend.home}\0{resolved.digest}".encode()).hexdigest()


def use_built(backend: Backend, name: str, address: str) -> bool:
    """Point ``current`` at ``address`` again (a cached build skipped the builder); ``False``
    when the address is gone (pruned)."""
    if not (bundle_dir(backend.home, name) / address / "bundle.json").is_file():
        return False
    set_current(backend.home, name, address)
    return True


def check_bake_bundle(bundle: BundleSpec | None, image: object | None, bake: bool) -> None:
    """Baking a bundle into the job's image needs both: :class:`SpecError` on ``bake_bundle``
    otherwise, before anything is built."""
    if bake and (bundle is None or image is None):
        missing = "bundle" if bundle is None else "image"
        raise SpecError(
            "run_pipeline",
            [("bake_bundle", f"needs a {missing} (the bundle is baked into the image)")],
            hint="give both bundle= and image=, or leave bake_bundle off",
        )


def build_bundle(
    spec: BundleSpec,
    backend: Backend,
    *,
    logs: LogStore,
    on_line: LineCallback | None = None,
    timeout: float | None = 1800,
    poll_interval: float = 0.5,
) -> BuiltBundle:
    """Resolve ``spec``, and unless its address is built already, precompile it with a
    builder job on ``backend`` (local, Docker or Kubernetes); ``current`` then points at the
    address.

    The builder's lines are followed as any job's (shipped into ``logs`` where a collector
    ships them) and handed to ``on_line``.

    Raises :class:`SpecError` before anything is written and :class:`BuildError` naming the
    builder step that failed (with its output)."""
    home = backend.home
    image = builder_image(spec, backend)
    resolved = resolve_bundle(spec, platform=backend.kind, julia_image=image)
    address = bundle_dir(home, spec.name) / resolved.address
    if (address / "bundle.json").is_file():
        info = bundle_info(address)
        set_current(home, spec.name, resolved.address)
        if on_line is not None:
            on_line(f"bundle {spec.name} at {resolved.address} is built already")
        return BuiltBundle(
            spec.name, resolved.address, address, info["root"], False, info["compiled"]
        )
    storage_name = f"{PREFIX}{resolved.address}"
    root = backend.job_path(storage_name, address)
    _write_env(resolved, address)
    job = Batch(
        _job_name(spec, resolved.address),
        command=["sh", "-c", _builder_script(resolved, root)],
        storage=[storage_name],
        env={"JULIA_DEPOT_PATH": f"{root}/depot:", "JULIA_PROJECT": f"{root}/env"},
        image=image,
        backoff_limit=0,
    )
    storage = {storage_name: StorageSpec(name=storage_name, kind="host", path=str(address))}
    try:
        status, lines = _run(
            backend,
            job,
            storage,
            logs,
            on_line=on_line,
            timeout=timeout,
            poll_interval=poll_interval,
        )
    except BaseException:
        shutil.rmtree(address, ignore_errors=True)
        raise
    if status.phase != "succeeded":
        shutil.rmtree(address, ignore_errors=True)
        steps = [line.split(STEP, 1)[1].strip() for line in lines if STEP in line]
        tail = [line for line in lines if STEP not in line][-20:] or status.last_lines
        raise BuildError(
            f"package bundle {spec.name!r} ({status.reason or 'failed'})",
            steps[-1] if steps else "(starting the builder job)",
            tail,
            hint="fix the package (its output is above) and build again",
        )
    compiled = sorted(p.parent.name for p in (address / "depot" / "compiled").glob("*/*/*.ji"))
    info = {
        "name": spec.name,
        "address": resolved.address,
        "digest": resolved.digest,
        "root": root,
        "platform": backend.kind,
        "image": image,
        "packages": sorted(resolved.deps),
        "compiled": compiled,
        "created": datetime.now(UTC).isoformat(),
    }
    (address / "bundle.json").write_text(json.dumps(info, indent=2))
    set_current(home, spec.name, resolved.address)
    return BuiltBundle(spec.name, resolved.address, address, root, True, compiled)


def _write_env(resolved: ResolvedBundle, address: Path) -> None:
    if address.exists():  # a build that did not finish
        shutil.rmtree(address)
    (address / "env").mkdir(parents=True)
    (address / "depot").mkdir()
    (address / "packages").mkdir()
    (address / "env" / "Project.toml").write_text(resolved.project + "\n")
    (address / "env" / "Manifest.toml").write_text(resolved.manifest + "\n")
    for name, source in resolved.sources.items():
        shutil.copytree(source, address / "packages" / name, ignore=shutil.ignore_patterns(".git"))


def _run(
    backend: Backend,
    job: Batch,
    storage: Mapping[str, StorageSpec],
    logs: LogStore,
    *,
    on_line: LineCallback | None,
    timeout: float | None,
    poll_interval: float,
) -> tuple[JobStatus, list[str]]:
    with contextlib.suppress(JobNotFoundError):  # a builder left by an interrupted build
        backend.delete(job.name, force=True)
    backend.submit(job, storage)
    lines: list[str] = []

    def keep(line: LogLine) -> None:
        lines.append(line.message)
        if on_line is not None:
            on_line(line.message)

    try:
        followed = follow_job(
            backend, job.name, logs, on_line=keep, timeout=timeout, poll_interval=poll_interval
        )
        status = followed.raise_if_running()
    finally:
        with contextlib.suppress(JobNotFoundError):
            backend.delete(job.name, force=True)
    return status, lines


def prune_bundles(home: Path, *, in_use: Iterable[str] = ()) -> list[Path]:
    """Remove bundle addresses that are not ``current`` and that no job on this home
    references (its ``job.json`` names the address) nor any path of ``in_use`` names (the
    addresses Kubernetes Jobs mount); returns what was removed."""
    root = home / "bundles"
    if not root.is_dir():
        return []
    referenced = "\n".join(
        [p.read_text(errors="replace") for p in home.glob("clusters/*/jobs/*/job.json")]
        + list(in_use)
    )
    removed = []
    for named in sorted(p for p in root.iterdir() if p.is_dir()):
        current = current_address(home, named.name)
        for address in sorted(p for p in named.iterdir() if p.is_dir() and not p.is_symlink()):
            if current is not None and address.resolve() == current:
                continue
            if address.name in referenced:
                continue
            shutil.rmtree(address, ignore_errors=True)
            removed.append(address)
    return removed
