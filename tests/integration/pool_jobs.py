"""Jobs for the node-pool tests on kwok: workers that ask for 2 cpu of a pool's highcpu nodes
and that kwok keeps running (``KWOK_RUN_FOR``) until they are deleted."""

from __future__ import annotations

from typing import Any

from juliarun.specs import JuliaParBatchWorkers, NodePool


def pool_workers(
    name: str, pool: NodePool, n: int, *, run_for: str = "600s", **extra: Any
) -> JuliaParBatchWorkers:
    """``n`` workers of 2 cpu / 1Gi on ``pool``'s highcpu nodes, running for ``run_for``."""
    return JuliaParBatchWorkers(
        name,
        "/opt/none.jl",
        nworkers=n,
        env={"KWOK_RUN_FOR": run_for},
        resources={
            "cpu": "2",
            "memory": "1Gi",
            "node_type": "highcpu",
            "node_labels": {"juliarun.io/pool": pool.name},
        },
        **extra,
    )
