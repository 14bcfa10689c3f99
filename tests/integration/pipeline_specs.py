"""The specs of issue 4's end-to-end line, shared by the pipeline tests on every backend: a
JuliaBatch using a bundle of a local Julia package, an image built by build_image, and host +
ramdisk + git storage, printing its hello world! from real Julia."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import juliarun
from juliarun.specs import BundlePackage, BundleSpec, ImageSpec, JuliaBatch, StorageSpec
from tests.integration.git_repos import make_repo
from tests.integration.test_bundles import GREETER_UUID, make_greeter

MOTD = "built by juliarun"

# Storage is reached through JULIARUN_STORAGE_<NAME> (``/mnt/<name>`` in a container, the
# storage's directory on local, where only the script path is rewritten). The motd comes from the
# built image; on local the job runs on the host, which has no such file.
MAIN_JL = f"""\
using Greeter
motd = "/etc/motd"
if isfile(motd) && startswith(read(motd, String), "{MOTD}")
    println(strip(read(motd, String)))
end
scratch = joinpath(ENV["JULIARUN_STORAGE_SCRATCH"], "x")
write(scratch, "from ramdisk")
println(read(scratch, String))
println(strip(read(joinpath(ENV["JULIARUN_STORAGE_REPO"], "data.txt"), String)))
println(Greeter.greet())
"""


@dataclass
class PipelineSpecs:
    job: JuliaBatch
    storage: list[StorageSpec]
    bundle: BundleSpec
    image: ImageSpec

    def kwargs(self) -> dict[str, Any]:
        """run_pipeline's spec arguments (besides ``job``)."""
        return {"storage": self.storage, "bundle": self.bundle, "image": self.image}

    def parameters(self) -> dict[str, Any]:
        """The same as JSON parameters of the run-pipeline deployment."""
        return {
            "job": self.job.model_dump(mode="json"),
            "storage": [spec.model_dump(mode="json") for spec in self.storage],
            "bundle": self.bundle.model_dump(mode="json"),
            "image": self.image.model_dump(mode="json"),
        }


def pipeline_specs(
    tmp_path: Path, julia_image: str, image_name: str, labels: dict[str, str]
) -> PipelineSpecs:
    """Specs under ``tmp_path``: the Greeter package, the code, a git origin and the image's
    files; the image is ``image_name`` FROM ``julia_image``."""
    pkg = make_greeter(tmp_path)
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.jl").write_text(MAIN_JL)
    (tmp_path / "motd").write_text(f"{MOTD}\n")
    return PipelineSpecs(
        job=juliarun.JuliaBatch(
            f"pipe-{uuid.uuid4().hex[:8]}", "/mnt/code/main.jl", ["code", "scratch", "repo"]
        ),
        storage=[
            StorageSpec(name="code", kind="host", path=str(code)),
            StorageSpec(name="scratch", kind="ramdisk", size="16Mi"),
            StorageSpec(name="repo", kind="git", url=make_repo(tmp_path / "origin")),
        ],
        bundle=BundleSpec(
            name="greet",
            packages=[BundlePackage(name="Greeter", uuid=GREETER_UUID, path=str(pkg))],
        ),
        image=ImageSpec(
            name=image_name,
            base=julia_image,
            files={"/etc/motd": str(tmp_path / "motd")},
            labels=labels,
        ),
    )


def expected_lines(cluster: str) -> list[str]:
    """What the job prints on ``cluster`` — and no "Precompiling": the bundle's cache was used.
    On local the image is ignored (jobs run on the host), so there is no motd line."""
    motd = [] if cluster == "local" else [MOTD]
    return [*motd, "from ramdisk", "from git", "hello world! mean=2.0"]
