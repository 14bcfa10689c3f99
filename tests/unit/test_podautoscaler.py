"""The external-metrics API juliarun serves to the HPA, answered without a network: what each
path returns (discovery, a metric's value as a quantity, a failing metric, an unknown one)."""

from __future__ import annotations

import datetime as dt

from juliarun.backends.kubernetes.podautoscaler import (
    MetricsAPIServer,
    _serving_cert,
    hpa_manifest,
)
from juliarun.errors import MetricError

NOW = dt.datetime(2026, 12, 4, 15, 0, 0, tzinfo=dt.UTC)
BASE = "/apis/external.metrics.k8s.io/v1beta1"


def server(tmp_path: object) -> MetricsAPIServer:
    from pathlib import Path

    _, _, ca = _serving_cert("client-ca", Path(str(tmp_path)))
    return MetricsAPIServer(
        host="127.0.0.1", dns_name="m.ns.svc", client_ca=ca.decode(), allowed_names=["fp"]
    )


def test_discovery_value_failure_and_unknown(tmp_path: object) -> None:
    api = server(tmp_path)
    try:
        api.register("team-a", "work-metric", lambda: 2.5)

        def broken() -> float:
            raise MetricError("queue work", "the broker is unreachable")

        api.register("team-a", "broken", broken)
        api.register("team-a", "nan", lambda: float("nan"))
        code, body = api.answer(BASE, NOW)
        assert (code, body["kind"], body["resources"]) == (200, "APIResourceList", [])
        code, body = api.answer(f"{BASE}/namespaces/team-a/work-metric", NOW)
        assert code == 200
        assert body["items"] == [
            {
                "metricName": "work-metric",
                "metricLabels": {},
                "timestamp": "2026-12-04T15:00:00Z",
                "value": "2500m",
            }
        ]
        code, body = api.answer(f"{BASE}/namespaces/team-a/broken", NOW)
        assert code == 503
        assert "the broker is unreachable" in body["message"]
        code, body = api.answer(f"{BASE}/namespaces/team-a/nan", NOW)
        assert code == 503
        assert "not a number" in body["message"]
        # another namespace's metric of the same name is not this one
        assert api.answer(f"{BASE}/namespaces/team-b/work-metric", NOW)[0] == 404
        assert api.answer(f"{BASE}/namespaces/team-a/../team-b/x", NOW)[0] == 404
        api.unregister("team-a", "work-metric")
        assert api.answer(f"{BASE}/namespaces/team-a/work-metric", NOW)[0] == 404
    finally:
        api.stop()


def test_the_hpa_aims_at_the_target_per_worker_with_the_chosen_window() -> None:
    body = hpa_manifest("w", "w-metric", target=2.5, minimum=1, maximum=10, scale_down_window=0)
    spec = body["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "juliarun.io/v1",
        "kind": "WorkerPool",
        "name": "w",
    }
    assert spec["metrics"][0]["external"]["target"] == {
        "type": "AverageValue",
        "averageValue": "2500m",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 10)
    assert spec["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 0}}
