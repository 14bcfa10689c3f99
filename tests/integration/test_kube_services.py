"""Services work on the test cluster (kube-proxy): a ClusterIP reaches a real pod on the real
node, from this machine and from another pod."""

from __future__ import annotations

import socket

import pytest
from kubernetes import client

from tests.integration.fixtures.kubernetes import NODE_KIND_LABEL, wait_for

pytestmark = pytest.mark.kubernetes

SERVER = (
    'using Sockets; s = listen(IPv4(0), 7000); println("listening"); flush(stdout); '
    'while true; c = accept(s); write(c, "hello from $(gethostname())\\n"); close(c); end'
)


def pod(name: str, image: str, command: list[str], labels: dict[str, str]) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            restart_policy="Never",
            node_selector={NODE_KIND_LABEL: "real"},
            termination_grace_period_seconds=0,
            containers=[
                client.V1Container(
                    name="main", image=image, image_pull_policy="IfNotPresent", command=command
                )
            ],
        ),
    )


def test_a_cluster_ip_reaches_a_pod_from_this_machine_and_from_a_pod(
    kube_core: client.CoreV1Api, kube_namespace: str, kube_julia_image: str
) -> None:
    ns = kube_namespace
    kube_core.create_namespaced_pod(
        ns, pod("server", kube_julia_image, ["julia", "-e", SERVER], {"app": "server"})
    )
    service = kube_core.create_namespaced_service(
        ns,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="server"),
            spec=client.V1ServiceSpec(
                selector={"app": "server"},
                ports=[client.V1ServicePort(port=80, target_port=7000)],
            ),
        ),
    )
    ip = service.spec.cluster_ip

    def answers() -> str | None:
        try:
            with socket.create_connection((ip, 80), timeout=2) as conn:
                return conn.makefile().readline().strip()
        except OSError:
            return None

    assert wait_for(answers, 120, 0.5, "the service to answer from this machine") == (
        "hello from server"
    )
    client_code = f'using Sockets; c = connect("{ip}", 80); print(readline(c))'
    kube_core.create_namespaced_pod(
        ns, pod("client", kube_julia_image, ["julia", "-e", client_code], {"app": "client"})
    )

    def finished() -> bool:
        phase = kube_core.read_namespaced_pod("client", ns).status.phase
        return phase in {"Succeeded", "Failed"}

    wait_for(finished, 120, 0.5, "the client pod")
    assert kube_core.read_namespaced_pod_log("client", ns) == "hello from server"
