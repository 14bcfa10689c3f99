"""The seed's session on the embedded default, run through the ``run_job`` Prefect flow."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TextIO

from juliarun import api
from juliarun.errors import JobNotFoundError
from juliarun.specs import JuliaBatch, JuliaParBatchWorkers

HELLOWORLD = 'println("hello world!")\n'
WORKER = """\
include(ENV["JULIARUN_JL"])
id = ENV["JULIARUN_WORKER"]
for item in 1:3
    println("$id processed item $item")
    JuliaRun.record("items_processed", 1; stage="demo")
end
println("$id done")
"""


def write_scripts(root: Path) -> None:
    """The demo's Julia scripts, as the seed lays them out under its storage."""
    (root / "helloworld").mkdir(parents=True, exist_ok=True)
    (root / "helloworld" / "helloworld.jl").write_text(HELLOWORLD)
    (root / "workers").mkdir(parents=True, exist_ok=True)
    (root / "workers" / "worker.jl").write_text(WORKER)


def run(out: TextIO | None = None) -> None:
    """Run the seed's session: cluster status, a helloworld batch and 3 parallel workers, each
    through the ``run_job`` flow, then status, tail and delete."""
    from juliarun.flows import run_job

    out = out or sys.stdout
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"\n>>> {text}", file=out, flush=True)

    ctx = api.init()
    root = ctx.settings.home / "demo" / "juliarun"
    write_scripts(root)
    api.define_storage(ctx, name="juliarun", kind="host", path=str(root))
    for leftover in ("helloworld", "workers"):
        with contextlib.suppress(JobNotFoundError):
            api.delete(ctx, leftover, force=True)

    say("ctx = juliarun.init(); juliarun.status(ctx, verbose=True)")
    api.status(ctx, verbose=True, out=out)

    say('job = JuliaBatch("helloworld", "/mnt/juliarun/helloworld/helloworld.jl", "juliarun")')
    job = JuliaBatch("helloworld", "/mnt/juliarun/helloworld/helloworld.jl", "juliarun")
    say("run_job(job)  # the Prefect flow: storage, submit, stream lines, summary artifact")
    run_job(job)
    say("juliarun.list(ctx)")
    print(api.list(ctx), file=out)
    say("juliarun.status(ctx, job)")
    print(api.status(ctx, job), file=out)
    say("juliarun.tail(ctx, job=job)")
    api.tail(ctx, job=job, out=out)
    say("juliarun.delete(ctx, job)")
    print(api.delete(ctx, job), file=out)

    say(
        'workers = JuliaParBatchWorkers("workers", "/mnt/juliarun/workers/worker.jl", '
        '"juliarun", nworkers=3, cpu="500m", memory="1Gi")'
    )
    workers = JuliaParBatchWorkers(
        "workers",
        "/mnt/juliarun/workers/worker.jl",
        "juliarun",
        nworkers=3,
        cpu="500m",
        memory="1Gi",
    )
    say("run_job(workers)")
    run_job(workers)
    say("juliarun.status(ctx, workers, verbose=True)")
    api.status(ctx, workers, verbose=True, out=out)
    say("juliarun.tail(ctx, job=workers)")
    api.tail(ctx, job=workers, out=out)
    say('juliarun.metrics(ctx, "items_processed", agg="sum", group_by=("worker",))')
    for row in api.metrics(
        ctx, "items_processed", agg="sum", group_by=("worker",), tags={"job": "workers"}
    ):
        print(f"{row.group['worker']}: {row.value:g}", file=out)
    say("juliarun.delete(ctx, workers, force=True)")
    print(api.delete(ctx, workers, force=True), file=out)
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s", file=out)
    ctx.close()
