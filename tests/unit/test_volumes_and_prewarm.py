"""Pure parts of issue 4 on Kubernetes: volume storage in manifests (PVC, Block devices,
read-only claims), the bundle mount, the prewarm DaemonSet and which nodes it covers; the
local backend's volume directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.prewarm import _pod_detail, matching_nodes
from juliarun.backends.local import storage as local_storage
from juliarun.errors import StorageError
from juliarun.specs import Batch, StorageSpec


def _container(m: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = m["spec"]["template"]["spec"]["containers"][0]
    return container


def test_volumes_become_claims_block_volumes_devices_and_read_only_claims_read_only_mounts() -> (
    None
):
    storage = {
        "db": StorageSpec(name="db", kind="volume", size="1Gi", storage_class="ssd"),
        "raw": StorageSpec(name="raw", kind="volume", size="1Gi", volume_mode="Block"),
        "ref": StorageSpec(name="ref", kind="volume", size="1Gi", access_mode="ReadOnlyMany"),
    }
    job = Batch("j", command=["true"], storage=["db", "raw", "ref"])
    m = mf.job_manifest(job, storage, namespace="jr", image="img")
    volumes = {v["name"]: v for v in m["spec"]["template"]["spec"]["volumes"]}
    assert volumes["st-db"]["persistentVolumeClaim"] == {"claimName": "juliarun-db"}
    assert volumes["st-ref"]["persistentVolumeClaim"] == {
        "claimName": "juliarun-ref",
        "readOnly": True,
    }
    container = _container(m)
    assert container["volumeDevices"] == [{"name": "st-raw", "devicePath": "/mnt/raw"}]
    mounts = {mt["name"]: mt for mt in container["volumeMounts"]}
    assert "st-raw" not in mounts
    assert mounts["st-ref"]["readOnly"] is True and "readOnly" not in mounts["st-db"]
    pvc = mf.pvc_manifest(storage["raw"], "jr")
    assert pvc["spec"]["volumeMode"] == "Block" and "storageClassName" not in pvc["spec"]
    assert pvc["metadata"]["labels"][mf.STORAGE_LABEL] == "raw"


def test_a_bundle_is_mounted_read_only_at_its_root_with_the_julia_environment() -> None:
    job = Batch("j", command=["true"], pkg_bundle="greet")
    m = mf.job_manifest(
        job, {}, namespace="jr", image="img", bundle=("/home/b/greet/abc", "/mnt/jrb-abc")
    )
    volumes = {v["name"]: v for v in m["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mf.BUNDLE_VOLUME]["hostPath"] == {
        "path": "/home/b/greet/abc",
        "type": "Directory",
    }
    container = _container(m)
    assert {"name": mf.BUNDLE_VOLUME, "mountPath": "/mnt/jrb-abc", "readOnly": True} in container[
        "volumeMounts"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JULIA_DEPOT_PATH"] == "/mnt/jrb-abc/depot:"
    assert env["JULIA_PROJECT"] == "/mnt/jrb-abc/env"


def _node(name: str, labels: dict[str, str], taints: list[dict[str, str]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}


def test_the_prewarm_daemonset_covers_the_nodes_of_its_type_whose_taints_it_tolerates() -> None:
    rule = mf.default_node_types()["gpu"]
    gpu_taint = {"key": mf.NODE_TYPE_LABEL, "value": "gpu", "effect": "NoSchedule"}
    other = {"key": "dedicated", "value": "x", "effect": "NoSchedule"}
    not_ready = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
    nodes = [
        _node("g1", {mf.NODE_TYPE_LABEL: "gpu"}, [gpu_taint]),
        _node("g2", {mf.NODE_TYPE_LABEL: "gpu"}, [gpu_taint, other]),
        _node("g3", {mf.NODE_TYPE_LABEL: "gpu"}, [not_ready]),
        _node("plain", {}, []),
    ]
    assert [n["metadata"]["name"] for n in matching_nodes(nodes, rule)] == ["g1", "g3"]
    assert [n["metadata"]["name"] for n in matching_nodes(nodes, None)] == ["g3", "plain"]
    ds = mf.prewarm_daemonset("img", "prewarm-x", "jr", rule)
    pod = ds["spec"]["template"]
    assert pod["metadata"]["labels"] == ds["spec"]["selector"]["matchLabels"]
    assert pod["spec"]["tolerations"] == [t.manifest() for t in rule.tolerations]
    assert ds["metadata"]["labels"][mf.MANAGED_BY] == "juliarun"


def test_a_prewarm_pod_reports_what_it_waits_for() -> None:
    waiting = {
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
            ],
        }
    }
    assert _pod_detail(waiting) == (False, "ErrImagePull: not found")
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert _pod_detail(ready) == (True, "")


def test_a_local_volume_is_a_directory_under_the_home(tmp_path: Path) -> None:
    spec = StorageSpec(name="vol", kind="volume", size="1Gi", storage_class="ssd")
    path = local_storage.provision(spec, tmp_path)
    assert path == tmp_path / "storage" / "volume" / "vol" and path.is_dir()
    block = StorageSpec(name="raw", kind="volume", size="1Gi", volume_mode="Block")
    with pytest.raises(StorageError, match="needs a Kubernetes cluster"):
        local_storage.provision(block, tmp_path)
