"""Build tasks: an image and a package bundle, each cached by its content hash (an unchanged
spec is a Cached state, nothing rebuilt), with the build's output in the run's logs."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import TaskRunContext

from juliarun.backends.bundles import bundle_dir
from juliarun.builders import bundles as bundle_builder
from juliarun.builders import images as image_builder
from juliarun.specs import BundleSpec, ImageSpec
from juliarun.tasks._context import context


def _digest_key(_: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"juliarun-{parameters['kind']}-{parameters['digest']}"


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
    logger = get_run_logger()
    client = _docker_client()
    try:
        built = image_builder.build_image(
            client,
            spec,
            registry,
            auth=_registry_auth(credentials_block),
            on_line=lambda line: logger.info("build | %s", line),
        )
    finally:
        client.close()
    return built.tag


@task(cache_policy=NONE)
def bundle_digest(spec: BundleSpec, cluster: str = "local") -> str:
    """Check the bundle (every [deps] entry in the Manifest, paths exist); its content hash."""
    with context(cluster) as ctx:
        resolved = bundle_builder.resolve_bundle(
            spec,
            platform=ctx.backend.kind,
            julia_image=bundle_builder.builder_image(spec, ctx.backend),
        )
    # The key names the home too: an address built for another home is not this one's.
    return hashlib.sha256(f"{ctx.settings.home}\0{resolved.digest}".encode()).hexdigest()


@task(cache_key_fn=_digest_key, persist_result=True)
def build_bundle_task(
    spec: BundleSpec, cluster: str, digest: str, kind: str = "bundle"
) -> dict[str, Any]:
    """Run the builder job that precompiles the bundle; returns its address."""
    logger = get_run_logger()
    with context(cluster) as ctx:
        built = bundle_builder.build_bundle(
            spec, ctx.backend, on_line=lambda line: logger.info("bundle | %s", line)
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
        home = ctx.settings.home
        if not (bundle_dir(home, name) / address / "bundle.json").is_file():
            return False
        bundle_builder.set_current(home, name, address)
    return True


@task(cache_policy=NONE)
def prune_bundles_task(cluster: str) -> list[str]:
    """Remove bundle addresses no job references that are not current."""
    with context(cluster) as ctx:
        in_use = getattr(ctx.backend, "bundle_paths_in_use", None)  # Kubernetes Jobs
        removed = bundle_builder.prune_bundles(
            ctx.settings.home, in_use=in_use() if callable(in_use) else ()
        )
    return [str(p) for p in removed]


@task(cache_policy=NONE)
def prewarm_image_task(
    cluster: str, image: str, node_type: str | None = None, timeout: float = 300.0
) -> list[Any]:
    """Put ``image`` on the cluster's nodes; one row per node (also a table artifact)."""
    from prefect.artifacts import create_table_artifact

    from juliarun.builders.prewarm import prewarm_image

    with context(cluster) as ctx:
        rows = [
            vars(r) for r in prewarm_image(ctx.backend, image, node_type=node_type, timeout=timeout)
        ]
    create_table_artifact(table=rows, description=f"pre-warm of {image} on {cluster}")
    return rows
