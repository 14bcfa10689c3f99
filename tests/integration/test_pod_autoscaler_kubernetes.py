"""The Kubernetes pod autoscaler option (issue 10, item 6): the test cluster's real HPA
controller scales a job's workers from a metric juliarun serves through the aggregation
layer (external.metrics.k8s.io), via the job's WorkerPool /scale subresource."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
from kubernetes import client

import juliarun
from juliarun.api import Context
from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.backends.kubernetes.client import ns_path
from juliarun.backends.kubernetes.manifests import NODE_TYPE_LABEL
from juliarun.backends.kubernetes.podautoscaler import (
    APISERVICE_NAME,
    SERVICE_NAME,
    register_metrics_api,
)
from juliarun.errors import ConfigError, MetricError, SpecError
from juliarun.specs import JuliaParBatchWorkers
from tests.integration.fixtures.kubernetes import NodeFactory, wait_for

pytestmark = [pytest.mark.kubernetes, pytest.mark.kwok]


def backend(ctx: Context) -> KubernetesBackend:
    assert isinstance(ctx.backend, KubernetesBackend)
    return ctx.backend


def workers_job(ctx: Context, kwok_nodes: NodeFactory, name: str) -> JuliaParBatchWorkers:
    taint = client.V1Taint(key=NODE_TYPE_LABEL, value="highcpu", effect="NoSchedule")
    kwok_nodes(1, labels={NODE_TYPE_LABEL: "highcpu"}, taints=[taint])
    job = JuliaParBatchWorkers(
        name,
        "/mnt/x/w.jl",
        nworkers=1,
        cpu="10m",
        node_type="highcpu",
        env={"KWOK_RUN_FOR": "600s"},  # kwok keeps the workers running
    )
    juliarun.submit(ctx, job)
    return job


def apiservice(ctx: Context) -> Any:
    return backend(ctx).client.get_or_none(
        f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE_NAME}"
    )


# serial: in CI's parallel phase the HPA controller twice got "could not find the requested
# resource" for the metric for minutes while the same read through the apiserver answered (it
# passes alone in under a minute); the cause is not found, see docs/testing.md
@pytest.mark.serial
def test_the_hpa_scales_the_workers_up_and_down_from_the_served_metric(
    kube_ctx: Context, kwok_nodes: NodeFactory
) -> None:
    job = workers_job(kube_ctx, kwok_nodes, "hpa-workers")
    backlog = {"value": 0.0}
    scaler = juliarun.PodAutoscaler(
        kube_ctx,
        job,
        lambda: backlog["value"],
        target=2,
        min_workers=1,
        max_workers=5,
        scale_down_window=0,
        interval=0.5,
    ).start()
    try:
        assert apiservice(kube_ctx) is not None
        backlog["value"] = 7  # ceil(7 / 2) = 4 workers
        wait_for(
            lambda: juliarun.status(kube_ctx, job).desired_workers == 4,
            150,
            1,
            "the HPA to scale the workers to 4",
        )
        hpa = scaler.hpa()
        assert hpa["status"]["desiredReplicas"] == 4
        metric = hpa["status"]["currentMetrics"][0]["external"]
        assert metric["metric"]["name"] == "hpa-workers-metric"
        assert metric["current"]["averageValue"] in {"7", "1750m"}  # 7 over 1 or over 4 workers
        backlog["value"] = 100  # bounded by max_workers
        wait_for(
            lambda: juliarun.status(kube_ctx, job).desired_workers == 5, 90, 1, "5 workers (max)"
        )
        backlog["value"] = 0
        wait_for(
            lambda: juliarun.status(kube_ctx, job).desired_workers == 1, 90, 1, "1 worker (min)"
        )
        assert scaler.changes[:3] == [(1, 4), (4, 5), (5, 1)]
    finally:
        scaler.stop()
        juliarun.delete(kube_ctx, job, force=True)
    assert apiservice(kube_ctx) is None  # nothing left to break the cluster's API discovery


def test_a_failing_metric_holds_the_scale_and_the_hpa_says_why(
    kube_ctx: Context, kwok_nodes: NodeFactory
) -> None:
    job = workers_job(kube_ctx, kwok_nodes, "hpa-broken")

    def broken() -> float:
        raise MetricError("queue work", "the broker is unreachable")

    scaler = juliarun.PodAutoscaler(kube_ctx, job, broken, target=1, interval=0.5).start()
    try:

        def failed() -> Any:
            conditions = (scaler.hpa().get("status") or {}).get("conditions") or []
            return next(
                (c for c in conditions if c["type"] == "ScalingActive" and c["status"] == "False"),
                None,
            )

        condition = wait_for(failed, 90, 1, "the HPA to report the metric failure")
        assert condition["reason"] == "FailedGetExternalMetric"
        assert "the broker is unreachable" in condition["message"]
        assert juliarun.status(kube_ctx, job).desired_workers == 1
        assert scaler.changes == []
    finally:
        scaler.stop()
        juliarun.delete(kube_ctx, job, force=True)


def test_only_the_apiservers_front_proxy_may_read_the_metrics(
    kube_ctx: Context, kwok_nodes: NodeFactory
) -> None:
    job = workers_job(kube_ctx, kwok_nodes, "hpa-private")
    scaler = juliarun.PodAutoscaler(kube_ctx, job, lambda: 1.0).start()
    try:
        host = backend(kube_ctx)._metrics_host
        assert host is not None and host._server is not None
        server = host._server
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        request = b"GET /apis/external.metrics.k8s.io/v1beta1 HTTP/1.1\r\n\r\n"
        with (  # no client certificate: refused
            pytest.raises((ssl.SSLError, ConnectionError)),
            socket.create_connection((server.host, server.port), timeout=5) as raw,
            tls.wrap_socket(raw) as conn,
        ):
            conn.sendall(request)
            if not conn.recv(1):
                raise ConnectionError("closed")
    finally:
        scaler.stop()
        juliarun.delete(kube_ctx, job, force=True)


def test_bad_settings_are_refused_before_anything_is_created(kube_ctx: Context) -> None:
    with pytest.raises(SpecError) as info:
        juliarun.PodAutoscaler(kube_ctx, "w", lambda: 1.0, target=0, min_workers=3, max_workers=2)
    assert [f for f, _ in info.value.errors] == ["target", "min_workers"]
    b = backend(kube_ctx)
    assert b._metrics_host is None  # no metrics server was started for it
    for path in (
        f"/apis/autoscaling/v2/namespaces/{b.namespace}/horizontalpodautoscalers/w",
        f"/apis/juliarun.io/v1/namespaces/{b.namespace}/workerpools/w",
    ):
        assert b.client.get_or_none(path) is None


# serial: an APIService nobody answers breaks the cluster's API discovery while it exists
@pytest.mark.serial
def test_another_adapters_apiservice_is_never_taken_over(kube_ctx: Context) -> None:
    b = backend(kube_ctx)
    path = f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE_NAME}"
    assert b.client.get_or_none(path) is None
    foreign = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": APISERVICE_NAME, "labels": {"app.kubernetes.io/managed-by": "keda"}},
        "spec": {
            "service": {"name": "keda-metrics-apiserver", "namespace": "keda", "port": 443},
            "group": "external.metrics.k8s.io",
            "version": "v1beta1",
            "insecureSkipTLSVerify": True,
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    b.client.post("/apis/apiregistration.k8s.io/v1/apiservices", foreign)
    try:
        with pytest.raises(ConfigError, match="keda/keda-metrics-apiserver"):
            register_metrics_api(b.client, b.namespace, _Unstarted(), "127.0.0.1")
        # refused before anything was created, and KEDA's registration is untouched
        assert b.client.get_or_none(ns_path(b.namespace, "services", SERVICE_NAME)) is None
        after = b.client.get(path)
        assert after["spec"]["service"]["namespace"] == "keda"
    finally:
        b.client.delete(path)


class _Unstarted:
    """Stands for a metrics server never started (the refusal comes before it is used)."""

    port = 0
    ca_bundle = b""
