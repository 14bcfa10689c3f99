"""The Kubernetes backend on the real test cluster: the seed session with real Julia on the real
node (through the API and through the run_job flow), node types on kwok nodes, and each failure
ending with its own diagnosis. Every test runs in its own namespace with its own JULIARUN_HOME."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from kubernetes import client

import juliarun
from juliarun.api import Context
from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.backends.kubernetes.manifests import NODE_TYPE_LABEL, selector
from juliarun.errors import JobExistsError, JobFailedError, JobNotFoundError, SpecError
from juliarun.specs import Batch, JuliaBatch, JuliaParBatchWorkers
from tests.integration.fixtures._service import require
from tests.integration.fixtures.kubernetes import NodeFactory, wait_for

pytestmark = pytest.mark.kubernetes

POLL = 0.5


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A host directory (the real node is this machine) with the seed's scripts."""
    path = tmp_path / "code"
    path.mkdir()
    (path / "helloworld.jl").write_text('println("hello world!")\n')
    (path / "exit3.jl").write_text('println("about to fail"); flush(stdout); exit(3)\n')
    return path


def backend(ctx: Context) -> KubernetesBackend:
    assert isinstance(ctx.backend, KubernetesBackend)
    return ctx.backend


def poll_until(ctx: Context, name: str, predicate, polls: int, what: str):  # type: ignore[no-untyped-def]
    """Poll status at most ``polls`` times, POLL apart; the first status matching wins."""
    seen = []
    for _ in range(polls):
        status = juliarun.status(ctx, name)
        seen.append(f"{status} ({status.reason})")
        if predicate(status):
            return status
        time.sleep(POLL)
    pytest.fail(f"{what}: not within {polls} polls; saw {seen}")


def pods_exist(ctx: Context, name: str, count: int = 1) -> list[dict]:  # type: ignore[type-arg]
    b = backend(ctx)
    return wait_for(
        lambda: (pods := b.routes.job_pods(name)) and len(pods) >= count and pods,
        60,
        0.2,
        f"{count} pod(s) of {name}",
    )


def pod_condition(ctx: Context, name: str, kind: str, reason: str) -> bool:
    """Whether a pod of job ``name`` has condition ``kind`` False for ``reason``."""
    return any(
        c.get("type") == kind and c.get("status") == "False" and c.get("reason") == reason
        for pod in backend(ctx).routes.job_pods(name)
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def waiting_reason(ctx: Context, name: str) -> str | None:
    """Why the first container of job ``name``'s first pod waits (None: it does not)."""
    for pod in backend(ctx).routes.job_pods(name):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            return str(((cs.get("state") or {}).get("waiting") or {}).get("reason") or "") or None
    return None


# ---------------------------------------------------------------------------------------------
# The seed session on the real node, with real Julia
# ---------------------------------------------------------------------------------------------


def test_seed_session_on_the_real_node(kube_ctx: Context, code: Path) -> None:
    out = io.StringIO()
    view = juliarun.status(kube_ctx, verbose=True, out=out)
    text = out.getvalue()
    assert "Compute cluster: kubernetes (kubernetes)" in text
    assert {c.name for c in view.components} >= {"apiserver", "etcd"}
    assert all(c.healthy for c in view.components if c.name in {"apiserver", "etcd"})
    real = next(n for n in view.nodes if n.name == "juliarun-node")
    assert real.ready and 0 <= real.cpu <= 100 and 0 < real.dsk <= 100

    juliarun.define_storage(kube_ctx, name="code", kind="host", path=str(code))
    job = JuliaBatch("helloworld", "/mnt/code/helloworld.jl", "code", cpu="250m", memory="512Mi")
    assert str(juliarun.submit(kube_ctx, job)) == "created, 1 processes waiting"
    assert str(juliarun.submit(kube_ctx, job)).startswith(("created", "running", "succeeded"))
    assert juliarun.list(kube_ctx) == [job]

    final = juliarun.wait(kube_ctx, job, timeout=240)
    assert str(final) == "succeeded", final.describe()
    status = juliarun.status(kube_ctx, job)
    assert [(w.id, w.state, w.exit_code) for w in status.workers] == [
        ("helloworld-0", "succeeded", 0)
    ]
    out = io.StringIO()
    assert juliarun.tail(kube_ctx, job=job, out=out) == 1
    assert out.getvalue().rstrip().endswith(", helloworld-0, hello world!")

    other = JuliaBatch("helloworld", "/mnt/code/other.jl", "code")
    with pytest.raises(JobExistsError):
        juliarun.submit(kube_ctx, other)

    assert juliarun.delete(kube_ctx, job) is True
    assert juliarun.list(kube_ctx) == []
    assert backend(kube_ctx).routes.job_pods("helloworld") == []  # foreground: pods went first
    with pytest.raises(JobNotFoundError):
        juliarun.status(kube_ctx, job)


@pytest.mark.prefect_server
def test_seed_session_through_run_job(
    kube_ctx: Context, code: Path, prefect_api_url: str, kube_namespace: str
) -> None:
    from juliarun.flows import run_job
    from juliarun.specs import StorageSpec

    job = JuliaBatch("hello-flow", "/mnt/code/helloworld.jl", "code", cpu="250m", memory="512Mi")
    result = run_job(
        job,
        cluster="kubernetes",
        storage=[StorageSpec(name="code", kind="host", path=str(code))],
        timeout=240,
        delete_after=True,
    )
    assert result["status"] == "succeeded"
    assert result["workers"][0]["worker"] == "hello-flow-0"
    assert result["workers"][0]["exit_code"] == 0
    assert juliarun.list(kube_ctx) == []


@pytest.mark.prefect_server
def test_run_job_whose_job_fails_ends_failed_with_the_diagnosis(
    kube_ctx: Context, code: Path, prefect_api_url: str
) -> None:
    from juliarun.flows import run_job
    from juliarun.specs import StorageSpec

    job = JuliaBatch("fails-flow", "/mnt/code/exit3.jl", "code", cpu="100m", memory="512Mi")
    state = run_job(
        job,
        cluster="kubernetes",
        storage=[StorageSpec(name="code", kind="host", path=str(code))],
        timeout=240,
        return_state=True,
    )
    assert state.is_failed(), state
    assert "worker fails-flow-0 exited with code 3" in (state.message or ""), state.message
    with pytest.raises(JobFailedError) as info:
        state.result()
    assert info.value.last_lines == ["about to fail"]


def test_force_delete_releases_a_pod_whose_finalizer_is_held(kube_ctx: Context) -> None:
    """A terminating pod whose finalizer nobody removes (the job controller lagging under load
    looks the same) must not keep a forced delete waiting."""
    job = juliarun.Batch(
        "held",
        command=["sleep", "600"],
        image=os.environ["JULIARUN_BASE_IMAGE"],
        cpu="100m",
        memory="64Mi",
    )
    juliarun.submit(kube_ctx, job)
    b = backend(kube_ctx)
    pod = pods_exist(kube_ctx, "held")[0]["metadata"]["name"]
    b.client.merge_patch(
        b.routes.pods_path(pod, namespace=b.namespace),
        {"metadata": {"finalizers": ["juliarun.io/test-hold"]}},
    )
    assert juliarun.delete(kube_ctx, job, force=True) is True
    assert b.client.get_or_none(b.routes.pods_path(pod, namespace=b.namespace)) is None
    assert juliarun.list(kube_ctx) == []


def test_follow_interleaves_workers_until_the_job_ends(kube_ctx: Context, code: Path) -> None:
    (code / "count.jl").write_text(
        'for i in 1:3; println("w", ENV["JULIARUN_WORKER_INDEX"], " line ", i); '
        "flush(stdout); sleep(0.2); end\n"
    )
    juliarun.define_storage(kube_ctx, name="code", kind="host", path=str(code))
    job = JuliaParBatchWorkers(
        "counters", "/mnt/code/count.jl", "code", nworkers=2, cpu="100m", memory="256Mi"
    )
    juliarun.submit(kube_ctx, job)
    out = io.StringIO()
    printed = juliarun.tail(kube_ctx, job=job, follow=True, timeout=240, out=out)
    lines = out.getvalue().splitlines()
    assert printed == 6, lines
    assert {ln.split(", ")[1] for ln in lines} == {"counters-0", "counters-1"}
    assert juliarun.status(kube_ctx, job).phase == "succeeded"
    assert juliarun.delete(kube_ctx, job, force=True)


# ---------------------------------------------------------------------------------------------
# Node types on kwok nodes
# ---------------------------------------------------------------------------------------------


def typed_nodes(kwok_nodes: NodeFactory, kind: str, count: int, **extra: object) -> list[str]:
    taint = client.V1Taint(key=NODE_TYPE_LABEL, value=kind, effect="NoSchedule")
    return kwok_nodes(count, labels={NODE_TYPE_LABEL: kind}, taints=[taint], **extra)


@pytest.mark.kwok
def test_three_workers_land_on_highmem_nodes_only(
    kube_ctx: Context, kwok_nodes: NodeFactory
) -> None:
    highmem = typed_nodes(kwok_nodes, "highmem", 2, memory="512Gi")
    highcpu = typed_nodes(kwok_nodes, "highcpu", 2, cpu="64")
    job = JuliaParBatchWorkers(
        "wide", "/mnt/x/w.jl", nworkers=3, cpu="1", memory="64Gi", node_type="highmem"
    )
    juliarun.submit(kube_ctx, job)
    pods = wait_for(
        lambda: (
            (ps := backend(kube_ctx).routes.job_pods("wide"))
            and sum(1 for p in ps if p["spec"].get("nodeName")) == 3
            and ps
        ),
        60,
        0.3,
        "3 scheduled workers",
    )
    used = {p["spec"]["nodeName"] for p in pods}
    assert used <= set(highmem), used
    assert not used & set(highcpu)
    status = juliarun.status(kube_ctx, job)
    assert sorted(w.id for w in status.workers) == ["wide-0", "wide-1", "wide-2"]
    view = juliarun.status(kube_ctx)
    rows = {n.name: n for n in view.nodes}
    assert set(highmem) | set(highcpu) <= set(rows)
    assert all(rows[n].cpu == 100 and rows[n].ready for n in highcpu)  # nothing landed there
    assert juliarun.delete(kube_ctx, job, force=True)


@pytest.mark.kwok
def test_scale_changes_the_worker_count_while_it_runs(
    kube_ctx: Context, kwok_nodes: NodeFactory
) -> None:
    typed_nodes(kwok_nodes, "highcpu", 1)
    # kwok runs (and later completes) the workers; what counts is the Job following the scale
    job = JuliaParBatchWorkers("elastic", "/mnt/x/w.jl", nworkers=1, cpu="10m", node_type="highcpu")
    juliarun.submit(kube_ctx, job)
    juliarun.scale(kube_ctx, job, 3)
    pods_exist(kube_ctx, "elastic", 3)
    assert juliarun.list(kube_ctx)[0].nworkers == 3  # type: ignore[attr-defined]
    status = juliarun.status(kube_ctx, job)
    assert status.desired_workers == 3
    with pytest.raises(SpecError):
        juliarun.scale(kube_ctx, "elastic", 1001)
    assert juliarun.delete(kube_ctx, job, force=True)


@pytest.mark.kwok
def test_gpu_job_without_a_gpu_node_says_so_within_two_polls(
    kube_ctx: Context, kwok_nodes: NodeFactory
) -> None:
    typed_nodes(kwok_nodes, "highmem", 1)
    job = JuliaBatch("needs-gpu", "/mnt/x/train.jl", gpu=1, node_type="gpu")
    juliarun.submit(kube_ctx, job)
    pods_exist(kube_ctx, "needs-gpu")
    status = poll_until(kube_ctx, "needs-gpu", lambda s: s.done, 2, "the gpu diagnosis")
    assert status.phase == "failed"
    assert status.reason == "unschedulable: no node of type gpu"
    assert "juliarun.io/node-type=gpu" in (status.hint or "")


@pytest.mark.kwok
# serial: in the parallel phase its pod twice never became Unschedulable within 60 s (it passes
# alone in about a second); the cause is not found yet, see docs/testing.md
@pytest.mark.serial
def test_request_larger_than_any_node_is_a_resource_misfit(
    kube_ctx: Context, kwok_nodes: NodeFactory
) -> None:
    typed_nodes(kwok_nodes, "highmem", 1, memory="64Gi")
    job = JuliaBatch("too-big", "/mnt/x/big.jl", memory="100Gi", node_type="highmem")
    juliarun.submit(kube_ctx, job)
    pods_exist(kube_ctx, "too-big")
    # Once the scheduler has said so, status diagnoses it within two polls.
    wait_for(lambda: pod_condition(kube_ctx, "too-big", "PodScheduled", "Unschedulable"), 60, 0.2)
    status = poll_until(kube_ctx, "too-big", lambda s: s.done, 2, "the misfit diagnosis")
    assert "resource misfit" in (status.reason or ""), status.reason
    assert "memory=100Gi" in (status.reason or "")
    view = juliarun.status(kube_ctx)
    assert view.resource_misfit >= 1


# ---------------------------------------------------------------------------------------------
# Failures, each with its own diagnosis
# ---------------------------------------------------------------------------------------------


def test_job_over_quota_reports_the_quota(
    kube_ctx: Context, kube_core: client.CoreV1Api, kube_namespace: str
) -> None:
    kube_core.create_namespaced_resource_quota(
        kube_namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="small"),
            spec=client.V1ResourceQuotaSpec(hard={"requests.cpu": "1"}),
        ),
    )
    wait_for(
        lambda: kube_core.read_namespaced_resource_quota("small", kube_namespace).status.hard,
        30,
        0.2,
        "the quota to be counted",
    )
    # A job over the hard limit alone is refused at submit (test_tenants.py); this one fits
    # the quota, but not next to a pending pod that already holds 800m of it.
    kube_core.create_namespaced_pod(
        kube_namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="holder"),
            spec=client.V1PodSpec(
                node_selector={"juliarun.io/no-such-node": "true"},
                containers=[
                    client.V1Container(
                        name="c",
                        image="pause",
                        resources=client.V1ResourceRequirements(requests={"cpu": "800m"}),
                    )
                ],
            ),
        ),
    )
    job = Batch("greedy", ["true"], cpu="500m", memory="64Mi")
    juliarun.submit(kube_ctx, job)
    # Once the job controller has been refused a pod, status diagnoses it within two polls.
    wait_for(
        lambda: (
            kube_core.list_namespaced_event(
                kube_namespace, field_selector="involvedObject.name=greedy,reason=FailedCreate"
            ).items
        ),
        60,
        0.2,
        "the job controller's FailedCreate event",
    )
    status = poll_until(kube_ctx, "greedy", lambda s: s.done, 2, "the quota diagnosis")
    assert status.phase == "failed"
    assert status.reason.startswith("quota exceeded: exceeded quota: small"), status.reason
    assert f"raise the ResourceQuota small in namespace {kube_namespace}" in status.hint


def test_image_that_does_not_exist(kube_ctx: Context, kube_real_node: str) -> None:
    image = "localhost:5000/juliarun/does-not-exist:0.0.1"
    job = Batch("ghost", ["true"], image=image, cpu="10m", memory="32Mi")
    juliarun.submit(kube_ctx, job)
    # Once the kubelet has failed the pull, status diagnoses it within two polls.
    wait_for(
        lambda: waiting_reason(kube_ctx, "ghost") in {"ErrImagePull", "ImagePullBackOff"},
        120,
        0.2,
        "the kubelet's pull failure",
    )
    status = poll_until(kube_ctx, "ghost", lambda s: s.done, 2, "the pull diagnosis")
    assert status.reason.startswith(f"image pull failure: {image}"), status.reason
    assert "kubectl describe pod ghost-0-" in status.hint


def test_process_that_is_oomkilled(kube_ctx: Context, kube_real_node: str) -> None:
    base = os.environ.get("JULIARUN_BASE_IMAGE", "")
    require("images", lambda: None if base else "JULIARUN_BASE_IMAGE is not set")
    job = Batch(
        "hog",
        ["sh", "-c", "head -c 400m /dev/zero | tail"],  # tail keeps the whole "line"
        image=base,
        cpu="100m",
        memory="64Mi",
    )
    juliarun.submit(kube_ctx, job)
    status = juliarun.wait(kube_ctx, job, timeout=180)
    assert status.phase == "failed"
    assert status.reason == "OOMKilled: worker hog-0 ran out of memory (limit 64Mi)"
    assert "raise memory= above 64Mi" in status.hint
    assert status.workers[0].exit_code == 137


def test_script_that_exits_3(kube_ctx: Context, code: Path) -> None:
    juliarun.define_storage(kube_ctx, name="code", kind="host", path=str(code))
    job = JuliaBatch("fails", "/mnt/code/exit3.jl", "code", cpu="100m", memory="512Mi")
    juliarun.submit(kube_ctx, job)
    status = juliarun.wait(kube_ctx, job, timeout=240)
    assert status.phase == "failed"
    assert status.reason == "worker fails-0 exited with code 3"
    assert status.last_lines == ["about to fail"]
    assert status.workers[0].exit_code == 3 and status.workers[0].restarts == 0
    # the pod failure policy failed the Job at once: no retry pod
    assert len(backend(kube_ctx).routes.job_pods("fails")) == 1
    assert "juliarun tail fails" in status.hint


def test_cluster_view_from_the_cli(kube_ctx: Context, kube_namespace: str) -> None:
    from typer.testing import CliRunner

    from juliarun.cli import app

    result = CliRunner().invoke(app, ["status", "--cluster", "kubernetes"])
    assert result.exit_code == 0, result.output
    assert "Pods waiting" in result.output
    assert "juliarun-node" in result.output
    assert selector() == "app.kubernetes.io/managed-by=juliarun"
