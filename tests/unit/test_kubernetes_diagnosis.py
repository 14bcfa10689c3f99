"""Diagnosis from objects recorded on the test cluster (tests/unit/data/kubernetes/*.json, made by
running each scenario on the real node / apiserver): Job, pods, Job events and nodes in, status
with reason and hint out."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from juliarun.backends.base import DiagnosisCategory as C
from juliarun.backends.kubernetes.clusterview import node_status
from juliarun.backends.kubernetes.diagnosis import (
    create_problem,
    diagnose,
    init_problem,
    mount_problem,
    parse_scheduler_message,
    pod_problem,
    unschedulable,
    waiting_kind,
)
from juliarun.backends.kubernetes.watch import Cursor, advance, after_disconnect

DATA = Path(__file__).parent / "data" / "kubernetes"


def recorded(case: str) -> dict[str, Any]:
    return json.loads((DATA / f"{case}.json").read_text())  # type: ignore[no-any-return]


def run(case: str, **override: Any) -> Any:
    d = {**recorded(case), **override}
    return diagnose(d["job"], d["pods"], d["events"], d["nodes"])


def test_succeeded() -> None:
    report = run("succeeded")
    status = report.status
    assert (status.phase, status.reason, report.log_pod) == ("succeeded", None, None)
    assert status.category is None and report.diagnosis is None
    [w] = status.workers
    assert (w.id, w.state, w.exit_code, w.restarts) == ("hello-0", "succeeded", 0, 0)
    assert w.duration is not None and w.duration >= 0
    assert status.finished_at is not None


def test_nonzero_exit_names_the_worker_and_asks_for_the_last_lines() -> None:
    report = run("exit3")
    assert report.status.phase == "failed"
    assert report.status.reason == "worker fails-0 exited with code 3"
    assert report.log_pod and report.log_pod.startswith("fails-0-")
    assert "juliarun tail fails" in (report.status.hint or "")
    assert report.status.workers[0].exit_code == 3
    assert report.status.category == C.EXIT_CODE
    assert report.diagnosis is not None and report.diagnosis.detail == "exit code 3"


def test_oomkilled() -> None:
    status = run("oomkilled").status
    assert status.phase == "failed"
    assert status.reason == "OOMKilled: worker hog-0 ran out of memory (limit 64Mi)"
    assert "raise memory= above 64Mi" in (status.hint or "")
    assert "kubectl describe pod hog-0-" in (status.hint or "")
    assert status.workers[0].reason == "OOMKilled"
    assert status.category == C.OOM_KILLED


def test_image_that_does_not_exist_fails_at_once() -> None:
    status = run("image_pull").status
    assert status.phase == "failed"
    assert status.reason is not None
    assert status.reason.startswith(
        "image pull failure: localhost:5000/juliarun/does-not-exist:0.0.1: ErrImagePull"
    )
    assert "exists in its registry" in (status.hint or "")
    assert status.category == C.IMAGE_PULL


def test_transient_pull_error_keeps_waiting() -> None:
    data = recorded("image_pull")
    pod = copy.deepcopy(data["pods"][0])
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    waiting.update(reason="ImagePullBackOff", message="Back-off pulling image: i/o timeout")
    status = diagnose(data["job"], [pod], [], data["nodes"]).status
    assert status.phase == "created"
    assert status.reason is not None and status.reason.startswith("image pull failure")
    assert status.category == C.IMAGE_PULL


def test_crashloop_is_reported_while_restarts_remain() -> None:
    status = run("crashloop").status
    assert status.phase == "running"
    assert status.reason is not None
    assert status.reason.startswith("CrashLoopBackOff: worker crashy-0 keeps failing (exit code 1")
    assert "--previous" in (status.hint or "")
    assert status.workers[0].state == "restarting"
    assert status.category == C.CRASH_LOOP


def test_a_crashloop_the_job_ended_reads_as_its_last_exit() -> None:
    """The Job controller marks the Job failed past its backoff limit while the kubelet still
    shows the container waiting in CrashLoopBackOff: no restart comes, the last exit is why."""
    data = recorded("crashloop")
    job = copy.deepcopy(data["job"])
    job.setdefault("status", {})["conditions"] = [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"},
    ]  # fmt: skip
    status = diagnose(job, data["pods"], [], data["nodes"]).status
    assert (status.phase, status.reason) == ("failed", "worker crashy-0 exited with code 1")
    assert status.category == C.EXIT_CODE


def test_no_node_of_the_type() -> None:
    status = run("no_gpu_node").status
    assert (status.phase, status.reason) == ("failed", "unschedulable: no node of type gpu")
    assert "juliarun.io/node-type=gpu" in (status.hint or "")
    assert status.category == C.NO_SUCH_NODE_TYPE


def test_no_node_of_the_type_is_known_before_the_scheduler_speaks() -> None:
    data = recorded("no_gpu_node")
    pod = copy.deepcopy(data["pods"][0])
    pod["status"]["conditions"] = []
    status = diagnose(data["job"], [pod], [], data["nodes"]).status
    assert status.reason == "unschedulable: no node of type gpu"
    assert (status.phase, status.category) == ("failed", C.NO_SUCH_NODE_TYPE)


def test_request_beyond_every_node_is_a_misfit() -> None:
    status = run("cpu_misfit").status
    assert status.phase == "failed"
    assert status.reason == (
        "unschedulable: resource misfit: each worker asks cpu=64 (largest node: 2), "
        "more than any node has"
    )
    assert status.category == C.RESOURCE_MISFIT


def test_insufficient_now_but_fits_an_empty_node_waits_for_free_nodes() -> None:
    data = recorded("cpu_misfit")
    nodes = copy.deepcopy(data["nodes"])
    for node in nodes:
        node["status"]["allocatable"]["cpu"] = "128"
    status = diagnose(data["job"], data["pods"], [], nodes).status
    assert status.phase == "created"
    assert status.reason == "unschedulable: insufficient cpu on 1 node(s) (waiting for free nodes)"
    assert status.category == C.WAITING_FOR_NODES
    assert waiting_kind(data["pods"][0], nodes) == "nodes"
    assert waiting_kind(data["pods"][0], data["nodes"]) == "misfit"


def test_without_node_access_the_scheduler_message_is_used() -> None:
    status = run("cpu_misfit", nodes=None).status
    assert status.phase == "created"
    assert status.reason == "unschedulable: insufficient cpu on 1 node(s) (waiting for free nodes)"
    assert status.category == C.WAITING_FOR_NODES


def test_quota_exceeded_names_the_quota() -> None:
    status = run("quota").status
    assert status.phase == "failed"
    assert status.reason is not None
    assert status.reason.startswith(
        "quota exceeded: exceeded quota: small, requested: requests.cpu=2"
    )
    assert "raise the ResourceQuota small in namespace jr-record-" in (status.hint or "")
    assert status.category == C.QUOTA_EXCEEDED


def test_events_of_an_earlier_job_do_not_count_once_pods_exist() -> None:
    data = recorded("succeeded")
    quota_events = recorded("quota")["events"]
    status = diagnose(data["job"], data["pods"], quota_events, data["nodes"]).status
    assert (status.phase, status.category) == ("succeeded", None)


def test_waiting_for_the_job_controller_and_the_scheduler() -> None:
    data = recorded("succeeded")
    job = copy.deepcopy(data["job"])
    job["status"] = {}
    assert diagnose(job, []).status.reason == "waiting for the job controller to create pods"
    assert diagnose(job, []).status.category == C.WAITING_FOR_CONTROLLER
    pod = copy.deepcopy(data["pods"][0])
    pod["spec"].pop("nodeName")
    pod["status"] = {"phase": "Pending"}
    status = diagnose(job, [pod], [], data["nodes"]).status
    assert (str(status), status.reason) == ("created, 1 processes waiting", "waiting for scheduler")
    assert status.category == C.WAITING_FOR_SCHEDULER
    assert waiting_kind(pod, data["nodes"]) == "scheduler"


@pytest.mark.parametrize(
    ("message", "insufficient", "taints", "mismatch"),
    [
        (
            "0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption: "
            "0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
            {"cpu": 1},
            [],
            0,
        ),
        (
            "0/4 nodes are available: 2 Insufficient memory, 2 Insufficient nvidia.com/gpu.",
            {"memory": 2, "nvidia.com/gpu": 2},
            [],
            0,
        ),
        (
            "0/2 nodes are available: 1 node(s) had untolerated taint {a: b}, 1 node(s) didn't "
            "match Pod's node affinity/selector.",
            {},
            ["a: b"],
            1,
        ),
        ("0/3 nodes are available: 3 Too many pods.", {"pods": 3}, [], 0),
    ],
)
def test_scheduler_messages(
    message: str, insufficient: dict[str, int], taints: list[str], mismatch: int
) -> None:
    parsed = parse_scheduler_message(message)
    assert parsed.insufficient == insufficient
    assert parsed.taints == taints
    assert parsed.selector_mismatch == mismatch


def test_free_percentages_of_a_node() -> None:
    data = recorded("succeeded")
    node = next(n for n in data["nodes"] if n["metadata"]["name"] == "juliarun-node")
    node = copy.deepcopy(node)
    node["status"]["allocatable"].update({"cpu": "2", "memory": "4Gi", "pods": "10"})
    pod = {"spec": {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}}
    row = node_status(node, [pod], disk_free=0.42)
    assert (row.cpu, row.mem, row.pod, row.dsk, row.gpu, row.ready) == (75, 75, 90, 42, 0, True)
    assert row.labels == {"juliarun.io/node-kind": "real"}


# -- watch resume, from recorded events --------------------------------------------------------

EVENTS = [  # a pod watch as the apiserver sent it, then the apiserver restarted (stream ended)
    {"type": "ADDED", "object": {"metadata": {"name": "w-0-a", "resourceVersion": "1201"}}},
    {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "1250"}}},
    {"type": "MODIFIED", "object": {"metadata": {"name": "w-0-a", "resourceVersion": "1262"}}},
]
EXPIRED = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "status": "Failure",
        "reason": "Expired",
        "code": 410,
        "message": "too old resource version: 1262 (1900)",
    },
}


def test_watch_resumes_from_the_last_version_after_a_restart() -> None:
    cursor = Cursor("1200")
    delivered = []
    for event in EVENTS:
        cursor, obj = advance(cursor, event)
        if obj is not None:
            delivered.append(obj["metadata"]["resourceVersion"])
    assert delivered == ["1201", "1262"]  # the bookmark moved the cursor, delivered nothing
    resumed = after_disconnect(cursor)
    assert resumed == Cursor("1262")  # the next watch starts after what was seen: no dupes


def test_an_expired_version_forces_a_relist() -> None:
    cursor, obj = advance(Cursor("1262"), EXPIRED)
    assert obj is None
    assert cursor.relist and cursor.resource_version is None


def test_other_errors_keep_the_cursor() -> None:
    error = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "reason": "InternalError"}}
    assert advance(Cursor("7"), error) == (Cursor("7"), None)


def _pending_pod(memory: str) -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": "job-0-abcde"},
        "spec": {
            "nodeSelector": {"juliarun.io/node-type": "highmem"},
            "tolerations": [
                {
                    "key": "juliarun.io/node-type",
                    "operator": "Equal",
                    "value": "highmem",
                    "effect": "NoSchedule",
                }
            ],
            "containers": [{"name": "main", "resources": {"requests": {"memory": memory}}}],
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 node(s) had untolerated taint "
                    "{node.kubernetes.io/not-ready: }.",
                }
            ],
        },
    }


def _not_ready_highmem_node() -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": "fake-0", "labels": {"juliarun.io/node-type": "highmem"}},
        "spec": {
            "taints": [
                {"key": "juliarun.io/node-type", "value": "highmem", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
            ]
        },
        "status": {"allocatable": {"memory": "64Gi", "cpu": "8", "pods": "110"}},
    }


def test_a_node_that_is_not_ready_yet_still_shows_a_misfit() -> None:
    problem = unschedulable(_pending_pod("100Gi"), [_not_ready_highmem_node()], "ns")
    assert problem.fatal
    assert "resource misfit" in problem.reason and "memory=100Gi" in problem.reason
    assert problem.category == C.RESOURCE_MISFIT


def test_a_job_that_fits_a_node_that_is_not_ready_waits() -> None:
    problem = unschedulable(_pending_pod("1Gi"), [_not_ready_highmem_node()], "ns")
    assert not problem.fatal
    assert "waiting for a matching node to become schedulable (not-ready)" in problem.reason
    assert problem.category == C.NODE_NOT_SCHEDULABLE
    assert problem.detail is not None and "untolerated taint" in problem.detail


# -- categories of the diagnoses the recorded cases do not cover --------------------------------


def _labelled_pod(selector: dict[str, str], message: str, tolerations: Any = ()) -> dict[str, Any]:
    pod = _pending_pod("1Gi")
    pod["spec"]["nodeSelector"] = selector
    pod["spec"]["tolerations"] = list(tolerations)
    pod["status"]["conditions"][0]["message"] = message
    return pod


def test_no_node_with_the_labels() -> None:
    pod = _labelled_pod({"disk": "ssd"}, "0/1 nodes are available: 1 node(s) didn't match")
    problem = unschedulable(pod, [_not_ready_highmem_node()], "ns")
    assert (problem.category, problem.fatal) == (C.NO_NODE_WITH_LABELS, True)
    assert problem.reason == "unschedulable: no node has the labels disk=ssd"


def test_an_untolerated_taint_on_every_matching_node() -> None:
    node = _not_ready_highmem_node()
    pod = _labelled_pod({"juliarun.io/node-type": "highmem"}, "0/1 nodes are available")
    problem = unschedulable(pod, [node], "ns")
    assert (problem.category, problem.fatal) == (C.UNTOLERATED_TAINT, True)
    assert problem.reason == (
        "unschedulable: every matching node has a taint the job does not tolerate "
        "(juliarun.io/node-type=highmem:NoSchedule)"
    )


@pytest.mark.parametrize(
    ("node_type", "message", "category", "reason"),
    [
        (
            None,
            "0/2 nodes are available: 2 node(s) had untolerated taint {a: b}.",
            C.UNTOLERATED_TAINT,
            "unschedulable: untolerated taint a: b",
        ),
        (
            "gpu",
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
            C.WAITING_FOR_NODES,
            "unschedulable: no free node of type gpu",
        ),
        (
            None,
            "0/1 nodes are available: 1 node(s) had volume node affinity conflict.",
            C.UNSCHEDULABLE,
            "unschedulable: 0/1 nodes are available: 1 node(s) had volume node affinity conflict.",
        ),
    ],
)
def test_scheduler_messages_without_node_access(
    node_type: str | None, message: str, category: C, reason: str
) -> None:
    selector = {"juliarun.io/node-type": node_type} if node_type else {}
    problem = unschedulable(_labelled_pod(selector, message), None, "ns")
    assert (problem.category, problem.reason, problem.fatal) == (category, reason, False)
    assert problem.detail == message


def _failing_pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "j-0-abcde",
            "labels": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "julia:1.5.3"}]},
        "status": status,
    }


def test_a_container_that_cannot_be_created() -> None:
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "s" not found'}
    pod = _failing_pod(
        phase="Pending", containerStatuses=[{"name": "main", "state": {"waiting": waiting}}]
    )
    problem = pod_problem(pod, "j", "ns", "Never")
    assert problem is not None
    assert (problem.category, problem.fatal) == (C.CONTAINER_CREATE_FAILED, True)
    assert (
        problem.reason
        == 'cannot start worker j-0: CreateContainerConfigError: secret "s" not found'
    )


def test_a_pod_that_failed_without_its_container_ending() -> None:
    pod = _failing_pod(phase="Failed", reason="Evicted", message="The node was low on memory.")
    problem = pod_problem(pod, "j", "ns", "OnFailure")
    assert problem is not None
    assert problem.category == C.POD_FAILED
    assert problem.reason == "worker j-0 failed: Evicted: The node was low on memory."
    assert problem.detail == "The node was low on memory."


def test_git_clones_that_fail() -> None:
    pod = _failing_pod(
        phase="Pending",
        initContainerStatuses=[
            {"name": "git-code", "state": {"terminated": {"exitCode": 128, "message": "fatal"}}}
        ],
    )
    pod["spec"]["initContainers"] = [{"name": "git-code", "image": "alpine/git"}]
    problem = init_problem(pod, "ns")
    assert problem is not None and problem.category == C.GIT_CLONE_FAILED
    assert problem.reason == "git clone of storage 'code' failed (exit code 128): fatal"
    waiting = {"reason": "ErrImagePull", "message": "not found"}
    pod["status"]["initContainerStatuses"][0]["state"] = {"waiting": waiting}
    problem = init_problem(pod, "ns")
    assert problem is not None and problem.category == C.IMAGE_PULL
    assert (
        problem.reason
        == "image pull failure: alpine/git (clones storage 'code'): ErrImagePull: not found"
    )


def test_storage_that_does_not_mount() -> None:
    pod = _failing_pod(phase="Pending")
    event = {
        "reason": "FailedMount",
        "involvedObject": {"kind": "Pod", "name": "j-0-abcde"},
        "message": 'MountVolume.SetUp failed for volume "st-data" : nfs: access denied',
    }
    problem = mount_problem(pod, [event], "j", "ns")
    assert problem is not None
    assert (problem.category, problem.fatal) == (C.MOUNT_FAILED, False)
    assert (
        problem.reason
        == "cannot mount storage 'data' for worker j-0 on node n1: nfs: access denied"
    )
    event["message"] = (
        'MountVolume.SetUp failed for volume "st-data" : hostPath type check failed: '
        "/srv/data is not a directory"
    )
    problem = mount_problem(pod, [event], "j", "ns")
    assert problem is not None
    assert (problem.category, problem.fatal) == (C.STORAGE_MISSING_ON_NODE, True)
    assert problem.detail == event["message"]


def test_pods_that_cannot_be_created() -> None:
    event = {
        "reason": "FailedCreate",
        "involvedObject": {"kind": "Job", "name": "j"},
        "message": 'Error creating: pods "j-0-x" is forbidden: violates PodSecurity "restricted"',
    }
    problem = create_problem([event], "ns")
    assert problem is not None
    assert (problem.category, problem.fatal) == (C.POD_CREATE_FAILED, True)
    assert problem.reason.startswith("cannot create pods: Error creating: pods")


def test_a_job_the_controller_failed_with_no_worker_to_blame() -> None:
    data = recorded("succeeded")
    job = copy.deepcopy(data["job"])
    job["status"] = {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline",
            }
        ]
    }
    report = diagnose(job, [], [], data["nodes"])
    assert report.status.phase == "failed"
    assert report.status.reason == "DeadlineExceeded: Job was active longer than specified deadline"
    assert report.status.category == C.JOB_FAILED
    assert report.diagnosis is not None and report.diagnosis.detail == "DeadlineExceeded"


def test_a_missing_node_type_is_known_by_its_category_before_the_scheduler_speaks() -> None:
    """``missing_node`` goes by the category of the diagnosis, not by its text."""
    data = recorded("cpu_misfit")
    pod = copy.deepcopy(data["pods"][0])
    pod["status"]["conditions"] = []
    assert diagnose(data["job"], [pod], [], data["nodes"]).status.phase != "failed"
    pod["spec"]["nodeSelector"] = {"disk": "ssd"}
    status = diagnose(data["job"], [pod], [], data["nodes"]).status
    assert (status.phase, status.category) == ("failed", C.NO_NODE_WITH_LABELS)
