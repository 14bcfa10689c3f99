"""Builders without services: bundle resolution (Manifest checks, addresses) and Dockerfiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from juliarun.builders.bundles import STDLIBS, resolve_bundle
from juliarun.builders.images import render_dockerfile
from juliarun.errors import BuildError, SpecError
from juliarun.specs import BundlePackage, BundleSpec, ImageSpec

UUID = "6d3f3b7a-3c1e-4b7e-9a5e-1f2e3d4c5b6a"


def package(root: Path, deps: str = "") -> Path:
    pkg = root / "Greeter"
    (pkg / "src").mkdir(parents=True)
    (pkg / "Project.toml").write_text(f'name = "Greeter"\nuuid = "{UUID}"\n{deps}')
    (pkg / "src" / "Greeter.jl").write_text("module Greeter\nend\n")
    return pkg


def test_a_package_list_becomes_project_and_manifest_with_stdlib_closure(tmp_path: Path) -> None:
    pkg = package(tmp_path, '[deps]\nDates = "ade2ca70-3891-5945-98fb-dc099432e06a"\n')
    spec = BundleSpec(name="b", packages=[BundlePackage(name="Greeter", uuid=UUID, path=str(pkg))])
    resolved = resolve_bundle(spec, platform="local")
    assert resolved.deps == {"Greeter": UUID}
    assert set(resolved.entries) == {"Greeter", "Dates", "Printf", "Unicode"}
    assert resolved.entries["Greeter"] == {
        "path": "../packages/Greeter",
        "uuid": UUID,
        "deps": ["Dates"],
    }
    assert resolved.entries["Dates"]["uuid"] == STDLIBS["Dates"][0]
    assert '[[Greeter]]\ndeps = ["Dates"]\npath = "../packages/Greeter"' in resolved.manifest


def test_the_address_follows_sources_platform_and_image(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    spec = BundleSpec(name="b", packages=[BundlePackage(name="Greeter", uuid=UUID, path=str(pkg))])
    first = resolve_bundle(spec, platform="local").address
    assert resolve_bundle(spec, platform="local").address == first
    assert resolve_bundle(spec, platform="docker", julia_image="j:1").address != first
    (pkg / "src" / "Greeter.jl").write_text("module Greeter\ngreet() = 1\nend\n")
    assert resolve_bundle(spec, platform="local").address != first


def test_bad_bundles_fail_naming_the_package(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"'Plots' is not a Julia 1\.5 standard library"):
        resolve_bundle(BundleSpec(name="b", packages=["Plots"]), platform="local")
    pkg = package(tmp_path, '[deps]\nJSON = "682c06a0-de6a-54ab-a142-c8b1cf79cde6"\n')
    spec = BundleSpec(name="b", packages=[BundlePackage(name="Greeter", uuid=UUID, path=str(pkg))])
    with pytest.raises(SpecError, match=r"package 'JSON' \(needed by Greeter\) has no Manifest"):
        resolve_bundle(spec, platform="local")
    wrong = BundlePackage(name="Greeter", uuid=UUID.replace("6", "7"), path=str(pkg))
    with pytest.raises(SpecError, match="says name 'Greeter'"):
        resolve_bundle(BundleSpec(name="b", packages=[wrong]), platform="local")
    texts = BundleSpec(name="b", project=f'[deps]\nGreeter = "{UUID}"\n', manifest="x = [")
    with pytest.raises(SpecError, match="manifest: is not valid TOML"):
        resolve_bundle(texts, platform="local")
    with pytest.raises(SpecError, match="manifest: is required with project"):
        BundleSpec(name="b", project="[deps]\n")


def test_texts_with_path_entries_are_checked_and_made_relative(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    spec = BundleSpec(
        name="b",
        project=f'[deps]\nGreeter = "{UUID}"\n',
        manifest=f'[[Greeter]]\npath = "{pkg}"\nuuid = "{UUID}"\n',
    )
    resolved = resolve_bundle(spec, platform="local")
    assert resolved.entries["Greeter"]["path"] == "../packages/Greeter"
    assert resolved.sources == {"Greeter": pkg}
    assert not resolved.needs_registry


def test_dockerfile_of_a_full_spec(tmp_path: Path) -> None:
    bundle = tmp_path / "abc"
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"root": "/mnt/jrb-abc"}')
    spec = ImageSpec(
        name="juliarun/app",
        base="base:1",
        files={"/etc/motd": "/tmp/motd"},
        context=str(tmp_path),
        env={"A": "b c"},
        bundle=str(bundle),
        entrypoint=["julia"],
    )
    assert render_dockerfile(spec).splitlines() == [
        "FROM base:1",
        'COPY files/0 "/etc/motd"',
        "COPY context/ /opt/app/",
        "WORKDIR /opt/app",
        "COPY bundle/ /mnt/jrb-abc/",
        'ENV JULIA_DEPOT_PATH="/mnt/jrb-abc/depot:" JULIA_PROJECT="/mnt/jrb-abc/env"',
        'ENV A="b c"',
        'ENTRYPOINT ["julia"]',
    ]


def test_build_error_names_the_step_and_its_output() -> None:
    err = BuildError("image build of x", "RUN false", ["oops"])
    assert (err.step, err.output) == ("RUN false", ["oops"])
    assert str(err).startswith("image build of x failed at step: RUN false\noutput:\n  oops")


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({"bundle": BundleSpec(name="b", packages=["Statistics"])}, "image"),
        ({"image": ImageSpec(name="app", base="debian:bookworm")}, "bundle"),
    ],
)
def test_baking_a_bundle_needs_both_a_bundle_and_an_image(
    kwargs: dict[str, object], missing: str
) -> None:
    from juliarun.flows import run_pipeline
    from juliarun.specs import JuliaBatch

    job = JuliaBatch("j", "/mnt/code/main.jl", "code")
    with pytest.raises(SpecError, match=f"bake_bundle: needs a {missing}"):
        run_pipeline.fn(job, bake_bundle=True, **kwargs)  # type: ignore[arg-type]
