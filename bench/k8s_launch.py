"""Launch N jobs on kwok nodes through juliarun and through raw kubernetes client creates, in the
same run, and print the ratio (goal: juliarun <= 1.5x raw) and the API requests per job — for
juliarun at its default client-side rate limit, with the limit off, and at the former default
(50 qps / burst 100), each into its own namespace.

    .venv/bin/python bench/k8s_launch.py [--jobs 200] [--nodes 10] [--limits default off 50/100]
        [--rounds 3]

Needs the test cluster and kwok (scripts/testenv up kubernetes kwok). Creates a namespace per
variant and N kwok nodes labelled juliarun.io/bench=<id>, and deletes them at the end.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

from kubernetes import client

from juliarun.backends.kubernetes import KubernetesBackend, api_client
from juliarun.backends.kubernetes.manifests import NODE_TYPE_LABEL
from juliarun.settings import Settings
from juliarun.specs import Batch

OFF = (10000.0, 10000)  # the highest qps/burst the settings allow: no limit for this bench
KUBECONFIG = os.environ.get("JULIARUN_KUBECONFIG") or str(
    Path.home() / ".cache" / "juliarun" / "kubernetes" / "admin.kubeconfig"
)


def kwok_node(name: str, bench: str) -> client.V1Node:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return client.V1Node(
        metadata=client.V1ObjectMeta(
            name=name,
            labels={
                "kubernetes.io/hostname": name,
                "type": "kwok",
                "juliarun.io/node-kind": "fake",
                "juliarun.io/bench": bench,
                NODE_TYPE_LABEL: "highcpu",
                "app.kubernetes.io/managed-by": "juliarun",
            },
            annotations={"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        ),
        spec=client.V1NodeSpec(
            taints=[client.V1Taint(key=NODE_TYPE_LABEL, value="highcpu", effect="NoSchedule")]
        ),
        status=client.V1NodeStatus(allocatable=capacity, capacity=capacity),
    )


def raw_job(name: str) -> client.V1Job:
    """What a user of the kubernetes client writes for the same job."""
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "bench"}),
        spec=client.V1JobSpec(
            completions=1,
            parallelism=1,
            completion_mode="Indexed",
            backoff_limit=3,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    node_selector={NODE_TYPE_LABEL: "highcpu"},
                    tolerations=[
                        client.V1Toleration(
                            key=NODE_TYPE_LABEL, value="highcpu", effect="NoSchedule"
                        )
                    ],
                    containers=[
                        client.V1Container(
                            name="main",
                            image="juliarun.local/simulated:1",
                            command=["true"],
                            resources=client.V1ResourceRequirements(
                                requests={"cpu": "10m", "memory": "16Mi"},
                                limits={"memory": "16Mi"},
                            ),
                        )
                    ],
                )
            ),
        ),
    )


def wait_all_done(batch: client.BatchV1Api, namespace: str, count: int, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        jobs = batch.list_namespaced_job(namespace).items
        done = sum(1 for j in jobs if (j.status.succeeded or 0) >= 1)
        if done >= count:
            return time.perf_counter() - start
        time.sleep(1)
    return float("nan")


def limits(label: str) -> tuple[float, int]:
    """The (qps, burst) of a variant: ``default`` (the settings' defaults), ``off`` (no
    client-side limit: the highest values allowed), or ``QPS/BURST``."""
    if label == "default":
        fields = Settings.model_fields
        return float(fields["kube_qps"].default), int(fields["kube_burst"].default)
    if label == "off":
        return OFF
    qps, _, burst = label.partition("/")
    return float(qps), int(burst)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds (best kept)")
    parser.add_argument("--wait", action="store_true", help="also time until all complete")
    parser.add_argument(
        "--limits",
        nargs="+",
        default=["default", "off", "50/100"],
        help="juliarun client-side rate limits to run: default, off, or QPS/BURST",
    )
    args = parser.parse_args()

    bench = uuid.uuid4().hex[:6]
    api = api_client(kubeconfig=KUBECONFIG)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    ns_raw = f"bench-raw-{bench}"
    nodes = [f"kwok-bench-{bench}-{i}" for i in range(args.nodes)]
    for name in nodes:
        core.create_node(kwok_node(name, bench))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns_raw)))
    backends: list[tuple[str, float, int, KubernetesBackend]] = []
    try:
        for i, label in enumerate(args.limits):
            qps, burst = limits(label)
            backend = KubernetesBackend(
                api_client(kubeconfig=KUBECONFIG),
                f"bench-jr{i}-{bench}",
                cluster="bench",
                qps=qps,
                burst=burst,
            )
            backends.append((label, qps, burst, backend))
        for sa_ns in [ns_raw] + [b.namespace for *_, b in backends]:
            while not core.list_namespaced_service_account(sa_ns).items:  # pods need it
                time.sleep(0.2)
        best: dict[str, float] = {}
        calls: dict[str, int] = {}
        for r in range(args.rounds):  # round-robin, the best of each: the machine is shared
            start = time.perf_counter()
            for i in range(args.jobs):
                batch.create_namespaced_job(ns_raw, raw_job(f"job-{r}-{i}"))
            best["raw"] = min(best.get("raw", float("inf")), time.perf_counter() - start)
            for label, _, _, backend in backends:
                specs = [
                    Batch(f"job-{r}-{i}", ["true"], cpu="10m", memory="16Mi", node_type="highcpu")
                    for i in range(args.jobs)
                ]
                calls_before = backend.client.calls
                start = time.perf_counter()
                for spec in specs:
                    backend.submit(spec, {})
                best[label] = min(best.get(label, float("inf")), time.perf_counter() - start)
                calls[label] = calls.get(label, 0) + backend.client.calls - calls_before

        raw = best["raw"]
        print(
            f"jobs launched: {args.jobs} per variant and round on {args.nodes} kwok nodes, "
            f"best of {args.rounds} rounds"
        )
        print(f"{'variant':<40} {'seconds':>8} {'ms/job':>7} {'ratio':>6} {'calls/job':>9}")
        print(
            f"{'raw kubernetes client':<40} {raw:8.2f} {1000 * raw / args.jobs:7.1f} "
            f"{1.0:5.2f}x {1.0:9.2f}"
        )
        for label, qps, burst, _ in backends:
            ours = best[label]
            per_job = calls[label] / (args.jobs * args.rounds)
            name = f"juliarun, limit {label} ({qps:g} qps/{burst})"
            print(
                f"{name:<40} {ours:8.2f} {1000 * ours / args.jobs:7.1f} "
                f"{ours / raw:5.2f}x {per_job:9.2f}"
            )
        print("goal: ratio <= 1.5x")
        if args.wait:
            t_raw = wait_all_done(batch, ns_raw, args.jobs * args.rounds, 600)
            print(f"all raw jobs complete after {t_raw:.1f} s")
            for label, _, _, backend in backends:
                t_jr = wait_all_done(batch, backend.namespace, args.jobs * args.rounds, 600)
                print(f"all juliarun ({label}) jobs complete after a further {t_jr:.1f} s")
    finally:
        for ns in [ns_raw] + [b.namespace for *_, b in backends]:
            core.delete_namespace(ns, propagation_policy="Background")
        for name in nodes:
            core.delete_node(name, grace_period_seconds=0)
        for *_, backend in backends:
            backend.close()
        api.close()


if __name__ == "__main__":
    main()
