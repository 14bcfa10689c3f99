"""Serve juliarun's flows as deployments on a Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from juliarun.errors import ConfigError

RUN_JOB = "run-job"
CLUSTER_REPORT = "cluster-report"
REPORT_EVERY = timedelta(minutes=15)
PRUNE_BUNDLES = "prune-bundles"
PRUNE_STORAGE = "prune-storage"
PRUNE_EVERY = timedelta(hours=24)
RUN_PIPELINE = "run-pipeline"
EVALUATE_ALERTS = "evaluate-alerts"
PROCESS_AUTOSCALER = "process-autoscaler"
CLUSTER_AUTOSCALER = "cluster-autoscaler"
BUILD_IMAGE = "build-image"
BUILD_PACKAGE_BUNDLE = "build-package-bundle"
PREWARM_IMAGE = "prewarm-image"
ALERTS_EVERY = timedelta(minutes=1)


def example_job() -> dict[str, Any]:
    """The job a person finds in the run-job and run-pipeline forms: one that runs as it is on
    every cluster (julia is on the host for local, in the default image for Docker and
    Kubernetes), to edit into their own.

    >>> example_job()["kind"], example_job()["name"]
    ('Batch', 'hello-juliarun')
    >>> from juliarun.specs import validate_spec
    >>> validate_spec(example_job())
    Batch('hello-juliarun')
    """
    from juliarun.specs import Batch

    job = Batch("hello-juliarun", command=["julia", "-e", 'println("hello from juliarun")'])
    # the fields a person sets; the form shows the defaults of the rest
    return {"kind": job.kind, **job.model_dump(mode="json", exclude_defaults=True)}


def example_pool() -> dict[str, Any]:
    """The pool the cluster-autoscaler form opens with: simulated 4-cpu highcpu nodes."""
    from juliarun.specs import NodePool

    pool = NodePool(name="highcpu", node_type="highcpu", cpu="4", memory="16Gi", max=10)
    return pool.model_dump(mode="json", exclude_defaults=True)


def alert_parameters(cluster: str) -> dict[str, Any]:
    """The evaluate-alerts parameters: the rules (and hooks) of the JSON file JULIARUN_ALERT_RULES
    names — a list of rules, or ``{"rules": [...], "hooks": [...]}`` — else no rules."""
    import json

    from juliarun.metrics.alerts import parse_rules
    from juliarun.settings import load_settings

    path = load_settings().alert_rules
    data: Any = []
    if path is not None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"JULIARUN_ALERT_RULES: cannot read {path}: {exc}") from exc
    spec = data if isinstance(data, dict) else {"rules": data}
    rules = [r.model_dump(mode="json") for r in parse_rules(spec.get("rules", []))]
    return {"rules": rules, "cluster": cluster, "hooks": list(spec.get("hooks", []))}


def deployments(cluster: str = "local") -> list[Any]:
    """Every juliarun flow as a deployment: ``run-job``, ``run-pipeline``,
    ``process-autoscaler``, ``cluster-autoscaler``, ``build-image``, ``build-package-bundle``
    and ``prewarm-image`` (triggered from the UI or Python), ``cluster-report`` (every 15
    minutes), ``prune-bundles`` and ``prune-storage`` (daily) and ``evaluate-alerts`` (every
    minute when JULIARUN_ALERT_RULES names rules; without rules it is only triggered by hand).
    The ``tenant`` flow is prefect.yaml's only (Kubernetes clusters)."""
    from prefect.types.entrypoint import EntrypointType

    from juliarun.flows import (
        build_image,
        build_package_bundle,
        cluster_autoscaler,
        cluster_report,
        prewarm_image,
        process_autoscaler,
        prune_bundles,
        prune_storage,
        run_job,
        run_pipeline,
    )
    from juliarun.flows.alerts import evaluate_alerts

    alerts = alert_parameters(cluster)
    # (flow, name, description, schedule): every one of these takes the served cluster.
    on_cluster: list[tuple[Any, str, str, timedelta | None]] = [
        (run_job, RUN_JOB, "Run a juliarun job to the end and publish its worker table.", None),
        (
            cluster_report,
            CLUSTER_REPORT,
            "Snapshot of cluster capacity, every 15 minutes.",
            REPORT_EVERY,
        ),
        (
            prune_bundles,
            PRUNE_BUNDLES,
            "Remove package-bundle addresses no job uses, once a day.",
            PRUNE_EVERY,
        ),
        (
            prune_storage,
            PRUNE_STORAGE,
            "Remove storage versions (git volumes of older commits) no job uses, once a day.",
            PRUNE_EVERY,
        ),
        (
            run_pipeline,
            RUN_PIPELINE,
            "Specs to a running job: storage, bundle and image (cached), then the job.",
            None,
        ),
        (
            process_autoscaler,
            PROCESS_AUTOSCALER,
            "Scale a job's workers on the backlog of its work queue, for a while.",
            None,
        ),
        (
            cluster_autoscaler,
            CLUSTER_AUTOSCALER,
            "Keep node pools sized to what jobs reserve, with headroom, for a while.",
            None,
        ),
        (
            build_package_bundle,
            BUILD_PACKAGE_BUNDLE,
            "Precompile Julia packages into a bundle jobs mount (an unchanged spec is cached).",
            None,
        ),
        (
            prewarm_image,
            PREWARM_IMAGE,
            "Pull an image onto the cluster's nodes before jobs need it.",
            None,
        ),
    ]
    # Default parameters: the cluster served, and for the flows that take a job a working
    # example, so the UI's form opens filled in rather than empty.
    examples: dict[str, dict[str, Any]] = {
        RUN_JOB: {"job": example_job()},
        RUN_PIPELINE: {"job": example_job()},
        CLUSTER_AUTOSCALER: {"pools": [example_pool()]},
    }
    # The entrypoint is the flow's module path, not a file path relative to the directory serve
    # was started in: every process that runs the deployment imports juliarun as installed.
    served = [
        flow.to_deployment(
            name=name,
            description=description,
            parameters={"cluster": cluster, **examples.get(name, {})},
            interval=every,
            tags=["juliarun"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for flow, name, description, every in on_cluster
    ]
    # build-image takes no cluster: it builds on the machine that runs it and pushes.
    served.append(
        build_image.to_deployment(
            name=BUILD_IMAGE,
            description="Build a container image from a spec and push it (an unchanged spec "
            "is cached).",
            tags=["juliarun"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    )
    served.append(
        evaluate_alerts.to_deployment(
            name=EVALUATE_ALERTS,
            description="Evaluate the alert rules of JULIARUN_ALERT_RULES, every minute.",
            parameters=alerts,
            interval=ALERTS_EVERY if alerts["rules"] else None,
            tags=["juliarun"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    )
    return served


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start_server(home: Path, port: int = 4200, wait: float = 120.0) -> str:
    """Start ``prefect server start`` on 127.0.0.1:``port`` (its log under ``home``) and return
    its API URL once healthy. An already running server on that port is reused."""
    api_url = f"http://127.0.0.1:{port}/api"
    if healthy(api_url):
        return api_url
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(home / "prefect-server.log", "ab") as log:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if healthy(api_url):
            return api_url
        time.sleep(0.5)
    raise ConfigError(
        f"the Prefect server did not become healthy at {api_url} within {wait:.0f}s",
        hint=f"see {home / 'prefect-server.log'}",
    )


def serve(cluster: str = "local", api_url: str | None = None) -> None:
    """Serve the deployments until interrupted, against ``api_url`` (default: PREFECT_API_URL,
    else a server started here).

    As ``prefect.serve`` does, with one difference: a SIGTERM handler the caller installed
    (``juliarun serve`` installs one that stops at once when the server is gone) stays in
    charge of SIGTERM; Prefect's runner would otherwise replace it with its own graceful stop,
    which retries a dead server for many seconds."""
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.flows import _display_serve_start_message
    from prefect.logging import get_logger
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from juliarun.blocks.storage import Storage
    from juliarun.settings import load_settings

    url = api_url or os.environ.get("PREFECT_API_URL") or start_server(load_settings().home)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        served = deployments(cluster)
        # the forms name storage the jobs mount: the UI's Blocks page offers to save it
        Storage.register_type_and_schema()
        names = ", ".join(d.name for d in served)
        print(f"serving {names} at {url.removesuffix('/api')}", flush=True)
        runner = _runner(signal.getsignal(signal.SIGTERM))
        for deployment in served:
            runner.add_deployment(deployment)
        _display_serve_start_message(*served)
        try:
            asyncio.run(runner.start())
        except (KeyboardInterrupt, TerminationSignal) as exc:  # as prefect.serve ends
            get_logger("juliarun.serve").info(f"Received {type(exc).__name__}, shutting down...")


def _runner(host_sigterm: Any) -> Any:
    """Prefect's runner as ``prefect.serve`` makes it (schedules paused on a graceful stop),
    leaving SIGTERM to ``host_sigterm`` when that is a Python handler of the caller's."""
    from prefect.runner import Runner

    class HostSigtermRunner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            if callable(host_sigterm):
                host_sigterm(*args)
            else:
                super().handle_sigterm(*args, **kwargs)

    return HostSigtermRunner(pause_on_shutdown=True)
