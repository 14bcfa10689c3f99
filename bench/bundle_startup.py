"""Start-up of a job that loads a bundled package: with the precompiled bundle vs the same
job on an empty depot (which compiles the package on every start), on the local backend.

    .venv/bin/python bench/bundle_startup.py [--rounds 3] [--functions 400]

Builds a bundle of a generated local package (``--functions`` methods) plus Statistics with the
real builder job, checks its ``.ji`` cache exists, then alternates the two jobs and prints the
median seconds from submit to success for each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

UUID = "0b5e2c1a-6a8e-4f4e-9a55-2f1f9f3c7d11"


def make_package(root: Path, functions: int) -> Path:
    pkg = root / "Heavy"
    (pkg / "src").mkdir(parents=True)
    (pkg / "Project.toml").write_text(
        f'name = "Heavy"\nuuid = "{UUID}"\nversion = "0.1.0"\n\n'
        '[deps]\nStatistics = "10745b16-79ce-11e8-11f9-7d13ad32a3b2"\n'
    )
    body = ["module Heavy", "using Statistics", "export total"]
    for i in range(functions):
        body.append(
            f"function f{i}(x::Vector{{Float64}})\n"
            f"    s = 0.0\n    for (j, v) in enumerate(x)\n"
            f"        s += isodd(j) ? v * {i} : mean(x) - v / {i + 1}\n    end\n"
            f"    return s\nend\nprecompile(f{i}, (Vector{{Float64}},))"
        )
    body.append("total(x) = " + " + ".join(f"f{i}(x)" for i in range(min(functions, 50))))
    body.append("end")
    (pkg / "src" / "Heavy.jl").write_text("\n".join(body) + "\n")
    return pkg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--functions", type=int, default=400)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="juliarun-bench-bundle-"))
    os.environ["JULIARUN_HOME"] = str(work / "home")
    os.environ.setdefault("JULIARUN_POLL_INTERVAL", "0.05")

    from juliarun.backends.base import wait_for_job
    from juliarun.backends.local import LocalBackend
    from juliarun.builders.bundles import build_bundle
    from juliarun.specs import BundlePackage, BundleSpec, JuliaBatch, StorageSpec

    backend = LocalBackend(work / "home")
    pkg = make_package(work, args.functions)
    spec = BundleSpec(
        name="heavy",
        packages=[BundlePackage(name="Heavy", uuid=UUID, path=str(pkg)), "Statistics"],
    )
    t0 = time.perf_counter()
    built = build_bundle(spec, backend)
    print(
        f"bundle build (builder job): {time.perf_counter() - t0:.1f} s, compiled {built.compiled}"
    )
    caches = list((built.path / "depot" / "compiled" / "v1.5" / "Heavy").glob("*.ji"))
    assert caches, "no .ji cache in the bundle"
    print(f"cache: {caches[0]} ({caches[0].stat().st_size} bytes)")

    code = work / "code"
    code.mkdir()
    (code / "main.jl").write_text("using Heavy\nprintln(total(collect(1.0:10.0)))\n")
    storage = {"code": StorageSpec(name="code", kind="host", path=str(code))}

    def run(bundled: bool) -> float:
        name = f"{'bundled' if bundled else 'empty'}-{uuid.uuid4().hex[:6]}"
        if bundled:
            job = JuliaBatch(name, "/mnt/code/main.jl", "code", pkg_bundle="heavy")
        else:  # the same environment, on a fresh empty depot: compiles Heavy at start
            depot = Path(tempfile.mkdtemp(dir=work, prefix="depot-"))
            env = {"JULIA_DEPOT_PATH": f"{depot}:", "JULIA_PROJECT": f"{built.root}/env"}
            job = JuliaBatch(name, "/mnt/code/main.jl", "code", env=env)
        start = time.perf_counter()
        backend.submit(job, storage)
        status = wait_for_job(backend, name, poll_interval=0.05)
        elapsed = time.perf_counter() - start
        assert status.phase == "succeeded", status.describe()
        backend.delete(name)
        return elapsed

    bundled, empty = [], []
    for _ in range(args.rounds):
        bundled.append(run(bundled=True))
        empty.append(run(bundled=False))
    b, e = statistics.median(bundled), statistics.median(empty)
    print(f"rounds={args.rounds} functions={args.functions}")
    print(f"job on the precompiled bundle: median {b:6.2f} s")
    print(f"job on an empty depot        : median {e:6.2f} s")
    print(f"ratio empty/bundled: {e / b:.2f}x  (bundle saves {e - b:.2f} s per start)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
