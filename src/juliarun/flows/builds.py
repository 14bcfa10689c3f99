"""Build flows: build_image, build_package_bundle, prune_bundles, prune_storage, and
run_pipeline (storage → bundle → image → job → logs; unchanged specs skip both builds)."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import SkipJsonSchema

from juliarun.builders.bundles import check_bake_bundle
from juliarun.errors import SpecError
from juliarun.flows._flow import flow
from juliarun.flows._specs import job_run_name, job_spec, rejected, spec, specs
from juliarun.flows.run_job import run_job
from juliarun.specs import AnyJob, BundleSpec, ImageSpec, StorageSpec
from juliarun.tasks.builds import (
    build_bundle_task,
    build_image_task,
    bundle_digest,
    image_digest,
    prewarm_image_task,
    prune_bundles_task,
    use_bundle,
)
from juliarun.tasks.storage import prune_storage_task


def image_steps(spec: ImageSpec, registry: str, credentials_block: str | None = None) -> str:
    """The image's tasks in the calling flow: its content hash, then the build (a cached task
    run when unchanged). Returns the tag."""
    digest = image_digest(spec, registry, credentials_block)
    return build_image_task(spec, registry, digest, credentials_block)


def bundle_steps(spec: BundleSpec, cluster: str) -> dict[str, Any]:
    """The bundle's tasks in the calling flow: its content hash, the build (a cached task run
    when unchanged), and ``current`` pointed at it (built again when pruned since)."""
    digest = bundle_digest(spec, cluster)
    built = build_bundle_task(spec, cluster, digest)
    if not use_bundle(cluster, spec.name, built["address"]):  # cached, but pruned since
        built = build_bundle_task.with_options(refresh_cache=True)(spec, cluster, digest)
    return built


@flow(name="build-image", flow_run_name="{spec.name}")
def build_image(
    spec: ImageSpec, registry: str = "localhost:5000", credentials_block: str | None = None
) -> str:
    """Build ``spec`` as ``<registry>/<name>:<hash12>`` and push it; an unchanged spec is a
    cached task run (nothing built). Returns the tag."""
    return image_steps(spec, registry, credentials_block)


@flow(name="build-package-bundle", flow_run_name="{spec.name}")
def build_package_bundle(spec: BundleSpec, cluster: str = "local") -> dict[str, Any]:
    """Precompile ``spec`` with a builder job on ``cluster``; an unchanged spec is cached.
    Returns the address (its path, the root jobs see, the compiled packages)."""
    return bundle_steps(spec, cluster)


@flow(name="prune-bundles")
def prune_bundles(cluster: str = "local") -> list[str]:
    """Remove bundle addresses that no job references and that are not current."""
    return prune_bundles_task(cluster)


@flow(name="prune-storage")
def prune_storage(cluster: str = "local") -> list[str]:
    """Remove storage a newer version replaced that no job uses (on Docker: the volumes of git
    storage at older commits); returns what was removed."""
    return prune_storage_task(cluster)


@flow(
    name="run-pipeline",
    flow_run_name=job_run_name,
    validate_parameters=False,  # juliarun checks the specs: see juliarun.flows._specs
)
def run_pipeline(  # noqa: PLR0917 - flow parameters are the form in the UI
    job: AnyJob,
    storage: SkipJsonSchema[list[StorageSpec] | None] = None,
    bundle: BundleSpec | None = None,
    image: ImageSpec | None = None,
    cluster: str = "local",
    registry: str = "localhost:5000",
    credentials_block: str | None = None,
    timeout: float | None = None,
    bake_bundle: bool = False,
) -> dict[str, Any]:
    """Specs to a finished job: the package bundle (cached), the image (cached; the job runs
    in it), then run-job with the storage, streaming the job's lines into this run's logs. The
    build steps are tasks of this run (not subflows), so a re-run with nothing changed costs
    a few cached task runs.

    The job mounts the bundle read-only (as its pkg_bundle), or with bake_bundle runs in the
    image with the bundle copied in (the image's JULIA_DEPOT_PATH and JULIA_PROJECT point at
    it): what a cluster of several nodes needs, where a bundle built on one machine is not on
    the others.

    Args:
        job: The job: pick its kind, then fill in its fields (required ones first).
        storage: (Python and API callers; not in the form.) Storage definitions recorded
            before the job starts, as define_storage does: the job mounts storage by the
            names in its own storage field, whichever way each name was defined.
        bundle: Julia packages to precompile into a bundle the job mounts (optional).
        image: A container image to build and run the job in (optional).
        cluster: Where the job runs: local, docker, kubernetes, or the name of a saved
            cluster block.
        registry: The registry the image is pushed to.
        credentials_block: The registry credentials block, if it needs any.
        timeout: Seconds to wait for the job to finish; empty waits as long as it runs.
        bake_bundle: Copy the bundle into the image instead of mounting it.
    """
    try:
        job = job_spec(job)
        storage = specs(storage, StorageSpec)
        bundle = spec(bundle, BundleSpec)
        image = spec(image, ImageSpec)
    except SpecError as exc:
        return rejected(exc)  # type: ignore[no-any-return]
    timeout = None if timeout is None else float(timeout)
    check_bake_bundle(bundle, image, bake_bundle)
    updates: dict[str, Any] = {}
    if bundle is not None:
        built = bundle_steps(bundle, cluster)
        if bake_bundle and image is not None:
            image = image.model_copy(update={"bundle": built["path"]})
        else:
            updates["pkg_bundle"] = built["name"]
    if image is not None:
        updates["image"] = image_steps(image, registry, credentials_block)
    job = job.model_copy(update=updates) if updates else job
    return run_job(job, cluster=cluster, storage=storage, timeout=timeout)


@flow(name="prewarm-image", flow_run_name="{image}")
def prewarm_image(
    image: str, cluster: str = "local", node_type: str | None = None, timeout: float = 300.0
) -> list[dict[str, Any]]:
    """Pull ``image`` onto the cluster's nodes before jobs need it (Kubernetes: a DaemonSet,
    per-node readiness, removed when done or after ``timeout`` seconds naming the nodes
    without it; Docker: the engine pulls; local: nothing to do, reported so)."""
    return prewarm_image_task(cluster, image, node_type, timeout)
