"""Package bundles with real Julia: a local package plus a standard library, precompiled by a
builder job into a content-addressed depot, used read-only by jobs on local and on Docker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from juliarun.backends.base import Backend, wait_for_job
from juliarun.backends.bundles import current_address
from juliarun.backends.local import LocalBackend
from juliarun.builders.bundles import BuiltBundle, prune_bundles
from juliarun.builders.bundles import build_bundle as build_with
from juliarun.errors import SpecError
from juliarun.logs import LogQuery, open_log_store
from juliarun.specs import BundlePackage, BundleSpec, JuliaBatch, StorageSpec

pytestmark = pytest.mark.julia

GREETER_UUID = "6d3f3b7a-3c1e-4b7e-9a5e-1f2e3d4c5b6a"


def make_greeter(root: Path) -> Path:
    """A tiny Julia package using a standard library."""
    pkg = root / "Greeter"
    (pkg / "src").mkdir(parents=True)
    (pkg / "Project.toml").write_text(
        f'name = "Greeter"\nuuid = "{GREETER_UUID}"\nversion = "0.1.0"\n\n'
        '[deps]\nStatistics = "10745b16-79ce-11e8-11f9-7d13ad32a3b2"\n'
    )
    (pkg / "src" / "Greeter.jl").write_text(
        'module Greeter\nusing Statistics\ngreet() = "hello world! mean=$(mean([1, 2, 3]))"\nend\n'
    )
    return pkg


def greeter_bundle(tmp_path: Path) -> BundleSpec:
    pkg = make_greeter(tmp_path)
    return BundleSpec(
        name="greet",
        packages=[BundlePackage(name="Greeter", uuid=GREETER_UUID, path=str(pkg)), "Statistics"],
    )


def run_greeting(backend: Backend, tmp_path: Path) -> list[str]:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "main.jl").write_text("using Greeter, Statistics\nprintln(Greeter.greet())\n")
    job = JuliaBatch("greeting", "/mnt/code/main.jl", "code", pkg_bundle="greet")
    backend.submit(job, {"code": StorageSpec(name="code", kind="host", path=str(code))})
    status = wait_for_job(backend, job.name, timeout=180)
    store = open_log_store(backend.log_store)  # type: ignore[attr-defined]
    try:
        lines = [line.message for line in store.query(LogQuery(job=job.name))]
    finally:
        store.close()
    assert status.phase == "succeeded", (status, lines)
    return lines


def build_bundle(spec: BundleSpec, backend: Backend, **options: Any) -> BuiltBundle:
    """Build with the backend's own log store (where its supervisor ships the lines)."""
    store = open_log_store(backend.log_store)  # type: ignore[attr-defined]
    try:
        return build_with(spec, backend, logs=store, **options)
    finally:
        store.close()


def check_compiled(address: Path) -> None:
    caches = list((address / "depot" / "compiled" / "v1.5" / "Greeter").glob("*.ji"))
    assert caches, f"no Greeter cache under {address}"


def test_local_bundle_is_precompiled_and_used_read_only(
    julia: str, juliarun_home: Path, tmp_path: Path
) -> None:
    spec = greeter_bundle(tmp_path)
    backend = LocalBackend(juliarun_home)
    lines: list[str] = []
    built = build_bundle(spec, backend, on_line=lines.append)
    assert built.built and built.compiled == ["Greeter"]
    assert "juliarun-step: Pkg.precompile()" in lines
    check_compiled(built.path)
    assert current_address(juliarun_home, "greet") == built.path.resolve()
    assert not backend.jobs(), "the builder job is removed after the build"

    output = run_greeting(backend, tmp_path)
    assert output == ["hello world! mean=2.0"]  # no "Precompiling" line: the cache was used

    again = build_bundle(spec, backend)
    assert (again.address, again.built) == (built.address, False)

    # A changed package is a new address; the old one is pruned once no job references it.
    (tmp_path / "Greeter" / "src" / "Greeter.jl").write_text(
        'module Greeter\nusing Statistics\ngreet() = "hello again!"\nend\n'
    )
    newer = build_bundle(spec, backend)
    assert newer.address != built.address
    assert prune_bundles(juliarun_home) == [], "the finished greeting job still names it"
    backend.delete("greeting", force=True)
    assert prune_bundles(juliarun_home) == [built.path]
    assert current_address(juliarun_home, "greet") == newer.path.resolve()


def test_a_manifest_missing_an_entry_fails_naming_the_package_with_nothing_built(
    juliarun_home: Path, tmp_path: Path
) -> None:
    pkg = make_greeter(tmp_path)
    spec = BundleSpec(
        name="broken",
        project=f'[deps]\nGreeter = "{GREETER_UUID}"\n',
        manifest=(f'[[Greeter]]\npath = "{pkg}"\nuuid = "{GREETER_UUID}"\ndeps = ["Statistics"]\n'),
    )
    with pytest.raises(SpecError) as err:
        build_bundle(spec, LocalBackend(juliarun_home))
    assert err.value.errors == [
        ("manifest", "package 'Statistics' (a dependency of Greeter) has no Manifest entry")
    ]
    assert not (juliarun_home / "bundles").exists()

    missing = BundleSpec(
        name="broken", project=f'[deps]\nGreeter = "{GREETER_UUID}"\n', manifest=""
    )
    with pytest.raises(SpecError, match=r"package 'Greeter' in Project.toml \[deps\] has no"):
        build_bundle(missing, LocalBackend(juliarun_home))


@pytest.mark.docker
def test_docker_bundle_is_built_in_the_julia_image_and_mounted_read_only(
    juliarun_home: Path,
    tmp_path: Path,
    julia_image: str,
    docker_labels: dict[str, str],
) -> None:
    from juliarun.backends.docker import DockerBackend

    backend = DockerBackend(juliarun_home, image=julia_image, labels=docker_labels, kill_grace=5)
    try:
        built = build_bundle(greeter_bundle(tmp_path), backend)
        assert built.root == f"/mnt/jrb-{built.address}"
        check_compiled(built.path)
        assert run_greeting(backend, tmp_path) == ["hello world! mean=2.0"]
    finally:
        for job in backend.jobs():
            backend.delete(job.name, force=True)
        backend.close()
