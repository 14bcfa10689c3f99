"""A host-path volume provisioner for the test cluster (scripts/testenv component ``provisioner``).

It makes StorageClass ``juliarun-hostpath`` (provisioner ``juliarun.io/hostpath``) and, every
second, gives each Pending PersistentVolumeClaim of that class a PersistentVolume pre-bound to it:
a hostPath directory ``<root>/<namespace>-<claim>`` on the real node (node affinity to it, so pods
of the claim land there), of the claim's size and access modes. A volume whose claim is gone is
deleted with its directory. Dynamic rather than static PVs: every test has its own namespace and
claims come and go, and a directory per claim keeps runs apart and cleans up after itself.

Only Filesystem claims are served (a hostPath is no block device): a Block claim stays Pending.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

CLASS = "juliarun-hostpath"
PROVISIONER = "juliarun.io/hostpath"
MANAGED_BY = "app.kubernetes.io/managed-by"
log = logging.getLogger("provisioner")


def ensure_class(storage: client.StorageV1Api) -> None:
    body = client.V1StorageClass(
        metadata=client.V1ObjectMeta(name=CLASS, labels={MANAGED_BY: "juliarun"}),
        provisioner=PROVISIONER,
        reclaim_policy="Delete",
        volume_binding_mode="Immediate",
    )
    try:
        storage.create_storage_class(body)
        log.info("created StorageClass %s", CLASS)
    except ApiException as exc:
        if exc.status != 409:
            raise


def pv_name(pvc: client.V1PersistentVolumeClaim) -> str:
    return f"jrhp-{pvc.metadata.uid}"


def provision(
    core: client.CoreV1Api, pvc: client.V1PersistentVolumeClaim, root: Path, node: str
) -> None:
    ns, name = pvc.metadata.namespace, pvc.metadata.name
    if (pvc.spec.volume_mode or "Filesystem") != "Filesystem":
        log.warning("%s/%s: volumeMode %s is not served (hostPath)", ns, name, pvc.spec.volume_mode)
        return
    path = root / f"{ns}-{name}"
    path.mkdir(parents=True, exist_ok=True)
    pv = client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(
            name=pv_name(pvc),
            labels={MANAGED_BY: "juliarun", "juliarun.io/provisioner": "hostpath"},
            annotations={
                "pv.kubernetes.io/provisioned-by": PROVISIONER,
                "juliarun.io/path": str(path),
            },
        ),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": pvc.spec.resources.requests["storage"]},
            access_modes=pvc.spec.access_modes,
            storage_class_name=CLASS,
            persistent_volume_reclaim_policy="Retain",  # this loop deletes it (and the directory)
            volume_mode="Filesystem",
            host_path=client.V1HostPathVolumeSource(path=str(path), type="Directory"),
            claim_ref=client.V1ObjectReference(
                kind="PersistentVolumeClaim", namespace=ns, name=name, uid=pvc.metadata.uid
            ),
            node_affinity=client.V1VolumeNodeAffinity(
                required=client.V1NodeSelector(
                    node_selector_terms=[
                        client.V1NodeSelectorTerm(
                            match_expressions=[
                                client.V1NodeSelectorRequirement(
                                    key="kubernetes.io/hostname", operator="In", values=[node]
                                )
                            ]
                        )
                    ]
                )
            ),
        ),
    )
    try:
        core.create_persistent_volume(pv)
        log.info("provisioned %s for %s/%s at %s", pv.metadata.name, ns, name, path)
    except ApiException as exc:
        if exc.status != 409:
            raise


def reclaim(core: client.CoreV1Api, pv: client.V1PersistentVolume, live: set[str]) -> None:
    ref = pv.spec.claim_ref
    if ref is not None and ref.uid in live:
        return
    path = (pv.metadata.annotations or {}).get("juliarun.io/path")
    try:
        core.delete_persistent_volume(pv.metadata.name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    if path:
        shutil.rmtree(path, ignore_errors=True)
    log.info("deleted %s (claim gone) and %s", pv.metadata.name, path)


def once(core: client.CoreV1Api, root: Path, node: str) -> None:
    claims = core.list_persistent_volume_claim_for_all_namespaces().items
    ours = [c for c in claims if c.spec.storage_class_name == CLASS]
    volumes = core.list_persistent_volume(label_selector="juliarun.io/provisioner=hostpath").items
    have = {v.metadata.name for v in volumes}
    for pvc in ours:
        pending = pvc.metadata.deletion_timestamp is None and not pvc.spec.volume_name
        if pending and pv_name(pvc) not in have:
            provision(core, pvc, root, node)
    live = {c.metadata.uid for c in ours if c.metadata.deletion_timestamp is None}
    for pv in volumes:
        reclaim(core, pv, live)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--node", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = config.new_client_from_config(config_file=args.kubeconfig)
    core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
    args.root.mkdir(parents=True, exist_ok=True)
    ensure_class(storage)
    heartbeat = args.root / ".heartbeat"
    while True:
        try:
            once(core, args.root, args.node)
            heartbeat.write_text(str(time.time()))
        except Exception:  # the apiserver restarting, a race with a deletion: try again
            log.exception("pass failed")
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
