"""run_pipeline cold (bundle and image built) vs re-run with nothing changed (both builds come
from the Prefect cache), on the Docker cluster with a local Julia package bundle and an image
``FROM`` the Julia image.

    eval "$(scripts/testenv env)"; .venv/bin/python bench/pipeline_rerun.py [--reruns 3]

Needs the Docker engine, the registry, JULIARUN_JULIA_IMAGE and PREFECT_API_URL. Prints the
cold time, the median re-run time and their ratio, and the same for the build steps alone (the
bundle's and the image's tasks inside the pipeline run: goal, a re-run's steps take at most 5 %
of their cold time); removes the images it made (by label).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

UUID = "6d3f3b7a-3c1e-4b7e-9a5e-1f2e3d4c5b6a"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reruns", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="juliarun-bench-pipeline-"))
    run_id = uuid.uuid4().hex[:12]
    labels = {"app.kubernetes.io/managed-by": "juliarun", "juliarun.io/bench": run_id}
    os.environ["JULIARUN_HOME"] = str(work / "home")
    os.environ["JULIARUN_DOCKER_LABELS"] = json.dumps(labels)
    os.environ.setdefault("JULIARUN_POLL_INTERVAL", "0.1")
    julia_image = os.environ["JULIARUN_JULIA_IMAGE"]
    registry = os.environ.get("JULIARUN_REGISTRY", "localhost:5000")

    import docker

    import juliarun
    from juliarun.flows import builds, run_pipeline

    steps: list[float] = []  # seconds in the build steps of the current run

    def timed(fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                steps.append(time.perf_counter() - t0)

        return wrapper

    builds.bundle_steps = timed(builds.bundle_steps)  # type: ignore[method-assign]
    builds.image_steps = timed(builds.image_steps)  # type: ignore[method-assign]
    from juliarun.specs import BundlePackage, BundleSpec, ImageSpec, StorageSpec

    pkg = work / "Greeter"
    (pkg / "src").mkdir(parents=True)
    (pkg / "Project.toml").write_text(f'name = "Greeter"\nuuid = "{UUID}"\nversion = "0.1.0"\n')
    (pkg / "src" / "Greeter.jl").write_text('module Greeter\ngreet() = "hello world!"\nend\n')
    code = work / "code"
    code.mkdir()
    (code / "main.jl").write_text("using Greeter\nprintln(Greeter.greet())\n")
    (work / "motd").write_text(f"bench {run_id}\n")
    kwargs = {
        "storage": [StorageSpec(name="code", kind="host", path=str(code))],
        "bundle": BundleSpec(
            name="greet", packages=[BundlePackage(name="Greeter", uuid=UUID, path=str(pkg))]
        ),
        "image": ImageSpec(
            name="juliarun/bench-pipeline",
            base=julia_image,
            files={"/etc/motd": str(work / "motd")},
            labels=labels,
        ),
        "cluster": "docker",
        "registry": registry,
        "timeout": 600,
    }
    ctx = juliarun.init("docker")

    def once(i: int) -> tuple[float, float]:
        job = juliarun.JuliaBatch(f"bench-{run_id}-{i}", "/mnt/code/main.jl", "code")
        steps.clear()
        start = time.perf_counter()
        result = run_pipeline(job, **kwargs)
        elapsed = time.perf_counter() - start
        assert result["status"] == "succeeded", result
        juliarun.delete(ctx, job.name)
        return elapsed, sum(steps)

    try:
        cold, cold_steps = once(0)
        runs = [once(i + 1) for i in range(args.reruns)]
    finally:
        ctx.close()
        client = docker.from_env()
        for image in client.images.list(filters={"label": f"juliarun.io/bench={run_id}"}):
            client.images.remove(image.id, force=True)
        client.close()
        shutil.rmtree(work, ignore_errors=True)
    rerun = statistics.median(r for r, _ in runs)
    rerun_steps = statistics.median(s for _, s in runs)
    print(f"cold run (bundle + image built): {cold:6.2f} s (build steps {cold_steps:6.2f} s)")
    print(
        f"re-run, nothing changed        : median {rerun:6.2f} s "
        f"(build steps {rerun_steps:6.3f} s) over {args.reruns}"
    )
    print(f"ratio cold/re-run: {cold / rerun:.2f}x  (re-run saves {cold - rerun:.2f} s)")
    print(f"build steps, re-run / cold: {100 * rerun_steps / cold_steps:.1f} %  (goal <= 5 %)")


if __name__ == "__main__":
    main()
