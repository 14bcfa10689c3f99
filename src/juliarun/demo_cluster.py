"""The talk's cluster-autoscaler demo, on a Kubernetes cluster whose kwok runs simulated nodes
(the test cluster): a parallel job larger than the cluster makes nodes of a pool appear, runs,
ends, and the nodes go; with headroom kept, a second job starts at once, without waiting for a
node."""

from __future__ import annotations

import sys
import time
import uuid
from datetime import timedelta
from typing import TextIO

from juliarun import api
from juliarun.clusterscaler import ClusterScaler, ScaleStep
from juliarun.errors import JuliaRunError
from juliarun.scaling.planner import Headroom
from juliarun.specs import JuliaParBatchWorkers, NodePool


def _workers(name: str, pool: NodePool, n: int, seconds: int) -> JuliaParBatchWorkers:
    # kwok keeps a pod of a simulated node running for KWOK_RUN_FOR (the simulated work)
    return JuliaParBatchWorkers(
        name,
        "/opt/none.jl",
        nworkers=n,
        env={"KWOK_RUN_FOR": f"{seconds}s"},
        resources={
            "cpu": "2",
            "memory": "1Gi",
            "node_type": "highcpu",
            "node_labels": {"juliarun.io/pool": pool.name},
        },
    )


def run(
    out: TextIO | None = None,
    *,
    cluster: str = "kubernetes",
    workers: int = 8,
    seconds: int = 20,
    interval: float = 2.0,
    timeout: float = 300.0,
) -> dict[str, int]:
    """Run the demo; returns what it saw (``most_nodes``, ``final_nodes``, ``next_at_once``:
    1 when the second job ran on nodes that were there before it, with no scaler loop)."""
    out = out or sys.stdout

    def say(text: str) -> None:
        print(f"\n>>> {text}", file=out, flush=True)

    def show(step: ScaleStep) -> None:
        for pool, names in step.added.items():
            print(f"adding {len(names)} node(s) to {pool}: {', '.join(names)}", file=out)
        for node in step.removed:
            print(f"removing node {node}: {step.reasons()[node]}", file=out)

    ctx = api.init(cluster)
    pool = NodePool(
        name=f"demo-{uuid.uuid4().hex[:4]}",
        node_type="highcpu",
        cpu="4",
        memory="16Gi",
        min=0,
        max=10,
    )
    say(
        f"pool = NodePool(name={pool.name!r}, node_type='highcpu', cpu='4', memory='16Gi', "
        "min=0, max=10, provider='kwok')"
    )
    scaler = ClusterScaler(
        ctx,
        [pool],
        headroom={pool.name: Headroom.of(pods=2, pod_cpu="2", pod_memory="1Gi")},
        unneeded_after=timedelta(seconds=0),
        on_step=show,
    )
    deadline = time.monotonic() + timeout

    most = 0

    def until(what: str, done: object) -> None:
        nonlocal most
        while not done():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise JuliaRunError(f"the demo timed out waiting for {what}")
            scaler.step()
            most = max(most, nodes())
            time.sleep(interval)

    def nodes() -> int:
        return len(scaler.provider(pool.name).nodes(pool))

    big = _workers("big", pool, workers, seconds)
    say(
        f"submit(ctx, JuliaParBatchWorkers('big', nworkers={workers}, cpu='2', "
        "node_type='highcpu'))  # more than the cluster has"
    )
    api.submit(ctx, big)
    at_once = False
    try:
        until("every worker of the big job to run", lambda: str(api.status(ctx, big)) == "running")
        print(f"big: {api.status(ctx, big)}, {workers} workers on {nodes()} node(s)", file=out)
        until("the big job to end", lambda: api.status(ctx, big).done)
        print(f"big: {api.status(ctx, big)}", file=out)
        api.delete(ctx, big, force=True)

        say("submit(ctx, JuliaParBatchWorkers('next', nworkers=2, ...))  # headroom: no wait")
        nxt = _workers("next", pool, 2, seconds)
        api.submit(ctx, nxt)
        # no scaler step until it runs: it can only run on room that was already there
        before = nodes()
        started = time.monotonic()
        while api.status(ctx, nxt).phase != "running":
            if time.monotonic() > deadline:
                raise JuliaRunError("the second job did not start on the headroom")
            time.sleep(0.5)
        at_once = nodes() == before
        print(
            f"next: running {time.monotonic() - started:.1f}s after submit, on the "
            f"{before} node(s) already there (no scale-up)",
            file=out,
        )
        api.delete(ctx, nxt, force=True)
        say("the jobs are done: the nodes go, down to the pool's minimum")
        scaler.headroom = None
        until("the nodes to go", lambda: nodes() == pool.min)
        final = nodes()
    finally:
        provider = scaler.provider(pool.name)
        provider.delete_nodes(pool, provider.nodes(pool))
        ctx.close()
    print(f"\nnodes rose to {most} and came back to {final}", file=out, flush=True)
    return {"most_nodes": most, "final_nodes": final, "next_at_once": int(at_once)}
