"""One loop of the cluster planner (juliarun.scaling.planner.plan) on a generated cluster, against
first-fit decreasing (the in-process baseline: what cluster-autoscaler's estimator does) on the
same input, and against the lower bound (requests summed over a node's size, per resource, per
pool).

    PYTHONPATH=src .venv/bin/python bench/cluster_planner.py [--seed 11] [--nodes 1000]
        [--pods 30000] [--pending 0.2] [--rounds 3]

Scenarios, all generated deterministically from the seed:

- ``steady``: ``--nodes`` nodes in four pools, ``--pods`` pods of which ``--pending`` are pending
  (new jobs) and the rest run where a spreading scheduler put them, after some jobs ended (so
  some nodes are nearly empty: scale-down candidates);
- ``empty``: the same pods all pending on a cluster with no nodes (pure packing quality).

Goals (issue 11): a loop <= 1 s; nodes chosen <= 1.10 x the lower bound; never more new nodes
than first-fit decreasing. Wall-clock numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from juliarun.scaling.placement import NODE_TYPE_LABEL, Node, Pod, Resources, Taint, Toleration
from juliarun.scaling.planner import PoolShape, first_fit_decreasing, lower_bound, plan

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def pool(name: str, cpu: str, memory: str, gpu: int, price: float, max_nodes: int) -> PoolShape:
    return PoolShape.of(
        name,
        node_type=name,
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        taints=(Taint(NODE_TYPE_LABEL, name, "NoSchedule"),),
        max=max_nodes,
        price=price,
    )


def pools(max_nodes: int) -> list[PoolShape]:
    return [
        pool("highcpu", "32", "64Gi", 0, 1.36, max_nodes),
        pool("standard", "16", "64Gi", 0, 0.77, max_nodes),
        pool("highmem", "16", "128Gi", 0, 1.01, max_nodes),
        pool("gpu", "32", "256Gi", 8, 12.0, max_nodes),
    ]


# share of the nodes per pool, and the worker shapes (cpu, memory, gpu) jobs of the pool ask for
MIX: dict[str, tuple[float, list[tuple[str, str, int]]]] = {
    "highcpu": (
        0.30,
        [("250m", "256Mi", 0), ("500m", "512Mi", 0), ("1", "1Gi", 0), ("2", "2Gi", 0)],
    ),
    "standard": (
        0.45,
        [("100m", "256Mi", 0), ("250m", "1Gi", 0), ("500m", "2Gi", 0), ("1", "4Gi", 0)],
    ),
    "highmem": (0.20, [("250m", "2Gi", 0), ("500m", "4Gi", 0), ("1", "8Gi", 0)]),
    "gpu": (0.05, [("2", "16Gi", 1), ("4", "32Gi", 1), ("8", "64Gi", 2)]),
}
WORKERS = [1, 2, 4, 8, 8, 16, 16, 32, 64]


def jobs(rng: random.Random, total: int, prefix: str) -> list[list[Pod]]:
    """Jobs of workers until ``total`` pods."""
    names = list(MIX)
    weights = [MIX[n][0] for n in names]
    out: list[list[Pod]] = []
    count = 0
    while count < total:
        kind = rng.choices(names, weights)[0]
        cpu, memory, gpu = rng.choice(MIX[kind][1])
        workers = min(rng.choice(WORKERS), total - count)
        job = f"{prefix}{len(out)}"
        requests = Resources.of(cpu=cpu, memory=memory, gpu=gpu)
        tol = (Toleration(NODE_TYPE_LABEL, "Equal", kind, "NoSchedule"),)
        out.append(
            [
                Pod(
                    f"{job}-{i}",
                    requests=requests,
                    job=job,
                    namespace="bench",
                    node_selector={NODE_TYPE_LABEL: kind},
                    tolerations=tol,
                    gated=True,
                )
                for i in range(workers)
            ]
        )
        count += workers
    return out


def steady(seed: int, n_nodes: int, n_pods: int, pending_share: float) -> Any:
    """A running cluster: nodes per pool, running pods spread (most free first, as the default
    scheduler scores), a fifth of the running jobs of one pool ended, and new pending jobs."""
    rng = random.Random(seed)
    shapes = pools(max_nodes=4 * n_nodes)
    by_name = {p.name: p for p in shapes}
    nodes: list[Node] = []
    for name, (share, _) in MIX.items():
        for k in range(round(n_nodes * share)):
            nodes.append(by_name[name].template(by_name[name].node_name(k)))
    n_pending = int(n_pods * pending_share)
    running_jobs = jobs(rng, n_pods - n_pending, "run")
    free = {n.name: n.allocatable for n in nodes}
    per_type: dict[str, list[Node]] = {}
    for n in nodes:
        per_type.setdefault(n.labels[NODE_TYPE_LABEL], []).append(n)
    pods: list[Pod] = []
    for job in running_jobs:
        kind = job[0].node_selector[NODE_TYPE_LABEL]
        for p in job:
            # most free cpu first (LeastAllocated); pods that find no room stay pending
            candidates = [n for n in per_type[kind] if p.requests.fits_in(free[n.name])]
            if not candidates:
                pods.append(p)
                continue
            best = max(candidates, key=lambda n: (free[n.name].cpu, n.name))
            free[best.name] = free[best.name] - p.requests
            pods.append(_on(p, best.name))
    # jobs of the highmem pool end: their nodes empty out (scale-down candidates)
    ended = {j[0].job for j in running_jobs if j[0].node_selector[NODE_TYPE_LABEL] == "highmem"}
    ended = {j for j in sorted(ended) if rng.random() < 0.6}
    pods = [p for p in pods if p.job not in ended]
    for job in jobs(rng, n_pods - len(pods), "new"):
        pods.extend(job)
    return nodes, pods, shapes


def _on(p: Pod, node: str) -> Pod:
    return Pod(
        p.name,
        requests=p.requests,
        job=p.job,
        namespace=p.namespace,
        node_selector=p.node_selector,
        tolerations=p.tolerations,
        node=node,
        phase="Running",
    )


def empty(seed: int, n_pods: int, n_nodes: int) -> Any:
    rng = random.Random(seed)
    pods = [p for job in jobs(rng, n_pods, "job") for p in job]
    return [], pods, pools(max_nodes=4 * n_nodes)


def timed(fn: Callable[[], Any], rounds: int) -> tuple[Any, list[float], list[float]]:
    """The result, wall-clock seconds and this process's CPU seconds of each round (the
    machine is shared: CPU time shows the cost when other processes take the cores)."""
    wall, cpu = [], []
    result = None
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return result, wall, cpu


def bounds(nodes: Sequence[Node], pods: Sequence[Pod], shapes: Sequence[PoolShape]) -> Any:
    """Per pool: the lower bound on all nodes (every pod's requests) and on new nodes (pending
    requests beyond what the pool's nodes have free)."""
    total, new = 0, 0
    for shape in shapes:
        mine = [p for p in pods if p.node_selector.get(NODE_TYPE_LABEL) == shape.node_type]
        total += max(lower_bound(mine, shape), shape.min)
        pending = [p for p in mine if p.node is None]
        names = {n.name for n in nodes if n.pool == shape.name}
        used = sum((p.requests for p in mine if p.node in names), Resources())
        cap = shape.allocatable * len(names)
        free = cap - used
        beyond = [0, 0, 0, 0]
        want = sum((p.requests for p in pending), Resources())
        for r, name in enumerate(("cpu", "memory", "gpu", "pods")):
            beyond[r] = max(want.get(name) - free.get(name), 0)
        size = shape.allocatable.vector()
        new += max((-(-b // size[r]) for r, b in enumerate(beyond) if b), default=0)
    return total, new


def run(name: str, nodes: Any, pods: Any, shapes: Any, rounds: int) -> list[str]:
    result, times, cpu = timed(lambda: plan(nodes, pods, shapes, now=NOW), rounds)
    ffd, ffd_times, ffd_cpu = timed(lambda: first_fit_decreasing(nodes, pods, shapes), rounds)
    # the next loop, once the unneeded time has passed: what goes (budget: 1 node with pods)
    later = plan(
        nodes, pods, shapes, now=NOW + timedelta(minutes=11), unneeded_since=result.unneeded_since
    )
    lb_total, lb_new = bounds(nodes, pods, shapes)
    added = len(result.add)
    unneeded = len(result.unneeded_since)
    chosen = len(nodes) + added
    ffd_total = len(nodes) + ffd.nodes_added
    pending = sum(1 for p in pods if p.node is None)
    t, tf = statistics.median(times), statistics.median(ffd_times)
    c, cf = statistics.median(cpu), statistics.median(ffd_cpu)
    return [
        f"{name:8} {len(nodes):>6} {len(pods):>7} {pending:>7} | plan {t * 1000:5.0f} ms wall "
        f"{c * 1000:5.0f} ms cpu (FFD {tf * 1000:4.0f} / {cf * 1000:4.0f} ms, x{c / cf:4.1f}) | "
        f"new nodes: plan {added:>5}, FFD "
        f"{ffd.nodes_added:>5}, bound {lb_new:>5} (plan/bound {added / max(lb_new, 1):.3f}, "
        f"plan/FFD {added / max(ffd.nodes_added, 1):.3f})",
        f"{'':8} all nodes: plan {chosen} (FFD {ffd_total}), bound {lb_total}: plan/bound "
        f"{chosen / max(lb_total, 1):.3f}; {unneeded} unneeded, {len(later.remove)} removed "
        f"11 min later -> {chosen - len(later.remove)} nodes, plan/bound "
        f"{(chosen - len(later.remove)) / max(lb_total, 1):.3f}",
        f"{'':8} unmet {len(result.unmet)}, FFD unplaced {len(ffd.unplaced)}; strategy "
        f"{result.strategy}; rounds (wall) {', '.join(f'{x * 1000:.0f}' for x in times)} ms",
    ]


def as_json(nodes: Sequence[Node], pods: Sequence[Pod]) -> tuple[list[Any], list[Any]]:
    """The same cluster as the apiserver would list it."""
    node_objs = [
        {
            "metadata": {"name": n.name, "labels": dict(n.labels)},
            "spec": {"taints": [t._asdict() for t in n.taints]},
            "status": {
                "allocatable": {
                    "cpu": f"{n.allocatable.cpu}m",
                    "memory": str(n.allocatable.memory),
                    "nvidia.com/gpu": str(n.allocatable.gpu),
                    "pods": str(n.allocatable.pods),
                },
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        for n in nodes
    ]
    pod_objs = []
    for p in pods:
        requests = {"cpu": f"{p.requests.cpu}m", "memory": str(p.requests.memory)}
        if p.requests.gpu:
            requests["nvidia.com/gpu"] = str(p.requests.gpu)
        spec: dict[str, Any] = {
            "nodeSelector": dict(p.node_selector),
            "tolerations": [t._asdict() for t in p.tolerations],
            "containers": [{"name": "main", "resources": {"requests": requests}}],
        }
        if p.node:
            spec["nodeName"] = p.node
        else:
            spec["schedulingGates"] = [{"name": "juliarun.io/placement"}]
        pod_objs.append(
            {
                "metadata": {
                    "name": p.name,
                    "namespace": p.namespace,
                    "labels": {"juliarun.io/job": p.job},
                },
                "spec": spec,
                "status": {"phase": p.phase},
            }
        )
    return node_objs, pod_objs


def parsed_loop(nodes: Sequence[Node], pods: Sequence[Pod], shapes: Any, rounds: int) -> str:
    """The loop as the autoscaler runs it: from the listed JSON to the plan."""
    node_objs, pod_objs = as_json(nodes, pods)

    def loop() -> Any:
        ps = [Pod.from_k8s(o) for o in pod_objs]
        return plan([Node.from_k8s(o) for o in node_objs], ps, shapes, now=NOW)

    result, wall, cpu = timed(loop, rounds)
    direct = plan(nodes, pods, shapes, now=NOW)
    same = [(d.node, d.action) for d in result.decisions] == [
        (d.node, d.action) for d in direct.decisions
    ]
    return (
        f"{'':8} from the JSON the apiserver lists (Pod/Node.from_k8s + plan): "
        f"{statistics.median(wall) * 1000:.0f} ms wall {statistics.median(cpu) * 1000:.0f} ms "
        f"cpu; same plan: {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=30000)
    parser.add_argument("--pending", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'scenario':8} {'nodes':>6} {'pods':>7} {'pending':>7} | one planning loop, median of "
        f"{args.rounds} (goal <= 1000 ms; new nodes <= FFD; total <= 1.10 x bound); load "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    scenarios = [
        ("steady", steady(args.seed, args.nodes, args.pods, args.pending)),
        ("empty", empty(args.seed, args.pods, args.nodes)),
    ]
    for name, (nodes, pods, shapes) in scenarios:
        for line in run(name, nodes, pods, shapes, args.rounds):
            print(line)
        print(parsed_loop(nodes, pods, shapes, args.rounds))


if __name__ == "__main__":
    main()
