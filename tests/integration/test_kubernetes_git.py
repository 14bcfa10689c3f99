"""Network git storage on the real Kubernetes node: the ref is resolved (and checked) where
juliarun runs, then every pod's init container (the git image) clones the repository at that
commit into the storage's emptyDir — served here by a real ``git daemon`` on the address pods
reach this machine at. A path or ``file://`` URL is mounted from the node instead (see
test_kubernetes_backend)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import juliarun
from juliarun.api import Context
from juliarun.backends.kubernetes import KubernetesBackend
from juliarun.backends.kubernetes.volumes import Volumes
from juliarun.errors import StorageError
from juliarun.specs import Batch
from tests.integration.fixtures.kubernetes import GitServer, wait_for
from tests.integration.git_repos import commit, git, make_repo

pytestmark = pytest.mark.kubernetes


def backend(ctx: Context) -> KubernetesBackend:
    assert isinstance(ctx.backend, KubernetesBackend)
    return ctx.backend


def pod_spec(ctx: Context, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = backend(ctx).client.get(backend(ctx).routes.jobs_path(name))["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def output(ctx: Context, name: str) -> list[str]:
    return [line.message for line in backend(ctx).logs(name)]


def within_two_polls(ctx: Context, name: str, predicate: Callable[[Any], bool]) -> Any:
    """The job's first status matching ``predicate``, polled at most twice (0.5 s apart): the
    README's promise once the cluster shows the cause."""
    seen = []
    for _ in range(2):
        status = juliarun.status(ctx, name)
        if predicate(status):
            return status
        seen.append(f"{status} ({status.reason})")
        time.sleep(0.5)
    pytest.fail(f"{name}: not diagnosed within two polls; saw {seen}")


def init_exit_code(ctx: Context, name: str) -> int | None:
    """The exit code of the git init container of job ``name``'s pod, once it ended."""
    for pod in backend(ctx).routes.job_pods(name):
        for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                if "terminated" in state:
                    return int(state["terminated"]["exitCode"])
    return None


def pod_events(ctx: Context, name: str, reason: str) -> list[dict[str, Any]]:
    """Events ``reason`` about the pods of job ``name``."""
    b = backend(ctx)
    pods = {pod["metadata"]["name"] for pod in b.routes.job_pods(name)}
    events = b.client.get(f"/api/v1/namespaces/{b.namespace}/events")["items"]
    return [
        e
        for e in events
        if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") in pods
    ]


def test_pods_clone_network_git_storage_at_the_resolved_commit(
    kube_ctx: Context, git_server: GitServer, kube_git_image: str
) -> None:
    repo = git_server.root / "data"
    make_repo(repo)
    juliarun.define_storage(kube_ctx, name="repo", kind="git", url=f"{git_server.url}data")
    job = Batch(
        "gitcat",
        ["sh", "-c", "cat /mnt/repo/data.txt; touch /mnt/repo/x 2>/dev/null || echo read-only"],
        "repo",
    )
    juliarun.submit(kube_ctx, job)
    final = juliarun.wait(kube_ctx, job, timeout=180)
    assert str(final) == "succeeded", final.describe()
    assert output(kube_ctx, job.name) == ["from git", "read-only"]
    pod = pod_spec(kube_ctx, job.name)
    [init] = pod["initContainers"]
    assert init["image"] == kube_git_image
    head = git(repo, "rev-parse", "HEAD")
    assert {"name": "CLONE_COMMIT", "value": head} in init["env"]

    # A new commit on the ref is what the next job's pods clone.
    newer = commit(repo, "data.txt", "newer\n")
    again = Batch("gitcat2", ["cat", "/mnt/repo/data.txt"], "repo")
    juliarun.submit(kube_ctx, again)
    assert str(juliarun.wait(kube_ctx, again, timeout=180)) == "succeeded"
    assert output(kube_ctx, again.name) == ["newer"]
    pod = pod_spec(kube_ctx, again.name)
    assert {"name": "CLONE_COMMIT", "value": newer} in pod["initContainers"][0]["env"]


def test_a_ref_that_does_not_exist_fails_before_anything_is_created(
    kube_ctx: Context, git_server: GitServer
) -> None:
    make_repo(git_server.root / "data")
    juliarun.define_storage(
        kube_ctx, name="repo", kind="git", url=f"{git_server.url}data", ref="no-such-branch"
    )
    with pytest.raises(StorageError, match="git ref 'no-such-branch' not found"):
        juliarun.submit(kube_ctx, Batch("nope", ["true"], "repo"))
    assert juliarun.list(kube_ctx) == []


def test_a_clone_that_fails_in_the_pod_is_diagnosed(
    kube_ctx: Context, git_server: GitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit resolved here is gone from the server by the time the pod clones (history
    rewritten in between): the init container fails and status says which storage and why."""
    make_repo(git_server.root / "data")
    juliarun.define_storage(kube_ctx, name="repo", kind="git", url=f"{git_server.url}data")
    real = Volumes.git_checkout
    monkeypatch.setattr(
        Volumes,
        "git_checkout",
        lambda self, spec: (real(self, spec)[0], "0" * 40),  # a commit the server lacks
    )
    job = Batch("gitgone", ["true"], "repo", restart="Never", backoff_limit=0)
    juliarun.submit(kube_ctx, job)
    wait_for(lambda: init_exit_code(kube_ctx, "gitgone") == 128, 180, 0.2, "the failed clone")
    # The cause is known within two polls; the job ends when the Job controller fails it.
    clone_failed = "git clone of storage 'repo' failed (exit code 128)"
    early = within_two_polls(
        kube_ctx, "gitgone", lambda s: (s.reason or "").startswith(clone_failed)
    )
    assert "reference is not a tree: " + "0" * 40 in early.reason
    final = juliarun.wait(kube_ctx, job, timeout=60)
    assert final.phase == "failed", final.describe()
    assert final.reason is not None
    assert final.reason.startswith(clone_failed)
    assert "kubectl logs" in (final.hint or "") and "-c git-repo" in (final.hint or "")


def test_a_checkout_missing_on_the_node_is_diagnosed_not_waited_on(
    kube_ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local path's checkout is mounted from the node; where the node lacks it (a cluster
    whose node is another machine, here simulated by a path nowhere) the kubelet's FailedMount
    event becomes the job's failure with what works on several nodes."""
    juliarun.define_storage(kube_ctx, name="repo", kind="git", url=make_repo(tmp_path / "origin"))
    missing = tmp_path / "not-on-the-node"
    real = Volumes.git_checkout
    monkeypatch.setattr(Volumes, "git_checkout", lambda self, spec: (missing, real(self, spec)[1]))
    job = Batch("nomount", ["true"], "repo")
    juliarun.submit(kube_ctx, job)
    wait_for(lambda: pod_events(kube_ctx, "nomount", "FailedMount"), 120, 0.2, "FailedMount")
    final = within_two_polls(kube_ctx, "nomount", lambda s: s.done)  # failed at once
    assert final.phase == "failed", final.describe()
    assert final.reason is not None
    assert final.reason.startswith(
        "cannot mount storage 'repo' for worker nomount-0 on node juliarun-node: "
        "hostPath type check failed"
    ), final.reason
    assert str(missing) in final.reason
    assert "network git URL" in (final.hint or "")
