"""Smoke tests of the real test Kubernetes cluster: control plane, the real node running the julia
image, and kwok-simulated nodes running a parallel Job."""

from __future__ import annotations

import re

import pytest
from kubernetes import client

from tests.integration.fixtures.kubernetes import (
    KWOK_ANNOTATION,
    KWOK_TOLERATION,
    NODE_KIND_LABEL,
    TEST_LABEL,
    NodeFactory,
    node_ready,
    wait_for,
)

pytestmark = pytest.mark.kubernetes


def test_apiserver_reports_its_version(kube_api: client.ApiClient) -> None:
    info = client.VersionApi(kube_api).get_code()
    assert re.fullmatch(r"v1\.3[34]\.\d+", info.git_version), info.git_version
    assert info.major == "1"
    assert info.minor in {"33", "34"}


def test_real_node_is_ready(kube_core: client.CoreV1Api, kube_real_node: str) -> None:
    node = kube_core.read_node(kube_real_node)
    assert node_ready(node)
    assert node.metadata.labels.get(NODE_KIND_LABEL) == "real"
    assert KWOK_ANNOTATION not in (node.metadata.annotations or {})
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert re.fullmatch(r"v1\.3[34]\.\d+", node.status.node_info.kubelet_version)


def test_julia_pod_runs_on_the_real_node(
    kube_core: client.CoreV1Api, kube_namespace: str, kube_julia_image: str
) -> None:
    expected = kube_julia_image.rsplit(":", 1)[-1]
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="julia-version", labels={"app": "julia-smoke"}),
        spec=client.V1PodSpec(
            restart_policy="Never",
            node_selector={NODE_KIND_LABEL: "real"},
            automount_service_account_token=False,
            termination_grace_period_seconds=0,
            containers=[
                client.V1Container(
                    name="julia",
                    image=kube_julia_image,
                    image_pull_policy="Never",
                    command=["julia", "--version"],
                )
            ],
        ),
    )
    kube_core.create_namespaced_pod(kube_namespace, pod)

    def finished() -> str | None:
        phase = kube_core.read_namespaced_pod("julia-version", kube_namespace).status.phase
        return phase if phase in {"Succeeded", "Failed"} else None

    phase = wait_for(finished, 180, 1, "the julia pod to finish")
    log = kube_core.read_namespaced_pod_log("julia-version", kube_namespace, container="julia")
    assert phase == "Succeeded", log
    assert f"julia version {expected}" in log, log


@pytest.mark.kwok
def test_job_completes_on_twenty_kwok_nodes(
    kube_api: client.ApiClient,
    kube_core: client.CoreV1Api,
    kube_namespace: str,
    kwok_nodes: NodeFactory,
) -> None:
    names = kwok_nodes(20, cpu="8", memory="32Gi", pods="110", gpus=1)
    node = kube_core.read_node(names[0])
    assert node_ready(node)
    assert node.status.allocatable["nvidia.com/gpu"] == "1"
    test_id = node.metadata.labels[TEST_LABEL]

    completions = 40
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="fanout"),
        spec=client.V1JobSpec(
            parallelism=20,
            completions=completions,
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    node_selector={NODE_KIND_LABEL: "fake", TEST_LABEL: test_id},
                    tolerations=[KWOK_TOLERATION],
                    automount_service_account_token=False,
                    containers=[
                        client.V1Container(
                            name="work",
                            image="juliarun.local/simulated:1",
                            resources=client.V1ResourceRequirements(
                                requests={"cpu": "1", "memory": "1Gi"}
                            ),
                        )
                    ],
                )
            ),
        ),
    )
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_job(kube_namespace, job)

    def done() -> client.V1JobStatus | None:
        status = batch.read_namespaced_job_status("fanout", kube_namespace).status
        return status if (status.succeeded or 0) >= completions else None

    status = wait_for(done, 180, 1, f"job fanout to complete {completions} pods")
    assert not status.failed
    pods = kube_core.list_namespaced_pod(kube_namespace, label_selector="job-name=fanout").items
    used = {p.spec.node_name for p in pods}
    assert used <= set(names), used - set(names)
    assert len(used) > 1
