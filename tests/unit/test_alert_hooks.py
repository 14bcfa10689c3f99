"""Alert hooks: named hooks called with the firing alerts, and ScaleHook scaling a real local
JuliaParBatchWorkers job up while its alert fires and down when it clears."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import juliarun
from juliarun.errors import ConfigError, JobNotFoundError, SpecError
from juliarun.flows.alerts import evaluate_alerts
from juliarun.hooks import ScaleHook
from juliarun.metrics.alerts import (
    Alert,
    ThresholdRule,
    evaluate,
    get_hook,
    register_hook,
    run_hooks,
)
from juliarun.metrics.sqlite import SqliteMetricStore
from tests.unit.local_jobs import eventually

NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)

BUSY = ThresholdRule(
    name="busy",
    metric="queue_length",
    op=">",
    value=10,
    agg="max",
    window=timedelta(minutes=5),
    group_by=("job",),
)

calls: list[list[Alert]] = []


def module_hook(alerts: list[Alert]) -> None:
    """Found by get_hook("tests.unit.test_alert_hooks:module_hook")."""
    calls.append(alerts)


def test_a_registered_hook_gets_the_firing_alerts(tmp_path: Path) -> None:
    seen: list[list[Alert]] = []
    register_hook("test-collect", seen.append)
    store = SqliteMetricStore(tmp_path / "metrics.db")
    try:
        store.record("queue_length", 50, {"job": "crew"}, NOW - timedelta(minutes=1))
        store.record("queue_length", 2, {"job": "other"}, NOW - timedelta(minutes=1))
        run_hooks(["test-collect"], evaluate([BUSY], store, clock=lambda: NOW))
        # ten minutes later the window is empty: the hook hears that nothing fires
        later = NOW + timedelta(minutes=10)
        run_hooks(["test-collect"], evaluate([BUSY], store, clock=lambda: later))
    finally:
        store.close()
    assert [[(a.rule, dict(a.group), a.value) for a in alerts] for alerts in seen] == [
        [("busy", {"job": "crew"}, 50.0)],
        [],
    ]
    assert seen[0][0].at == NOW


def test_hooks_by_import_path_and_unknown_names() -> None:
    calls.clear()
    run_hooks(["tests.unit.test_alert_hooks:module_hook"], [])
    assert calls == [[]]
    with pytest.raises(ConfigError, match="no alert hook 'nowhere'"):
        get_hook("nowhere")
    with pytest.raises(ConfigError, match="cannot be imported"):
        get_hook("tests.unit.test_alert_hooks:missing")
    with pytest.raises(ConfigError, match="min_workers <= max_workers"):
        ScaleHook("local", "crew", min_workers=3, max_workers=2)


def _alert(rule: str, group: dict[str, str], kind: str = "threshold") -> Alert:
    return Alert(rule=rule, kind=kind, metric="m", at=NOW, message="", group=group)  # type: ignore[arg-type]


def test_scale_hook_matches_its_jobs_threshold_alerts() -> None:
    hook = ScaleHook("local", "crew", rules=("crew-busy",))
    assert hook.fires_for(_alert("busy", {"job": "crew"}))
    assert hook.fires_for(_alert("crew-busy", {}))
    assert not hook.fires_for(_alert("busy", {"job": "other"}))
    assert not hook.fires_for(_alert("busy", {"job": "crew"}, kind="absence"))


@pytest.fixture
def jctx(
    local_home: Path, julia: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[juliarun.Context]:
    monkeypatch.setenv("JULIARUN_JULIA", julia)
    with juliarun.init() as context:
        yield context


@pytest.mark.julia
def test_scale_hook_scales_a_local_job_up_and_back_down(
    jctx: juliarun.Context, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "idle.jl").write_text(textwrap.dedent('println("up"); flush(stdout); sleep(600)\n'))
    juliarun.define_storage(jctx, name="code", kind="host", path=str(code))
    job = juliarun.JuliaParBatchWorkers("crew", "/mnt/code/idle.jl", "code", nworkers=1)
    juliarun.submit(jctx, job)
    hook = ScaleHook("local", "crew", min_workers=1, max_workers=3, step=1)

    def running() -> int:
        return sum(1 for w in juliarun.status(jctx, job).workers if w.state == "running")

    eventually(lambda: running() == 1, what="one worker")
    firing = [_alert("busy", {"job": "crew"})]
    hook(firing)
    hook(firing)
    hook(firing)  # capped at max_workers
    assert juliarun.status(jctx, job).desired_workers == 3
    eventually(lambda: running() == 3, what="three workers")
    # scale down once every worker is up (a SIGTERM racing Julia's startup takes the grace)
    eventually(lambda: len(juliarun.search(jctx, "up", job="crew")) == 3, what="3 workers up")
    hook([_alert("busy", {"job": "other"})])  # not this job's: it cleared
    assert juliarun.status(jctx, job).desired_workers == 2
    hook([])
    hook([])  # floored at min_workers
    eventually(lambda: running() == 1, what="back to one worker")
    assert juliarun.status(jctx, job).desired_workers == 1
    juliarun.delete(jctx, job, force=True)
    with pytest.raises(JobNotFoundError):  # a stale hook says so
        hook(firing)


def test_serve_schedules_evaluate_alerts_every_minute_when_there_are_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from juliarun.deployments.serve import EVALUATE_ALERTS, deployments

    def evaluate_alerts_deployment() -> Any:
        (found,) = [d for d in deployments("local") if d.name == EVALUATE_ALERTS]
        return found

    monkeypatch.delenv("JULIARUN_ALERT_RULES", raising=False)
    none = evaluate_alerts_deployment()
    assert none.parameters == {"rules": [], "cluster": "local", "hooks": []}
    assert none.schedules == []  # nothing to evaluate: no run every minute

    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"kind": "absence", "name": "hb", "metric": "hb", "window": 60}]))
    monkeypatch.setenv("JULIARUN_ALERT_RULES", str(path))
    assert [s.schedule.interval for s in evaluate_alerts_deployment().schedules] == [
        timedelta(minutes=1)
    ]
    params = evaluate_alerts_deployment().parameters
    assert [r["name"] for r in params["rules"]] == ["hb"] and params["hooks"] == []
    path.write_text(json.dumps([BUSY.model_dump(mode="json"), {**params["rules"][0]}]))
    params = evaluate_alerts_deployment().parameters
    # what a scheduled run does with them: validated into the flow's rule models
    validated = evaluate_alerts.validate_parameters(params)
    assert [type(r).__name__ for r in validated["rules"]] == ["ThresholdRule", "AbsenceRule"]
    assert validated["rules"][0] == BUSY
    path.write_text(json.dumps([{"kind": "absence", "name": "hb"}]))
    with pytest.raises(SpecError, match="metric"):
        evaluate_alerts_deployment()
    path.write_text("not json")
    with pytest.raises(ConfigError, match="JULIARUN_ALERT_RULES"):
        evaluate_alerts_deployment()


def test_serve_prunes_bundles_and_storage_daily_on_the_served_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from juliarun.deployments.serve import PRUNE_BUNDLES, PRUNE_STORAGE, deployments

    monkeypatch.delenv("JULIARUN_ALERT_RULES", raising=False)
    served = {d.name: d for d in deployments("docker")}
    for name in (PRUNE_BUNDLES, PRUNE_STORAGE):
        assert served[name].parameters == {"cluster": "docker"}
        assert [s.schedule.interval for s in served[name].schedules] == [timedelta(days=1)]
