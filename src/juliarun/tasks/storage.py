"""Storage tasks."""

from __future__ import annotations

from typing import Any, cast

from prefect import Task, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State, TaskRun

from juliarun import api
from juliarun.blocks.storage import Storage
from juliarun.errors import SpecError, StorageNotFoundError
from juliarun.specs import StorageSpec
from juliarun.tasks._context import context


@task(cache_policy=NONE)
def define_storage(cluster: str, spec: StorageSpec) -> StorageSpec:
    """Record ``spec`` in the cluster's storage catalog."""
    with context(cluster) as ctx:
        return api.define_storage(ctx, spec)


def _transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry provisioning failures that may pass (a git fetch, a busy file), not bad input."""
    try:
        state.result()
    except (StorageNotFoundError, SpecError):
        return False
    except Exception:
        return True
    return False


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def provision_storage(cluster: str, name: str) -> str:
    """Create the named storage on the cluster if needed; returns where it lives.

    The name is looked up in the cluster's storage catalog, then among the saved ``Storage``
    blocks (which are then recorded in the catalog), so storage defined once in the Prefect UI
    is usable by name."""
    with context(cluster) as ctx:
        try:
            spec = ctx.storage.get(name)
        except StorageNotFoundError:
            try:
                block = cast(Storage, Storage.load(name))
            except ValueError:
                raise StorageNotFoundError(name, [s.name for s in ctx.storage.all()]) from None
            spec = api.define_storage(ctx, block.spec(name))
        return ctx.backend.provision_storage(spec)


@task(cache_policy=NONE)
def prune_storage_task(cluster: str) -> list[str]:
    """Remove storage a newer version replaced that nothing uses (Docker: git volumes of older
    commits); clusters with nothing of the kind return an empty list."""
    with context(cluster) as ctx:
        return ctx.backend.prune_storage()
