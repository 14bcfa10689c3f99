"""Build tasks: an image and a package bundle, each cached by its content hash (an unchanged
spec is a Cached state, nothing rebuilt), with the build's steps (what ``juliarun build``
shows) and output in the run's logs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import TaskRunContext

from juliarun.builders import bundles as bundle_builder
from juliarun.builders import images as image_builder
from juliarun.builders.progress import StepTracker, log_progress
from juliarun.specs import BundleSpec, ImageSpec
from juliarun.tasks._context import context


def _digest_key(_: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"juliarun-{parameters['kind']}-{parameters['digest']}"


@contextlib.contextmanager
def logged_steps(logger: logging.Logger | logging.LoggerAdapter[Any]) -> Iterator[StepTracker]:
    """An ``on_line`` for a builder that writes its progress to ``logger`` as ``juliarun
    build`` draws it: ``step 2/5: COPY ...``, the builder's lines under it (``  | ...``),
    ``step 2/5 done in 1.2s``; a build that fails names the step it failed at."""
    tracker = StepTracker(log_progress(logger.info))
    try:
        yield tracker
    except BaseException:
        if tracker.current is not None:
            step = tracker.current
            logger.error("%s failed: %s", step.label(), step.title)
        raise
    tracker.finish()


def _docker_client() -> Any:
    from juliarun.backends.docker.engine import EngineConfig

    return EngineConfig().connect()


def _registry_auth(credentials_block: str | None) -> Any:
    if credentials_block is None:
        return None
    from prefect_docker import DockerRegistryCredentials

    from juliarun.backends.docker.engine import RegistryAuth

    creds = DockerRegistryCredentials.load(credentials_block)
    return RegistryAuth(creds.registry_url, creds.username, creds.password)


@task(cache_policy=NONE)
def image_digest(spec: ImageSpec, registry: str, credentials_block: str | None = None) -> str:
    """Check the spec (base image, paths) and return its content hash; builds nothing."""
    client = _docker_client()
    try:
        plan = image_builder.plan_image(
            client, spec, registry, auth=_registry_auth(credentials_block)
        )
    finally:
        client.close()
    return plan.digest


@task(cache_key_fn=_digest_key, persist_result=True)
def build_image_task(
    spec: ImageSpec,
    registry: str,
    digest: str,
    credentials_block: str | None = None,
    kind: str = "image",
) -> str:
    """Build and push the image (skipped when the registry has the tag); returns the tag."""
    client = _docker_client()
    try:
        with logged_steps(get_run_logger()) as on_line:
            built = image_builder.build_image(
                client, spec, registry, auth=_registry_auth(credentials_block), on_line=on_line
            )
    finally:
        client.close()
    return built.tag


@task(cache_policy=NONE)
def bundle_digest(spec: BundleSpec, cluster: str = "local") -> str:
    """Check the bundle (every [deps] entry in the Manifest, paths exist); its content hash."""
    with context(cluster) as ctx:
        return bundle_builder.bundle_cache_key(spec, ctx.backend)


@task(cache_key_fn=_digest_key, persist_result=True)
def build_bundle_task(
    spec: BundleSpec, cluster: str, digest: str, kind: str = "bundle"
) -> dict[str, Any]:
    """Run the builder job that precompiles the bundle; returns its address."""
    with context(cluster) as ctx, logged_steps(get_run_logger()) as on_line:
        built = bundle_builder.build_bundle(
            spec,
            ctx.backend,
            logs=ctx.logs,
            on_line=on_line,
            poll_interval=ctx.settings.poll_interval,
        )
    return {
        "name": built.name,
        "address": built.address,
        "path": str(built.path),
        "root": built.root,
        "compiled": built.compiled,
    }


@task(cache_policy=NONE)
def use_bundle(cluster: str, name: str, address: str) -> bool:
    """Point ``current`` at ``address`` again (a cached build skipped the builder); ``False``
    when the address is gone (pruned), so the flow builds it again."""
    with context(cluster) as ctx:
        return bundle_builder.use_built(ctx.backend, name, address)


@task(cache_policy=NONE)
def prune_bundles_task(cluster: str) -> list[str]:
    """Remove bundle addresses no job references that are not current."""
    with context(cluster) as ctx:
        removed = bundle_builder.prune_bundles(
            ctx.backend.home, in_use=ctx.backend.bundle_paths_in_use()
        )
    return [str(p) for p in removed]


@task(cache_policy=NONE)
def prewarm_image_task(
    cluster: str, image: str, node_type: str | None = None, timeout: float = 300.0
) -> list[Any]:
    """Put ``image`` on the cluster's nodes; one row per node (also a table artifact)."""
    from prefect.artifacts import create_table_artifact

    with context(cluster) as ctx:
        rows = [vars(r) for r in ctx.backend.prewarm(image, node_type=node_type, timeout=timeout)]
    create_table_artifact(table=rows, description=f"pre-warm of {image} on {cluster}")
    return rows
