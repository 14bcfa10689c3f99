"""Pure diagnosis: from a Job, its pods, its events and the nodes (plain dicts as the apiserver
sends them) to a :class:`~juliarun.backends.base.JobStatus` with a reason, a hint and the
reason's :class:`~juliarun.backends.base.DiagnosisCategory` (code matches on the category, never
on the reason's text).

What is recognised, and what the hint says:

- waiting for the job controller / the scheduler (nothing to do yet);
- unschedulable: no node of the job's type, no node with its custom labels, a request larger than
  any matching node (resource misfit), insufficient cpu/memory/gpu right now (waiting for free
  nodes), an untolerated taint — from the pod's ``PodScheduled=False`` message and the nodes;
- quota exceeded (``FailedCreate`` events on the Job) — the quota to raise;
- image pull failure (``ErrImagePull`` / ``ImagePullBackOff`` / ``InvalidImageName``);
- ``CrashLoopBackOff``; ``OOMKilled``; a non-zero exit (the caller adds the last log lines);
- a git clone that fails in a pod's init container (the git error);
- storage that cannot be mounted on the pod's node (``FailedMount`` events on the pod): the
  storage it is and, for a hostPath that is not on that node, what works on several nodes;
- each with the ``kubectl describe`` to run.

Problems nobody but a person can fix (no node of the type, misfit, quota exceeded, an image that
does not exist) make the job ``failed`` at once, although Kubernetes would keep trying: a job
that cannot start must not make ``wait`` or the ``run_job`` flow hang.

>>> pod = {"metadata": {"name": "x-0-abc", "labels": {INDEX_LABEL: "0"}},
...        "spec": {"nodeSelector": {"juliarun.io/node-type": "gpu"}},
...        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
...            "status": "False", "reason": "Unschedulable", "message":
...            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]}}
>>> job = {"metadata": {"name": "x", "namespace": "jr", "labels": {"juliarun.io/node-type":
...        "gpu", "juliarun.io/kind": "JuliaBatch"}}, "spec": {"completions": 1}, "status": {}}
>>> report = diagnose(job, [pod], nodes=[])
>>> report.status.phase, report.status.reason
('failed', 'unschedulable: no node of type gpu')
>>> report.status.category
<DiagnosisCategory.NO_SUCH_NODE_TYPE: 'no_such_node_type'>
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from juliarun.backends.base import (
    Diagnosis,
    DiagnosisCategory,
    JobStatus,
    WorkerState,
    WorkerStatus,
)
from juliarun.backends.kubernetes import manifests as mf
from juliarun.scaling import placement as pl
from juliarun.specs import parse_quantity

INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
NODE_TYPE_LABEL = "juliarun.io/node-type"
MAIN = "main"
Obj = Mapping[str, Any]
Waiting = Literal["scheduler", "nodes", "misfit"]

_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CREATE_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
_CLAUSE = re.compile(r"(\d+) (.+)")


def ts(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the apiserver as an aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _cond(obj: Obj, kind: str) -> Obj | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == kind:
            return c  # type: ignore[no-any-return]
    return None


def condition_true(obj: Obj, kind: str) -> bool:
    """Whether condition ``kind`` of an object (a Job, a pod, a node) has status ``True``."""
    c = _cond(obj, kind)
    return c is not None and c.get("status") == "True"


def main_container(pod: Obj) -> Obj:
    """The status of the pod's ``main`` container (else its first container's, else empty)."""
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if cs.get("name") == MAIN:
            return cs  # type: ignore[no-any-return]
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0]  # type: ignore[no-any-return]


def pod_name(pod: Obj) -> str:
    return str(pod.get("metadata", {}).get("name", ""))


def worker_index(pod: Obj) -> int:
    labels = pod.get("metadata", {}).get("labels") or {}
    annotations = pod.get("metadata", {}).get("annotations") or {}
    value = labels.get(INDEX_LABEL) or annotations.get(INDEX_LABEL) or "0"
    try:
        return int(value)
    except ValueError:
        return 0


def worker_id(job_name: str, pod: Obj) -> str:
    return f"{job_name}-{worker_index(pod)}"


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def worker_from_pod(job_name: str, pod: Obj, earlier: int = 0) -> WorkerStatus:
    """One worker from its newest pod; ``earlier`` pods of the same index count as restarts."""
    status = pod.get("status", {})
    cs = main_container(pod)
    state = cs.get("state") or {}
    phase = status.get("phase")
    worker = WorkerStatus(
        id=worker_id(job_name, pod),
        restarts=int(cs.get("restartCount") or 0) + earlier,
        started_at=ts(status.get("startTime")),
    )
    ws: WorkerState = "waiting"
    if pod.get("metadata", {}).get("deletionTimestamp") and phase not in {"Succeeded", "Failed"}:
        ws = "removed"
    elif phase == "Succeeded":
        ws = "succeeded"
    elif phase == "Failed":
        ws = "failed"
    elif "running" in state:
        ws = "running"
        worker.started_at = ts(state["running"].get("startedAt")) or worker.started_at
    elif "waiting" in state:
        reason = state["waiting"].get("reason")
        ws = "restarting" if reason == "CrashLoopBackOff" or worker.restarts else "waiting"
        worker.reason = reason if reason not in {None, "ContainerCreating"} else None
    elif "terminated" in state:
        ws = "succeeded" if state["terminated"].get("exitCode") == 0 else "failed"
    term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
    if term:
        worker.exit_code = term.get("exitCode")
        if ws in {"succeeded", "failed"}:
            worker.started_at = ts(term.get("startedAt")) or worker.started_at
            worker.finished_at = ts(term.get("finishedAt"))
        if term.get("reason") and term.get("reason") != "Completed":
            worker.reason = worker.reason or term.get("reason")
    elif phase == "Failed":
        worker.reason = status.get("reason") or status.get("message")
    worker.state = ws
    return worker


def newest_pods(pods: Iterable[Obj]) -> list[tuple[Obj, int]]:
    """Per worker index, its newest pod and how many older pods it had, by index."""
    by_index: dict[int, list[Obj]] = {}
    for pod in pods:
        by_index.setdefault(worker_index(pod), []).append(pod)
    out = []
    for index in sorted(by_index):
        group = sorted(by_index[index], key=lambda p: p["metadata"].get("creationTimestamp", ""))
        out.append((group[-1], len(group) - 1))
    return out


# ---------------------------------------------------------------------------------------------
# Scheduling
# ---------------------------------------------------------------------------------------------


@dataclass
class SchedulerMessage:
    """A parsed ``0/N nodes are available: ...`` message of the scheduler."""

    total: int | None = None
    insufficient: dict[str, int] = field(default_factory=dict)
    selector_mismatch: int = 0
    taints: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


def parse_scheduler_message(message: str) -> SchedulerMessage:
    """
    >>> m = parse_scheduler_message("0/3 nodes are available: 1 Insufficient cpu, 1 node(s) "
    ...     "had untolerated taint {kwok.x-k8s.io/node: fake}, 1 node(s) didn't match Pod's "
    ...     "node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not "
    ...     "helpful for scheduling.")
    >>> m.total, m.insufficient, m.taints, m.selector_mismatch
    (3, {'cpu': 1}, ['kwok.x-k8s.io/node: fake'], 1)
    """
    out = SchedulerMessage()
    head = re.match(r"\s*0/(\d+) nodes are available:?\s*(.*)", message, re.DOTALL)
    if not head:
        if message:
            out.other.append(message)
        return out
    out.total = int(head.group(1))
    # the first sentence lists why each node failed; later ones (claims, preemption) do not
    body = re.split(r"\.(?:\s|$)", head.group(2), maxsplit=1)[0].strip()
    for clause in re.split(r",\s*(?=\d+ )", body):
        m = _CLAUSE.fullmatch(clause.strip())
        if not m:
            if clause.strip():
                out.other.append(clause.strip())
            continue
        count, text = int(m.group(1)), m.group(2)
        if text.startswith("Insufficient "):
            resource = text[len("Insufficient ") :].strip()
            out.insufficient[resource] = out.insufficient.get(resource, 0) + count
        elif text.startswith("Too many pods"):
            out.insufficient["pods"] = out.insufficient.get("pods", 0) + count
        elif "didn't match Pod's node affinity/selector" in text:
            out.selector_mismatch += count
        elif "untolerated taint" in text:
            taint = re.search(r"\{(.*)\}", text)
            out.taints.append(taint.group(1) if taint else text)
        else:
            out.other.append(text)
    return out


def _fit(pod: Obj, node: Obj, *, now: bool = True, empty: bool = True) -> pl.Fit:
    """The one placement model's verdict (:func:`juliarun.scaling.placement.fits`) on the
    apiserver's objects: does ``pod`` fit ``node`` (empty, by default)."""
    return pl.fits(pl.Pod.from_k8s(pod), pl.Node.from_k8s(node), now=now, empty=empty)


def node_matches(pod: Obj, node: Obj, *, now: bool = True) -> bool:
    """Whether ``node`` takes the pod at all, resources aside (node selector, required node
    affinity, taints, cordon and readiness: :func:`juliarun.scaling.placement.admits`); with
    ``now=False``, whether it will once its transient state (not ready, cordoned, under
    pressure) passes."""
    return bool(pl.admits(pl.Pod.from_k8s(pod), pl.Node.from_k8s(node), now=now))


def _fits_empty(pod: Obj, node: Obj) -> bool:
    return bool(_fit(pod, node, now=False))


def _k8s_name(resource: str) -> str:
    return mf.GPU_RESOURCE if resource == "gpu" else resource


def _largest(nodes: Sequence[Obj], resource: str) -> str:
    values = [str((n.get("status", {}).get("allocatable") or {}).get(resource, "0")) for n in nodes]
    return max(values, key=parse_quantity) if values else "0"


Category = DiagnosisCategory


@dataclass(frozen=True)
class Problem(Diagnosis):
    """Why a job cannot progress (a :class:`~juliarun.backends.base.Diagnosis`); ``fatal``
    when only a person can fix it."""

    fatal: bool = False

    @property
    def reason(self) -> str:
        """The summary, as the status shows it for its reason."""
        return self.summary


def missing_node(pod: Obj, nodes: Sequence[Obj]) -> Problem | None:
    """The pod asks for node labels (a node type) no node carries."""
    problem = unschedulable(pod, nodes, "")
    missing = {Category.NO_SUCH_NODE_TYPE, Category.NO_NODE_WITH_LABELS}
    return problem if problem.category in missing else None


def unschedulable(pod: Obj, nodes: Sequence[Obj] | None, namespace: str) -> Problem:
    """Why the scheduler cannot place ``pod`` (``PodScheduled=False``), using the nodes when
    known."""
    cond = _cond(pod, "PodScheduled") or {}
    message = str(cond.get("message") or "")
    parsed = parse_scheduler_message(message)
    selector_labels = pod.get("spec", {}).get("nodeSelector") or {}
    node_type = selector_labels.get(NODE_TYPE_LABEL)
    describe = f"kubectl describe pod {pod_name(pod)} -n {namespace}"
    if nodes is not None:
        judged = pl.Pod.from_k8s(pod)
        typed = [n for n in nodes if pl.admits(judged, pl.Node.from_k8s(n)).kind != "selector"]
        if not typed:
            if node_type:
                return Problem(
                    Category.NO_SUCH_NODE_TYPE,
                    f"unschedulable: no node of type {node_type}",
                    f"add nodes labelled {NODE_TYPE_LABEL}={node_type} (tainted "
                    f"{NODE_TYPE_LABEL}={node_type}:NoSchedule), or submit without "
                    f"node_type={node_type!r}",
                    message or None,
                    fatal=True,
                )
            wanted = ",".join(f"{k}={v}" for k, v in sorted(selector_labels.items()))
            return Problem(
                Category.NO_NODE_WITH_LABELS,
                f"unschedulable: no node has the labels {wanted}",
                f"label a node (`kubectl label node <node> {wanted}`) or change node_labels",
                message or None,
                fatal=True,
            )
        # Transient node state (not ready, cordoned, pressure) is not the job's fault: judge the
        # nodes as they will be, and only say "waiting" while that state lasts.
        candidates = [n for n in typed if node_matches(pod, n, now=False)]
        if not candidates:
            taints = sorted(
                {
                    str(t)
                    for n in typed
                    for t in pl.Node.from_k8s(n).taints
                    if not t.transient and not pl.tolerates(judged.tolerations, t)
                }
            )
            return Problem(
                Category.UNTOLERATED_TAINT,
                f"unschedulable: every matching node has a taint the job does not tolerate "
                f"({', '.join(taints) or 'cordoned'})",
                "add the toleration to the cluster's node-type map, or remove the taint "
                f"(`{describe}`)",
                message or None,
                fatal=True,
            )
        verdicts = [_fit(pod, n, now=False) for n in candidates]
        if not any(verdicts):
            short = set.intersection(*(set(v.short) for v in verdicts))
            asks = judged.requests
            too_big = [
                f"{_k8s_name(r)}={_shown(pod, _k8s_name(r), asks.get(r))} (largest node: "
                f"{_largest(candidates, _k8s_name(r))})"
                for r in sorted(short, key=_k8s_name)
            ]
            where = f"{node_type} node" if node_type else "node"
            return Problem(
                Category.RESOURCE_MISFIT,
                f"unschedulable: resource misfit: each worker asks "
                f"{', '.join(too_big) or 'more'}, more than any {where} has",
                "lower the request (cpu=, memory=, gpu=) or add larger nodes",
                message or None,
                fatal=True,
            )
        # the nodes that would hold it once their transient state passes: none takes pods yet
        fitting = [n for n, v in zip(candidates, verdicts, strict=True) if v]
        if not any(node_matches(pod, n) for n in fitting):
            states = sorted(
                {
                    t.key.removeprefix("node.kubernetes.io/")
                    for n in fitting
                    for t in pl.Node.from_k8s(n).taints
                    if t.transient and not pl.tolerates(judged.tolerations, t)
                }
                | {"cordoned" for n in fitting if n.get("spec", {}).get("unschedulable")}
            )
            return Problem(
                Category.NODE_NOT_SCHEDULABLE,
                f"unschedulable: waiting for a matching node to become schedulable "
                f"({', '.join(states) or 'not ready'})",
                f"wait, or check the nodes (`kubectl get nodes`; `{describe}`)",
                message or None,
            )
    if parsed.insufficient:
        what = ", ".join(f"{r} on {c} node(s)" for r, c in sorted(parsed.insufficient.items()))
        return Problem(
            Category.WAITING_FOR_NODES,
            f"unschedulable: insufficient {what} (waiting for free nodes)",
            f"wait for other jobs to finish, add nodes, or lower the request (`{describe}`)",
            message,
        )
    if parsed.taints:
        return Problem(
            Category.UNTOLERATED_TAINT,
            f"unschedulable: untolerated taint {'; '.join(parsed.taints)}",
            f"add the toleration to the node-type map or remove the taint (`{describe}`)",
            message,
        )
    if parsed.selector_mismatch and node_type:
        return Problem(
            Category.WAITING_FOR_NODES,
            f"unschedulable: no free node of type {node_type}",
            f"add nodes labelled {NODE_TYPE_LABEL}={node_type} (`{describe}`)",
            message,
        )
    return Problem(
        Category.UNSCHEDULABLE,
        f"unschedulable: {message or 'no reason given'}",
        f"run `{describe}`",
        message or None,
    )


def waiting_kind(pod: Obj, nodes: Sequence[Obj]) -> Waiting | None:
    """How a pending pod waits: for the ``scheduler`` (not looked at yet, or being placed), for
    free ``nodes`` (a matching node would fit it once free), or ``misfit`` (no matching node
    could ever hold it). ``None`` when it is scheduled or not pending."""
    if pod.get("status", {}).get("phase") != "Pending" or pod.get("spec", {}).get("nodeName"):
        return None
    cond = _cond(pod, "PodScheduled")
    if cond is None or cond.get("status") != "False" or cond.get("reason") != "Unschedulable":
        return "scheduler"
    candidates = [n for n in nodes if node_matches(pod, n)]
    return "nodes" if any(_fits_empty(pod, n) for n in candidates) else "misfit"


def _shown(pod: Obj, resource: str, total: int) -> str:
    """A request as the user wrote it (``100Gi``) when one container asks for it."""
    asked = [
        str(((c.get("resources") or {}).get("requests") or {})[resource])
        for c in pod.get("spec", {}).get("containers") or []
        if resource in ((c.get("resources") or {}).get("requests") or {})
    ]
    return asked[0] if len(asked) == 1 else pl.format_quantity(resource, total)


# ---------------------------------------------------------------------------------------------
# Pods and events
# ---------------------------------------------------------------------------------------------


def pod_problem(
    pod: Obj, job_name: str, namespace: str, restart: str, *, job_failed: bool = False
) -> Problem | None:
    """What is wrong with one pod's main container, if anything. Once the Job has failed
    (``job_failed``) a container still shown in ``CrashLoopBackOff`` will not be restarted: its
    last exit is the reason."""
    name = pod_name(pod)
    wid = worker_id(job_name, pod)
    describe = f"kubectl describe pod {name} -n {namespace}"
    init = init_problem(pod, namespace)
    if init is not None:
        return init
    cs = main_container(pod)
    state = cs.get("state") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    term = state.get("terminated") or {}
    waiting = state.get("waiting") or {}
    if job_failed and not term and waiting.get("reason") == "CrashLoopBackOff":
        term, waiting = last, {}
    limit = _memory_limit(pod)
    if term.get("reason") == "OOMKilled" or (
        waiting.get("reason") == "CrashLoopBackOff" and last.get("reason") == "OOMKilled"
    ):
        return Problem(
            Category.OOM_KILLED,
            f"OOMKilled: worker {wid} ran out of memory (limit {limit or 'none'})",
            f"raise memory= above {limit} or use less memory (`{describe}`)",
            f"memory limit {limit or 'none'}",
            fatal=restart == "Never" or bool(term),
        )
    if waiting.get("reason") in _PULL_REASONS:
        message = str(waiting.get("message") or "")
        image = next(
            (c.get("image") for c in pod["spec"].get("containers", []) if c.get("name") == MAIN),
            "?",
        )
        fatal = waiting.get("reason") == "InvalidImageName" or bool(
            re.search(r"not found|manifest unknown|does not exist|repository .* not", message)
        )
        return Problem(
            Category.IMAGE_PULL,
            f"image pull failure: {image}: {waiting.get('reason')}"
            + (f": {_short(message)}" if message else ""),
            f"check that {image} exists in its registry and the node can pull it (`{describe}`)",
            message or None,
            fatal=fatal,
        )
    if waiting.get("reason") in _CREATE_REASONS:
        return Problem(
            Category.CONTAINER_CREATE_FAILED,
            f"cannot start worker {wid}: {waiting.get('reason')}: "
            f"{_short(str(waiting.get('message') or ''))}",
            f"run `{describe}`",
            str(waiting.get("message") or "") or None,
            fatal=True,
        )
    if waiting.get("reason") == "CrashLoopBackOff":
        code = last.get("exitCode")
        return Problem(
            Category.CRASH_LOOP,
            f"CrashLoopBackOff: worker {wid} keeps failing (exit code {code}, "
            f"{cs.get('restartCount', 0)} restarts)",
            f"see its output (`juliarun tail {job_name}`, `kubectl logs {name} -n {namespace} "
            f"--previous`)",
            f"exit code {code}",
        )
    if term.get("exitCode") not in (None, 0):
        return Problem(
            Category.EXIT_CODE,
            f"worker {wid} exited with code {term['exitCode']}",
            f"see its output with `juliarun tail {job_name}` (or `kubectl logs {name} -n "
            f"{namespace}`)",
            f"exit code {term['exitCode']}",
            fatal=restart == "Never",
        )
    if pod.get("status", {}).get("phase") == "Failed" and not term:
        reason = pod["status"].get("reason") or "failed"
        return Problem(
            Category.POD_FAILED,
            f"worker {wid} failed: {reason}: {_short(str(pod['status'].get('message') or ''))}",
            f"run `{describe}`",
            str(pod["status"].get("message") or "") or None,
        )
    return None


def init_problem(pod: Obj, namespace: str) -> Problem | None:
    """What stops a pod's init containers (the git clones of its storage), if anything.

    >>> pod = {"metadata": {"name": "p"}, "spec": {"initContainers": [{"name": "git-code",
    ...     "image": "alpine/git"}]}, "status": {"phase": "Failed", "initContainerStatuses": [
    ...     {"name": "git-code", "state": {"terminated": {"exitCode": 128,
    ...      "message": "fatal: repository not found"}}}]}}
    >>> print(init_problem(pod, "jr").reason)
    git clone of storage 'code' failed (exit code 128): fatal: repository not found
    """
    images = {
        c.get("name"): c.get("image") for c in pod.get("spec", {}).get("initContainers") or []
    }
    for cs in pod.get("status", {}).get("initContainerStatuses") or []:
        cname = str(cs.get("name") or "")
        storage = cname.removeprefix("git-")
        logs = f"kubectl logs {pod_name(pod)} -n {namespace} -c {cname}"
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        term = state.get("terminated") or {}
        if not term and waiting.get("reason") == "CrashLoopBackOff":
            term = (cs.get("lastState") or {}).get("terminated") or {}
        if waiting.get("reason") in _PULL_REASONS:
            image = images.get(cname) or "?"
            return Problem(
                Category.IMAGE_PULL,
                f"image pull failure: {image} (clones storage {storage!r}): "
                f"{waiting.get('reason')}: {_short(str(waiting.get('message') or ''))}",
                f"set JULIARUN_GIT_IMAGE (or the cluster block's git_image) to an image with "
                f"git that the nodes can pull (`kubectl describe pod {pod_name(pod)} -n "
                f"{namespace}`)",
                str(waiting.get("message") or "") or None,
                fatal=waiting.get("reason") == "InvalidImageName",
            )
        if term.get("exitCode") not in (None, 0):
            message = _short(str(term.get("message") or term.get("reason") or ""))
            return Problem(
                Category.GIT_CLONE_FAILED,
                f"git clone of storage {storage!r} failed (exit code {term['exitCode']})"
                + (f": {message}" if message else ""),
                f"check that the cluster's nodes can reach the storage's url and that the commit "
                f"is still there (`{logs}`)",
                str(term.get("message") or term.get("reason") or "") or None,
            )
    return None


_MOUNT_VOLUME = re.compile(r'for volume "([^"]+)"')


def waiting_to_mount(pod: Obj) -> bool:
    """Assigned to a node, still creating its containers (when volumes fail to mount)."""
    if pod.get("status", {}).get("phase") != "Pending" or not pod.get("spec", {}).get("nodeName"):
        return False
    waiting = (main_container(pod).get("state") or {}).get("waiting") or {}
    return waiting.get("reason") in {None, "ContainerCreating", "PodInitializing"}


def mount_problem(pod: Obj, events: Sequence[Obj], job_name: str, namespace: str) -> Problem | None:
    """Why a pod's storage does not mount on its node, from its newest ``FailedMount`` event.

    >>> pod = {"metadata": {"name": "j-0-x", "labels": {INDEX_LABEL: "0"}},
    ...        "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}}
    >>> event = {"reason": "FailedMount", "involvedObject": {"kind": "Pod", "name": "j-0-x"},
    ...          "message": 'MountVolume.SetUp failed for volume "st-repo" : hostPath type '
    ...                     'check failed: /srv/repo is not a directory'}
    >>> problem = mount_problem(pod, [event], "j", "jr")
    >>> problem.reason, problem.fatal
    ("cannot mount storage 'repo' for worker j-0 on node n1: hostPath type check failed: \
/srv/repo is not a directory", True)
    """
    name = pod_name(pod)
    failed = [
        e
        for e in events
        if e.get("reason") == "FailedMount"
        and (e.get("involvedObject") or {}).get("kind") == "Pod"
        and (e.get("involvedObject") or {}).get("name") == name
    ]
    if not failed:
        return None
    event = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    message = str(event.get("message") or "")
    volume = _MOUNT_VOLUME.search(message)
    what = "storage"
    if volume is not None and volume.group(1).startswith("st-"):
        what = f"storage {volume.group(1)[3:]!r}"
    elif volume is not None and volume.group(1) == "juliarun-bundle":
        what = "the package bundle"
    elif volume is not None:
        what = f"volume {volume.group(1)!r}"
    detail = message.split(" : ", 1)[-1] if " : " in message else message
    node = pod.get("spec", {}).get("nodeName")
    host_path = "hostPath type check failed" in message
    hint = f"run `kubectl describe pod {name} -n {namespace}`"
    if host_path:
        hint = (
            f"the path must exist on node {node}: a host path, a local git checkout and a "
            "package bundle are on this machine only; on several nodes use volume storage, a "
            "network git URL, or bake the bundle into the image (ImageSpec.bundle)"
        )
    return Problem(
        Category.STORAGE_MISSING_ON_NODE if host_path else Category.MOUNT_FAILED,
        f"cannot mount {what} for worker {worker_id(job_name, pod)} on node {node}: "
        f"{_short(detail)}",
        hint,
        message,
        fatal=host_path,
    )


def _memory_limit(pod: Obj) -> str | None:
    for c in pod.get("spec", {}).get("containers") or []:
        if c.get("name") == MAIN:
            return ((c.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def create_problem(events: Sequence[Obj], namespace: str) -> Problem | None:
    """Why the Job controller cannot create pods (``FailedCreate`` events), newest first."""
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if not failed:
        return None
    event = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    message = str(event.get("message") or "")
    quota = re.search(r"exceeded quota: ([\w.-]+)", message)
    if quota:
        detail = message.split("forbidden: ", 1)[-1]
        return Problem(
            Category.QUOTA_EXCEEDED,
            f"quota exceeded: {_short(detail)}",
            f"raise the ResourceQuota {quota.group(1)} in namespace {namespace} "
            f"(`kubectl describe quota {quota.group(1)} -n {namespace}`) or lower the request",
            message,
            fatal=True,
        )
    return Problem(
        Category.POD_CREATE_FAILED,
        f"cannot create pods: {_short(message)}",
        f"run `kubectl describe job {event.get('involvedObject', {}).get('name', '')} "
        f"-n {namespace}`",
        message or None,
        fatal="forbidden" in message,
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    """A job's status, the diagnosis behind its reason (with the evidence, ``detail``) and
    the pod whose last log lines explain its failure (if any)."""

    status: JobStatus
    log_pod: str | None = None
    diagnosis: Diagnosis | None = None

    def explain(self, diagnosis: Diagnosis) -> None:
        """Set the status's reason, hint and category from ``diagnosis``."""
        self.diagnosis = diagnosis
        self.status.reason, self.status.hint = diagnosis.summary, diagnosis.hint
        self.status.category = diagnosis.category


def diagnose(
    job: Obj,
    pods: Sequence[Obj],
    events: Sequence[Obj] = (),
    nodes: Sequence[Obj] | None = None,
) -> Report:
    """The status of the juliarun job behind the Kubernetes Job ``job``."""
    meta = job.get("metadata", {})
    name = str(meta.get("name"))
    namespace = str(meta.get("namespace") or "default")
    spec = job.get("spec", {})
    desired = int(spec.get("completions") if spec.get("completions") is not None else 1)
    restart = spec.get("template", {}).get("spec", {}).get("restartPolicy") or (
        "Never" if spec.get("podFailurePolicy") else "OnFailure"
    )
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")] or list(pods)
    newest = newest_pods(live)
    workers = [worker_from_pod(name, pod, earlier) for pod, earlier in newest]
    status = JobStatus(
        name=name,
        kind=str((meta.get("labels") or {}).get("juliarun.io/kind") or "Job"),
        phase="created",
        desired_workers=desired,
        workers=workers,
        created_at=ts(meta.get("creationTimestamp")),
    )
    report = Report(status)

    job_failed = condition_true(job, "Failed") or condition_true(job, "FailureTarget")
    problems: list[tuple[Problem, str | None]] = []
    for pod, _ in newest:
        problem = pod_problem(pod, name, namespace, restart, job_failed=job_failed)
        if problem is None and placement_gated(pod):
            problem = placement_wait(job)
        if problem is None and waiting_to_mount(pod):
            problem = mount_problem(pod, events, name, namespace)
        if problem is None and pending_unscheduled(pod):
            problem = unschedulable(pod, nodes, namespace)
        elif problem is None and pending_unassigned(pod) and nodes is not None:
            problem = missing_node(pod, nodes)  # known before the scheduler says so
        if problem is not None:
            problems.append((problem, pod_name(pod) if _has_run(pod) else None))
    created = create_problem(events, namespace) if len(live) < desired else None
    if created is not None:
        problems.append((created, None))
    problems.sort(key=lambda p: not p[0].fatal)  # the fatal ones explain most

    if condition_true(job, "Complete") or condition_true(job, "SuccessCriteriaMet"):
        status.phase = "succeeded"
        status.finished_at = ts((_cond(job, "Complete") or {}).get("lastTransitionTime"))
        return report
    failed = _cond(job, "Failed") if condition_true(job, "Failed") else None
    if failed is None and condition_true(job, "FailureTarget"):
        failed = _cond(job, "FailureTarget")
    if failed is not None or (problems and problems[0][0].fatal):
        status.phase = "failed"
        status.finished_at = ts((failed or {}).get("lastTransitionTime"))
        if problems:
            report.explain(problems[0][0])
            report.log_pod = problems[0][1]
        else:
            condition = failed or {}
            report.explain(
                Diagnosis(
                    Category.JOB_FAILED,
                    f"{condition.get('reason')}: {condition.get('message')}",
                    f"run `kubectl describe job {name} -n {namespace}`",
                    str(condition.get("reason") or "") or None,
                )
            )
        return report
    if any(w.state in {"running", "succeeded", "failed", "restarting"} for w in workers):
        status.phase = "running"
    if problems:
        report.explain(problems[0][0])
    elif not pods and status.phase == "created":
        report.explain(
            Diagnosis(
                Category.WAITING_FOR_CONTROLLER, "waiting for the job controller to create pods"
            )
        )
    elif any(pending_unassigned(p) for p, _ in newest):
        report.explain(Diagnosis(Category.WAITING_FOR_SCHEDULER, "waiting for scheduler"))
    return report


def placement_gated(pod: Obj) -> bool:
    """The pod waits for juliarun's placement controller (its scheduling gate)."""
    gates = pod.get("spec", {}).get("schedulingGates") or []
    return any(g.get("name") == mf.PLACEMENT_GATE for g in gates)


def placement_wait(job: Obj) -> Problem:
    """Why a gated job waits: what the placement controller wrote on the Job (nothing yet:
    no controller has looked at it)."""
    said = str(
        (job.get("metadata", {}).get("annotations") or {}).get(mf.PLACEMENT_ANNOTATION) or ""
    )
    why = said.removeprefix("waiting: ") if said.startswith("waiting: ") else None
    summary = "waiting for placement" + (f": {why}" if why else "")
    hint = (
        "the job starts whole once all its workers fit; add nodes (or let the cluster "
        "autoscaler) or wait for other jobs to end"
        if why
        else "juliarun's placement controller places gated jobs: run the cluster autoscaler "
        "or `juliarun placement` against this cluster"
    )
    return Problem(Category.WAITING_FOR_PLACEMENT, summary, hint, said or None)


def pending_unscheduled(pod: Obj) -> bool:
    """Pending, and the scheduler said it cannot place the pod (``PodScheduled=False``)."""
    cond = _cond(pod, "PodScheduled")
    return (
        pod.get("status", {}).get("phase") == "Pending"
        and cond is not None
        and cond.get("status") == "False"
        and cond.get("reason") == "Unschedulable"
    )


def pending_unassigned(pod: Obj) -> bool:
    """Pending, and on no node yet."""
    return pod.get("status", {}).get("phase") == "Pending" and not pod.get("spec", {}).get(
        "nodeName"
    )


def _has_run(pod: Obj) -> bool:
    cs = main_container(pod)
    return bool(
        (cs.get("state") or {}).get("terminated") or cs.get("lastState", {}).get("terminated")
    )
