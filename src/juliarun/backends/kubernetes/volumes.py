"""A job's storage on the cluster: PersistentVolumeClaims of volumes (and the check that their
StorageClass exists), host directories, git checkouts and where each git storage is mounted
from, and the package bundles juliarun's Jobs mount from the node."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from juliarun.backends.kubernetes import manifests as mf
from juliarun.backends.kubernetes.client import KubeApiError, KubeClient, ns_path
from juliarun.errors import StorageError
from juliarun.specs import JobSpec, StorageSpec


@dataclass
class GitSources:
    """Where each git storage of a job comes from in its pods: ``node_paths`` (a local
    checkout mounted from the node) or ``clones`` (a network URL and the commit the pod's init
    container clones)."""

    node_paths: dict[str, str] = field(default_factory=dict)
    clones: dict[str, tuple[str, str]] = field(default_factory=dict)


def bundle_paths(jobs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The package bundle addresses (paths on the node) the Job objects ``jobs`` mount.

    >>> job = {"spec": {"template": {"spec": {"volumes": [
    ...     {"name": mf.BUNDLE_VOLUME, "hostPath": {"path": "/srv/bundles/b1"}}]}}}}
    >>> bundle_paths([job, {"spec": {"template": {"spec": {}}}}])
    ['/srv/bundles/b1']
    """
    paths = []
    for job in jobs:
        for volume in job["spec"]["template"]["spec"].get("volumes") or []:
            if volume.get("name") == mf.BUNDLE_VOLUME:
                paths.append(str(volume["hostPath"]["path"]))
    return paths


class Volumes:
    """Provisions storage for jobs in ``namespace`` (by default) and checks it can exist."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        home: Path,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.home = home
        self.log = logger or logging.getLogger("juliarun.kubernetes")

    def storage_class_problems(self, storage: Mapping[str, StorageSpec]) -> list[tuple[str, str]]:
        """``(field, rule)`` for every volume storage whose StorageClass does not exist."""
        problems: list[tuple[str, str]] = []
        existing: list[str] | None = None
        for name, spec in storage.items():
            if spec.kind != "volume" or not spec.storage_class:
                continue
            path = f"/apis/storage.k8s.io/v1/storageclasses/{spec.storage_class}"
            try:
                if self.client.get_or_none(path) is not None:
                    continue
            except KubeApiError as exc:
                if exc.status != 403:
                    raise
                continue  # not readable with these credentials: the PVC stays Pending
            if existing is None:
                listing = self.client.get("/apis/storage.k8s.io/v1/storageclasses")
                existing = sorted(i["metadata"]["name"] for i in listing.get("items") or [])
            problems.append(
                (
                    f"storage.{name}.storage_class",
                    f"StorageClass {spec.storage_class!r} does not exist in this cluster "
                    f"(its classes: {', '.join(existing) or 'none'})",
                )
            )
        return problems

    def ensure_pvc(self, spec: StorageSpec, namespace: str | None = None) -> str:
        """The labelled PersistentVolumeClaim of a ``volume`` storage in ``namespace``
        (default: the backend's), created unless it exists; returns ``pvc:<ns>/<name>``."""
        ns = namespace or self.namespace
        problems = self.storage_class_problems({spec.name: spec})
        if problems:
            raise StorageError(
                f"{problems[0][0]}: {problems[0][1]}",
                hint="use one of the cluster's classes, or create the StorageClass",
            )
        body = mf.pvc_manifest(spec, ns)
        try:
            self.client.post(ns_path(ns, "persistentvolumeclaims"), body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise StorageError(
                    f"storage {spec.name!r}: cannot create PersistentVolumeClaim "
                    f"{mf.pvc_name(spec)} in {ns}: {exc.message}",
                    hint=f"run `kubectl describe pvc {mf.pvc_name(spec)} -n {ns}`",
                ) from exc
        return f"pvc:{ns}/{mf.pvc_name(spec)}"

    def provision(self, spec: StorageSpec) -> str:
        """volume: its PersistentVolumeClaim in the backend's namespace (a StorageClass that
        does not exist is refused, naming the classes that do). host: the directory, made here
        (the test cluster's node is this machine; on other clusters the kubelet creates it,
        hostPath ``DirectoryOrCreate``); ramdisk: nothing to make (a memory-backed emptyDir per
        pod); git: a checkout made here, at the resolved commit (a network URL is cloned again
        by each pod's init container; a local path is mounted read-only from the node)."""
        if spec.kind == "host":
            try:
                Path(spec.path or "").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.log.debug("host storage %s not made here: %s", spec.path, exc)
            return f"hostPath:{spec.path}"
        if spec.kind == "ramdisk":
            return f"emptyDir:Memory:{spec.size or 'unbounded'}"
        if spec.kind == "volume":
            return self.ensure_pvc(spec)
        return str(self.git_checkout(spec)[0])

    def git_checkout(self, spec: StorageSpec) -> tuple[Path, str]:
        """The checkout of git storage here, and the commit its ref resolved to."""
        from juliarun.backends.local import storage as local_storage

        try:
            with local_storage.git_checkout(spec, self.home) as found:
                return found
        except OSError as exc:
            raise StorageError(f"storage {spec.name!r}: {exc}") from exc

    def git_sources(self, job: JobSpec, storage: Mapping[str, StorageSpec]) -> GitSources:
        """Where the pods of ``job`` get each git storage it uses. The checkout here resolves
        (and checks) the ref before anything is created; a network URL is then cloned at that
        commit by the pod's init container (any node), a local path is mounted from the node
        (the node is this machine)."""
        sources = GitSources()
        for name, spec in storage.items():
            if spec.kind != "git" or name not in job.storage:
                continue
            checkout, commit = self.git_checkout(spec)
            if mf.is_remote_git(spec.url or ""):
                sources.clones[name] = (spec.url or "", commit)
            else:
                sources.node_paths[name] = str(checkout)
        return sources
