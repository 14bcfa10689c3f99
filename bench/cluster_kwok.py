"""From 500 pending pods to all running, on the test cluster's kwok nodes (real apiserver, real
kube-scheduler, real job controller): the cluster autoscaler (:class:`juliarun.ClusterScaler`
making the nodes of a pool) against, in the same run, the scheduler with the autoscaler off (the
pool at its minimum: most pods stay pending; how many run is reported) and a fixed cluster
over-provisioned before the jobs come (the floor: job controller + scheduler + kwok, no node to
wait for).

    PYTHONPATH=src .venv/bin/python bench/cluster_kwok.py [--pods 500] [--jobs 10]
        [--variants fixed scaler off [fixed-gated scaler-gated off-gated]] [--interval 2]
        [--off-wait 45]

Needs ``scripts/testenv up kubernetes kwok``. Every variant has its own namespace
(``cluster-kb-<id>-<variant>``) and node pool (``cluster-<id>-<variant>``: 4 cpu / 16Gi nodes
of type highcpu, min 2, max 100); its pods ask 500m / 1Gi (8 per node) and select the pool, so
variants never share nodes. Namespaces and nodes are deleted at the end, also on failure.

The clock starts when the last job is submitted (``t=0``); ``created`` is when all pods exist
(the job controller's share, the same in every variant), ``running`` when all run; ``after
created`` is the time from all pods pending to all running. ``-gated`` variants run the jobs
with juliarun's placement (``JULIARUN_KUBE_PLACEMENT=juliarun``: every pod gated until its
whole job fits) and start the autoscaler (or, without one, the placement controller) only once
all pods exist: a clean start from N pending pods, nothing running before. Wall-clock numbers
are printed, never asserted.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from kubernetes import client, config

from juliarun import api
from juliarun.clusterscaler import ClusterScaler
from juliarun.providers.kwok import KwokProvider
from juliarun.specs import JuliaParBatchWorkers, NodePool

KUBECONFIG = os.environ.get("JULIARUN_KUBECONFIG") or str(
    Path.home() / ".cache" / "juliarun" / "kubernetes" / "admin.kubeconfig"
)
POD_CPU, POD_MEMORY = "500m", "1Gi"
NODE_CPU, NODE_MEMORY, PER_NODE = "4", "16Gi", 8
MIN_NODES = 2


@dataclass
class Result:
    variant: str
    pods: int
    nodes_before: int
    created: float | None = None
    running_at: float | None = None
    running: int = 0
    nodes_after: int = 0
    loops: int = 0
    added: int = 0
    loop_ms: list[float] = field(default_factory=list)
    first_node_ready: float | None = None


def wait_for(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    ends = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > ends:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def ready(node: client.V1Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.id = uuid.uuid4().hex[:5]
        config.load_kube_config(KUBECONFIG)
        self.core = client.CoreV1Api()

    def pool(self, variant: str) -> NodePool:
        return NodePool(
            name=f"cluster-{self.id}-{variant}",
            node_type="highcpu",
            cpu=NODE_CPU,
            memory=NODE_MEMORY,
            min=MIN_NODES,
            max=100,
        )

    def pool_nodes(self, pool: NodePool) -> list[client.V1Node]:
        return list(self.core.list_node(label_selector=f"juliarun.io/pool={pool.name}").items)

    @contextmanager
    def namespace(self, variant: str) -> Iterator[str]:
        name = f"cluster-kb-{self.id}-{variant}"
        self.core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=name, labels={"app.kubernetes.io/managed-by": "juliarun"}
                )
            )
        )
        try:
            wait_for(
                lambda: bool(self.core.list_namespaced_service_account(name).items),
                60,
                "the default service account",
            )
            yield name
        finally:
            self.core.delete_namespace(
                name, propagation_policy="Background", grace_period_seconds=0
            )

    def jobs(self, pool: NodePool) -> list[JuliaParBatchWorkers]:
        n, k = self.args.pods, self.args.jobs
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        return [
            JuliaParBatchWorkers(
                f"load-{i}",
                "/opt/none.jl",
                nworkers=size,
                env={"KWOK_RUN_FOR": "900s"},
                resources={
                    "cpu": POD_CPU,
                    "memory": POD_MEMORY,
                    "node_type": "highcpu",
                    "node_labels": {"juliarun.io/pool": pool.name},
                },
            )
            for i, size in enumerate(sizes)
        ]

    def run(self, variant: str) -> Result:
        pool = self.pool(variant)
        need = math.ceil(self.args.pods / PER_NODE)
        fixed = variant.removesuffix("-gated") == "fixed"
        before = math.ceil(need * 1.25) if fixed else MIN_NODES
        os.environ["JULIARUN_KUBECONFIG"] = KUBECONFIG
        with self.namespace(variant) as ns:
            os.environ["JULIARUN_KUBE_NAMESPACE"] = ns
            if variant.endswith("-gated"):
                os.environ["JULIARUN_KUBE_PLACEMENT"] = "juliarun"
            ctx = api.init("kubernetes")
            provider = KwokProvider(ctx.backend.client)
            try:
                provider.create_nodes(pool, [pool.node_name(i) for i in range(before)])
                wait_for(
                    lambda: sum(ready(n) for n in self.pool_nodes(pool)) == before,
                    180,
                    f"{before} ready nodes",
                )
                return self._measure(variant, ctx, pool, ns, before)
            finally:
                provider.delete_nodes(pool, provider.nodes(pool))
                ctx.close()

    def _measure(self, variant: str, ctx: Any, pool: NodePool, ns: str, before: int) -> Result:
        gated = variant.endswith("-gated")
        base = variant.removesuffix("-gated")
        ends: list[float] = []
        scaler = None
        if base == "scaler":
            scaler = ClusterScaler(
                ctx,
                [pool],
                interval=self.args.interval,
                unneeded_after=timedelta(minutes=30),
                on_step=lambda _: ends.append(time.monotonic()),
            )
        # gated jobs wait for juliarun's placement: the scaler's loop places them, or else the
        # placement controller alone
        placer = ctx.backend.placement_controller(interval=1.0) if gated and not scaler else None
        jobs = self.jobs(pool)
        for job in jobs:
            api.submit(ctx, job)
        t0 = time.monotonic()
        out = Result(variant, self.args.pods, before)
        started = False
        give_up = t0 + (self.args.off_wait if base == "off" else self.args.timeout)
        try:
            while time.monotonic() < give_up:
                pods = self.core.list_namespaced_pod(ns).items
                now = time.monotonic() - t0
                out.running = sum(1 for p in pods if p.status.phase == "Running")
                if out.created is None and len(pods) >= self.args.pods:
                    out.created = now
                # ungated: the autoscaler runs as the jobs come; gated: from 500 pending pods
                if not started and (not gated or out.created is not None):
                    for controller in (scaler, placer):
                        if controller is not None:
                            controller.start()
                    started = True
                if out.first_node_ready is None and scaler is not None:
                    new = [
                        n
                        for n in self.pool_nodes(pool)
                        if ready(n) and int(n.metadata.name.rsplit("-", 1)[-1]) >= before
                    ]
                    if new:
                        out.first_node_ready = now
                if out.running >= self.args.pods:
                    out.running_at = now
                    break
                time.sleep(0.5)
        finally:
            for controller in (scaler, placer):
                if controller is not None:
                    controller.stop()
            if scaler is not None:
                out.loops = len(scaler.steps)
                out.added = sum(len(v) for s in scaler.steps for v in s.added.values())
            for job in jobs:
                api.delete(ctx, job, force=True)
            os.environ.pop("JULIARUN_KUBE_PLACEMENT", None)
        out.nodes_after = len(self.pool_nodes(pool))
        out.loop_ms = [(b - a) * 1000 for a, b in itertools.pairwise(ends)]
        return out


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:6.1f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=["fixed", "scaler", "off"])
    parser.add_argument("--interval", type=float, default=2.0, help="scaler loop, seconds")
    parser.add_argument("--off-wait", type=float, default=45.0, help="seconds, autoscaler off")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    bench = Bench(args)
    need = math.ceil(args.pods / PER_NODE)
    print(
        f"{args.pods} pods of {POD_CPU} cpu / {POD_MEMORY} in {args.jobs} JuliaParBatchWorkers "
        f"jobs, on {NODE_CPU}-cpu / {NODE_MEMORY} kwok nodes ({PER_NODE} pods a node: {need} "
        f"nodes needed); scaler interval {args.interval:g}s; load {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores; run {bench.id}"
    )
    results = []
    for variant in args.variants:
        started = time.monotonic()
        results.append(bench.run(variant))
        print(f"  {variant}: done in {time.monotonic() - started:.0f}s (with set-up and clean-up)")
    fixed = {r.variant.removeprefix("fixed"): r for r in results if r.variant.startswith("fixed")}
    print()
    print(
        f"{'variant':12} | {'nodes before':>12} {'after':>5} | {'all created':>11} "
        f"{'all running':>11} {'after created':>13} {'running':>9} | {'vs fixed':>8} | scaler"
    )
    for r in results:
        base = fixed.get("-gated" if r.variant.endswith("-gated") else "")
        ratio = (
            f"x{r.running_at / base.running_at:6.2f}"
            if base and base.running_at and r.running_at
            else f"{'-':>7}"
        )
        extra = ""
        if r.variant.startswith("scaler"):
            gap = statistics.median(r.loop_ms) / 1000 if r.loop_ms else args.interval
            extra = (
                f"{r.loops} loops (one takes ~{max(gap - args.interval, 0):.1f}s), {r.added} "
                f"nodes added, first new node ready {fmt(r.first_node_ready).strip()}"
            )
        after = r.running_at - r.created if r.running_at is not None and r.created else None
        print(
            f"{r.variant:12} | {r.nodes_before:>12} {r.nodes_after:>5} | {fmt(r.created):>11} "
            f"{fmt(r.running_at):>11} {fmt(after):>13} {r.running:>4}/{r.pods:<4} | {ratio:>8} | "
            f"{extra}"
        )


if __name__ == "__main__":
    main()
