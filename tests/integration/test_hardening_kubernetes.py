"""A Julia job on the real Kubernetes node trying the metric tricks a hostile job would: forged
identity tags, a platform metric name, a line carrying a secret that is not line protocol, and
reading what the platform keeps (the submitter's environment, the stores' credentials). It gets
nothing it should not."""

from __future__ import annotations

from pathlib import Path

import pytest

import juliarun
from juliarun.api import Context
from juliarun.logs import LogQuery
from juliarun.metrics import MetricQuery
from juliarun.specs import JuliaBatch

pytestmark = [pytest.mark.kubernetes, pytest.mark.julia]

SECRET = "s3cr3t-from-the-job-spec"
TRICKS = r"""
m(line) = println("##juliarun-metric ", line)
m("load,job=victim,worker=victim-0,tenant=other,cluster=prod,run=7 value=5")
m("juliarun.cpu_seconds value=1e9")
m("password=$(ENV["SECRET_WORD"]) x")
m("last value=2")
println("token: ", haskey(ENV, "JULIARUN_INFLUX_TOKEN"))
println("kubernetes account token: ", isfile("/var/run/secrets/kubernetes.io/serviceaccount/token"))
flush(stdout)
"""


def test_a_julia_job_on_kubernetes_trying_every_trick_gets_nothing(
    kube_ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JULIARUN_INFLUX_TOKEN", "influx-token-from-the-submitter")
    code = tmp_path / "code"
    code.mkdir()
    (code / "tricks.jl").write_text(TRICKS)
    juliarun.define_storage(kube_ctx, name="code", kind="host", path=str(code))
    job = JuliaBatch(
        "ktricks",
        "/mnt/code/tricks.jl",
        "code",
        cpu="100m",
        memory="512Mi",
        env={"SECRET_WORD": SECRET},
    )
    juliarun.submit(kube_ctx, job)
    juliarun.collect(kube_ctx, job, timeout=300)
    assert str(juliarun.status(kube_ctx, job)) == "succeeded"
    identity = {
        "job": "ktricks",
        "worker": "ktricks-0",
        "tenant": "default",
        "cluster": "kubernetes",
    }
    q = MetricQuery(name="load", agg="sum", group_by=(*sorted(identity), "run"))
    assert [(dict(r.group), r.value) for r in kube_ctx.metrics.query(q)] == [
        ({**identity, "run": "7"}, 5.0)
    ]
    assert kube_ctx.metrics.query(MetricQuery(name="juliarun.cpu_seconds", agg="count")) == []
    assert [r.value for r in kube_ctx.metrics.query(MetricQuery(name="last", agg="sum"))] == [2.0]
    lines = [x.message for x in kube_ctx.logs.query(LogQuery(job="ktricks"))]
    assert not [x for x in lines if SECRET in x]
    assert [x for x in lines if not x.startswith("juliarun:")] == [
        "token: false",
        "kubernetes account token: false",
    ]
    assert sorted(x.split(" (")[0] for x in lines if x.startswith("juliarun:")) == [
        "juliarun: ignored 1 metric line",
        "juliarun: ignored 1 point with a reserved juliarun.* name",
    ]
    juliarun.delete(kube_ctx, job, force=True)
