"""Safe scale-down of an elastic Indexed Job: drain the workers that are going, then lower the
count.

Lowering ``completions``/``parallelism`` makes the job controller delete the pods of the highest
indexes, and the kubelet then gives each ``terminationGracePeriodSeconds`` between SIGTERM and
SIGKILL: a worker whose message takes longer is killed mid-message and the broker redelivers it.
So juliarun asks first: each pod whose index is at or above the new count gets SIGTERM in its
``main`` container (an exec of ``kill -TERM 1``; the Julia worker is the container's first
process), and ``JuliaRun.consume`` finishes the message in hand, acknowledges it and exits 0.
When those pods have ended (or after ``timeout``), the count is lowered; the job controller
then has nothing left to kill, and the indexes it drops are the ones that finished.

The indexes that go are the highest: an Indexed Job can only shrink from the top (``completions``
is a count, not a set), and picking others would leave holes the job controller would refill.

>>> completed_floor("2-4,7")
2
>>> completed_floor("") is None
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from juliarun.backends.kubernetes.diagnosis import INDEX_LABEL

# SIGTERM only a worker that handles it: bit 15 (0x4000) of the first process's caught-signals
# mask is set once ``JuliaRun.consume`` (``stop_on_sigterm``) has installed its handler. A
# worker still starting has taken no message, and Julia's default for SIGTERM is to exit 143
# (a failure): it is left for the count change to remove.
STOP_SCRIPT = (
    "cgt=$(awk '/^SigCgt:/ {print $2}' /proc/1/status); "
    "if [ $(( 0x$cgt & 0x4000 )) -ne 0 ]; then kill -TERM 1 && echo asked; "
    "else echo starting; fi"
)
STOP_COMMAND = ["sh", "-c", STOP_SCRIPT]


def completed_floor(completed: str | None) -> int | None:
    """The lowest index in a Job's ``status.completedIndexes`` (``"1,3-5"``), ``None`` if none."""
    if not completed:
        return None
    return min(int(part.split("-")[0]) for part in completed.split(","))


def pod_index(pod: dict[str, Any]) -> int:
    meta = pod.get("metadata") or {}
    value = (meta.get("labels") or {}).get(INDEX_LABEL) or (meta.get("annotations") or {}).get(
        INDEX_LABEL
    )
    return int(value or 0)


def live(pod: dict[str, Any]) -> bool:
    """A pod still running its worker (not ended, not being deleted)."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Pending", "Running") and not pod["metadata"].get("deletionTimestamp")


def restart_count(pod: dict[str, Any]) -> int:
    """Restarts of the pod's ``main`` container (a worker that exited and was started again
    under ``restart="OnFailure"`` is no longer the one asked to stop)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == "main":
            return int(status.get("restartCount") or 0)
    return 0


def drain(
    api_client: Any,
    namespace: str,
    pods: Callable[[], list[dict[str, Any]]],
    keep: int,
    *,
    timeout: float,
    log: logging.Logger,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Ask the running workers with index ``>= keep`` to stop and wait (up to ``timeout``) until
    they have ended; returns the names of the pods asked."""
    from kubernetes import client as k8s
    from kubernetes.stream import stream

    going = [p for p in pods() if pod_index(p) >= keep and live(p)]
    restarts = {p["metadata"]["name"]: restart_count(p) for p in going}
    asked: list[str] = []
    # ``stream`` swaps the request method of the ApiClient it is given while it runs: an
    # ApiClient of its own (same configuration) keeps the backend's requests off the websocket.
    exec_client = k8s.ApiClient(api_client.configuration)
    try:
        asked = _ask(k8s.CoreV1Api(exec_client), stream, namespace, going, log)
    finally:
        exec_client.close()  # type: ignore[no-untyped-call]
    if not asked:
        return asked
    deadline = clock() + timeout
    while clock() < deadline:
        still = {
            p["metadata"]["name"]
            for p in pods()
            if live(p) and restart_count(p) <= restarts.get(p["metadata"]["name"], 0)
        } & set(asked)
        if not still:
            break
        sleep(0.5)
    else:
        log.warning("workers %s did not stop within %gs; lowering the count", asked, timeout)
    return asked


def _ask(
    core: Any, stream: Any, namespace: str, going: list[dict[str, Any]], log: logging.Logger
) -> list[str]:
    asked: list[str] = []
    for pod in sorted(going, key=pod_index, reverse=True):
        name = pod["metadata"]["name"]
        if (pod.get("status") or {}).get("phase") != "Running":
            continue  # not started: nothing in flight, the count change removes it
        try:
            said = stream(
                core.connect_get_namespaced_pod_exec,
                name,
                namespace,
                container="main",
                command=STOP_COMMAND,
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _request_timeout=10,
            )
            if "asked" in str(said):
                log.info("asked worker pod %s to stop after its message in hand", name)
                asked.append(name)
            else:
                log.info("worker pod %s is still starting: the count change removes it", name)
        except Exception as exc:  # the kubelet's SIGTERM (lowering the count) is the fallback
            log.warning("cannot ask worker pod %s to stop: %s", name, exc)
    return asked
