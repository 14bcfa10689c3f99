"""Watches resume from their resourceVersion, against the real apiserver (which is shared, so
never restarted here): the streams are ended the ways a restart ends them — by the server
(a short ``timeoutSeconds``) and by the connection dropping under the client mid-stream — while
pods change, and the resumed watch must deliver exactly the events of one uninterrupted watch
from the same version. A version the apiserver no longer has (410 Gone) leads to a relist."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from juliarun.backends.kubernetes import api_client
from juliarun.backends.kubernetes.client import KubeClient, ns_path
from juliarun.backends.kubernetes.watch import decode, resumable_watch
from tests.integration.fixtures.kubernetes import kubeconfig_path

pytestmark = pytest.mark.kubernetes

LABEL = "juliarun.io/watch-test"
Seen = tuple[str, str, str]  # (event type, pod name, resourceVersion)


@pytest.fixture
def kc() -> Iterator[KubeClient]:
    c = KubeClient(api_client(kubeconfig=kubeconfig_path()), qps=1000, burst=1000)
    yield c
    c.close()


def pod(name: str) -> dict[str, Any]:
    """A pod that stays Pending, untouched: no scheduler serves its ``schedulerName`` (the
    default scheduler would mark it unschedulable, a change at a time of its own)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL: "yes"}},
        "spec": {
            "schedulerName": "juliarun.io/no-such-scheduler",
            "nodeSelector": {"juliarun.io/no-such-node": "true"},
            "containers": [{"name": "c", "image": "pause"}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def seen(kind: str, obj: Mapping[str, Any]) -> Seen:
    meta = obj["metadata"]
    return kind, meta["name"], meta["resourceVersion"]


def test_resumed_watch_misses_and_repeats_nothing(kc: KubeClient, kube_namespace: str) -> None:
    pods = ns_path(kube_namespace, "pods")
    first = kc.get(pods, labelSelector=f"{LABEL}=yes")
    start = str(first["metadata"]["resourceVersion"])

    # the reference: one uninterrupted watch from the same version
    reference: list[Seen] = []

    def uninterrupted() -> None:
        resp = kc.stream(
            pods,
            query={
                "watch": True,
                "resourceVersion": start,
                "labelSelector": f"{LABEL}=yes",
                "timeoutSeconds": 120,
            },
            timeout=(10, 130),
        )
        try:
            for event in decode(resp.lines()):
                reference.append(seen(event["type"], event["object"]))
                if reference[-1][:2] == ("ADDED", "end"):
                    return
        finally:
            resp.close()

    # the watch under test: every stream ends after 1s of the server's time, and every other
    # one is cut by the client after 3 events (half of those with an error, half silently)
    opened: list[str] = []
    endings: list[str] = []
    lists = 0

    def list_fn() -> Mapping[str, Any]:
        nonlocal lists
        lists += 1
        return first if lists == 1 else kc.get(pods, labelSelector=f"{LABEL}=yes")

    def watch_fn(version: str) -> Iterator[str]:
        n = len(opened)
        opened.append(version)
        resp = kc.stream(
            pods,
            query={
                "watch": True,
                "resourceVersion": version,
                "allowWatchBookmarks": True,
                "labelSelector": f"{LABEL}=yes",
                "timeoutSeconds": 1,
            },
            timeout=(10, 30),
        )

        def lines() -> Iterator[str]:
            for delivered, line in enumerate(resp.lines(), 1):
                yield line
                if n % 2 == 1 and delivered == 3:
                    resp.close()  # the connection drops under the client
                    endings.append("dropped")
                    if n % 4 == 1:
                        raise OSError("connection reset by peer (test)")
                    return
            endings.append("server")

        return lines()

    resumed: list[Seen] = []
    done = threading.Event()

    def follow() -> None:
        for kind, obj in resumable_watch(
            list_fn, watch_fn, stop=done.is_set, sleep=lambda s: time.sleep(min(s, 0.2))
        ):
            resumed.append(seen(kind, obj))
            if resumed[-1][:2] == ("ADDED", "end"):
                done.set()

    ref_thread = threading.Thread(target=uninterrupted, daemon=True)
    watch_thread = threading.Thread(target=follow, daemon=True)
    ref_thread.start()
    watch_thread.start()

    # pods change while both watch: created, relabelled, deleted, across several seconds
    names = [f"p{i}" for i in range(8)]
    for name in names:
        kc.post(pods, pod(name))
        time.sleep(0.25)
    for i, name in enumerate(names):
        kc.merge_patch(f"{pods}/{name}", {"metadata": {"labels": {"step": str(i)}}})
        time.sleep(0.25)
    for name in names[::2]:
        kc.delete(f"{pods}/{name}", {"gracePeriodSeconds": 0})
        time.sleep(0.25)
    kc.post(pods, pod("end"))

    ref_thread.join(60)
    watch_thread.join(60)
    done.set()
    assert reference and reference[-1][:2] == ("ADDED", "end"), reference
    assert resumed == reference  # nothing missed, nothing twice, same order
    assert lists == 1  # resumed from versions, never relisted
    assert len(opened) >= 4 and {"dropped", "server"} <= set(endings), (opened, endings)
    # each resumed stream started at the last version delivered before it
    assert len(set(opened)) == len(opened)
    kinds = {k for k, *_ in reference}
    assert {"ADDED", "MODIFIED", "DELETED"} <= kinds


def test_gone_version_leads_to_a_relist(kc: KubeClient, kube_namespace: str) -> None:
    pods = ns_path(kube_namespace, "pods")
    for name in ("a", "b"):
        kc.post(pods, pod(name))
    lists: list[str] = []

    def list_fn() -> Mapping[str, Any]:
        listing: dict[str, Any] = kc.get(pods, labelSelector=f"{LABEL}=yes")
        if not lists:  # a cursor kept across a long outage: etcd compacted that version away
            listing["metadata"]["resourceVersion"] = "1"
        lists.append(str(listing["metadata"]["resourceVersion"]))
        return listing

    errors: list[str] = []

    def watch_fn(version: str) -> Iterator[str]:
        resp = kc.stream(
            pods,
            query={
                "watch": True,
                "resourceVersion": version,
                "labelSelector": f"{LABEL}=yes",
                "timeoutSeconds": 5,
            },
            timeout=(10, 30),
        )
        for line in resp.lines():
            if '"ERROR"' in line:
                errors.append(line)
            yield line

    got: list[tuple[str, str]] = []
    done = threading.Event()

    def follow() -> None:
        for kind, obj in resumable_watch(list_fn, watch_fn, stop=done.is_set, sleep=time.sleep):
            got.append((kind, obj["metadata"]["name"]))
            if (kind, obj["metadata"]["name"]) == ("ADDED", "c"):
                done.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while len(lists) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(lists) == 2, lists  # the 410 made it list again
    kc.post(pods, pod("c"))
    thread.join(30)
    done.set()
    assert errors and '"code":410' in errors[0], errors
    # the stale cursor's list, then the relist: a and b synced once each; c added once
    assert got == [("SYNC", "a"), ("SYNC", "b"), ("SYNC", "a"), ("SYNC", "b"), ("ADDED", "c")]
