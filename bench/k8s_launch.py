"""Launch N jobs on kwok nodes through juliarun and through raw kubernetes client creates, in the
same run, and print the ratio (goal: juliarun <= 1.5x raw) and the API requests per job.

    .venv/bin/python bench/k8s_launch.py [--jobs 200] [--nodes 10]

Needs the test cluster and kwok (scripts/testenv up kubernetes kwok). Creates two namespaces and
N kwok nodes labelled juliarun.io/bench=<id>, and deletes them at the end.
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
from juliarun.specs import Batch

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--wait", action="store_true", help="also time until all complete")
    parser.add_argument("--qps", type=float, default=50, help="juliarun client-side rate limit")
    args = parser.parse_args()

    bench = uuid.uuid4().hex[:6]
    api = api_client(kubeconfig=KUBECONFIG)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    ns_raw, ns_jr = f"bench-raw-{bench}", f"bench-jr-{bench}"
    nodes = [f"kwok-bench-{bench}-{i}" for i in range(args.nodes)]
    for name in nodes:
        core.create_node(kwok_node(name, bench))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns_raw)))
    backend = KubernetesBackend(
        api_client(kubeconfig=KUBECONFIG), ns_jr, cluster="bench", qps=args.qps, burst=100
    )
    try:
        for sa_ns in (ns_raw, ns_jr):  # pods need the default service account
            while not core.list_namespaced_service_account(sa_ns).items:
                time.sleep(0.2)
        specs = [
            Batch(f"job-{i}", ["true"], cpu="10m", memory="16Mi", node_type="highcpu")
            for i in range(args.jobs)
        ]

        start = time.perf_counter()
        for i in range(args.jobs):
            batch.create_namespaced_job(ns_raw, raw_job(f"job-{i}"))
        raw = time.perf_counter() - start

        calls_before = backend.client.calls
        start = time.perf_counter()
        for spec in specs:
            backend.submit(spec, {})
        ours = time.perf_counter() - start
        calls = backend.client.calls - calls_before

        print(f"jobs launched:            {args.jobs} on {args.nodes} kwok nodes")
        print(f"raw kubernetes client:    {raw:.2f} s  ({1000 * raw / args.jobs:.1f} ms/job)")
        print(f"juliarun submit:          {ours:.2f} s  ({1000 * ours / args.jobs:.1f} ms/job)")
        print(
            f"ratio juliarun / raw:     {ours / raw:.2f}x  (goal <= 1.5x; qps limit {args.qps:g})"
        )
        print(f"API requests per job:     {calls / args.jobs:.2f} (juliarun), 1.00 (raw)")
        if args.wait:
            t_raw = wait_all_done(batch, ns_raw, args.jobs, 600)
            t_jr = wait_all_done(batch, ns_jr, args.jobs, 600)
            print(f"all complete after:       raw {t_raw:.1f} s, juliarun +{t_jr:.1f} s")
    finally:
        for ns in (ns_raw, ns_jr):
            core.delete_namespace(ns, propagation_policy="Background")
        for name in nodes:
            core.delete_node(name, grace_period_seconds=0)
        backend.close()
        api.close()


if __name__ == "__main__":
    main()
