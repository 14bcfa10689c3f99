"""Overhead of the run_job Prefect flow over calling the local backend directly, for a trivial
job (``true``), measured in one process: the baseline and the flow alternate, N rounds each.

    .venv/bin/python bench/run_job_overhead.py [--rounds 10]

Prints the median seconds per job for the backend called directly, for run_job as juliarun
calls it in-process (no flow-run heartbeat: see ``juliarun.flows._flow``), and for run_job with
a heartbeat frequency the user chose (Prefect's heartbeat thread sleeps in whole seconds and
is joined when the run ends, so such a run waits for the rest of that second), and their
ratios, and the load average before and after. Goal: run_job's overhead over the backend called
directly at most 150 ms per job. Uses PREFECT_API_URL when set (scripts/testenv env), else
Prefect's temporary local server.

Both sides poll the job's status every 10 ms (JULIARUN_POLL_INTERVAL=0.01 unless set): a
trivial job ends ~300 ms after its submit, and with a coarser poll each side sees the end at
its next poll, so the difference moves by up to a poll interval with where the two grids fall
(with 50 ms polls, following the same trivial job took a steady 306 ms in one process and
356 ms in the next, and this benchmark measured +156 ms; the flow's first status read comes
~8 ms after the direct one's, behind the submit task's end).

Measured 2026-12-04 against the test environment's Prefect server, on 2 cores shared with other
work (the overhead follows the load: most of it is the Prefect API's answers), 30 rounds:

    load 1.1-1.6, three runs: +126 ms, +125 ms, +124 ms (direct 362 ms, run_job ~488 ms)

Where it goes (a timeline of one run, median of 20): 55-60 ms before the flow's body (five API
calls: the flow, the flow run, its name, Running, the run read back), ~3 ms to start each task
and ~7 ms between the two, ~6 ms more for the end (the worker table's artifact beside the
deletion) and ~20 ms after the body (the Completed state). The rest is Prefect's own; the job's
lines and events cost nothing measurable (emitting no events changed nothing).
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
    os.environ.setdefault("JULIARUN_POLL_INTERVAL", "0.01")  # see above: finer than the job

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

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

    def flow(name: str) -> float:
        t0 = time.perf_counter()
        result = run_job(juliarun.Batch(name, command=["true"]), delete_after=True)
        assert result["status"] == "succeeded", result
        return time.perf_counter() - t0

    def heartbeat(name: str) -> float:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
            return flow(name)

    load_before = os.getloadavg()[0]
    direct(-1)  # warm-up: imports, SQLite files
    flow("flow-warm")  # warm-up: Prefect client / temporary server
    base, orchestrated, with_heartbeat = [], [], []
    for i in range(args.rounds):
        base.append(direct(i))
        orchestrated.append(flow(f"flow-{i}"))
        with_heartbeat.append(heartbeat(f"heartbeat-{i}"))
    b = statistics.median(base)
    o = statistics.median(orchestrated)
    h = statistics.median(with_heartbeat)
    load_after = os.getloadavg()[0]
    print(f"rounds={args.rounds} poll_interval={poll}s load={load_before:.2f}..{load_after:.2f}")
    print(f"backend directly          : median {b * 1000:8.1f} ms per job")
    print(f"run_job                   : median {o * 1000:8.1f} ms per job")
    print(f"run_job, user's heartbeat : median {h * 1000:8.1f} ms per job")
    print(f"ratio run_job/direct      : {o / b:.2f}x  (overhead {1000 * (o - b):.0f} ms per job)")
    print(f"ratio heartbeat/direct    : {h / b:.2f}x  (overhead {1000 * (h - b):.0f} ms per job)")


if __name__ == "__main__":
    main()
