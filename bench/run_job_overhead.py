"""Overhead of the run_job Prefect flow over calling the local backend directly, for a trivial
job (``true``), measured in one process: the baseline and the flow alternate, N rounds each.

    .venv/bin/python bench/run_job_overhead.py [--rounds 10]

Prints the median seconds per job for both and their ratio. Uses PREFECT_API_URL when set
(scripts/testenv env), else Prefect's temporary local server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="juliarun-bench-")
    os.environ["JULIARUN_HOME"] = home
    os.environ.setdefault("JULIARUN_POLL_INTERVAL", "0.05")

    import juliarun
    from juliarun.backends.base import wait_for_job
    from juliarun.flows import run_job

    ctx = juliarun.init()
    poll = ctx.settings.poll_interval

    def direct(i: int) -> float:
        t0 = time.perf_counter()
        job = juliarun.Batch(f"direct-{i}", command=["true"])
        ctx.backend.submit(job, {})
        status = wait_for_job(ctx.backend, job.name, poll_interval=poll)
        assert status.phase == "succeeded", status
        ctx.backend.delete(job.name)
        return time.perf_counter() - t0

    def flow(i: int) -> float:
        t0 = time.perf_counter()
        result = run_job(juliarun.Batch(f"flow-{i}", command=["true"]), delete_after=True)
        assert result["status"] == "succeeded", result
        return time.perf_counter() - t0

    direct(-1)  # warm-up: imports, SQLite files
    flow(-1)  # warm-up: Prefect client / temporary server
    base, orchestrated = [], []
    for i in range(args.rounds):
        base.append(direct(i))
        orchestrated.append(flow(i))
    b, o = statistics.median(base), statistics.median(orchestrated)
    print(f"rounds={args.rounds} poll_interval={poll}s")
    print(f"backend directly : median {b * 1000:8.1f} ms per job")
    print(f"run_job flow     : median {o * 1000:8.1f} ms per job")
    print(f"ratio flow/direct: {o / b:.2f}x  (overhead {1000 * (o - b):.0f} ms per job)")


if __name__ == "__main__":
    main()
