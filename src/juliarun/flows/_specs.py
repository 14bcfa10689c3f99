"""A flow's spec parameters, checked by juliarun rather than by Prefect.

The flows that take specs (run-job, run-pipeline) turn Prefect's parameter validation off: a
spec the form lets through but the model refuses (a reserved environment variable, a storage
field of another kind) would otherwise fail the run with pydantic's error and the engine's
traceback. Here it fails the run once, with juliarun's one-line, field-by-field message as
the run's state message, and a Python caller still gets the :class:`SpecError`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from juliarun.errors import SpecError
from juliarun.specs import Batch, JobSpec, JuliaBatch, JuliaParBatchWorkers, validate_spec

M = TypeVar("M", bound=BaseModel)


def job_spec(value: Any) -> JuliaBatch | JuliaParBatchWorkers | Batch:
    """The job of a flow's parameters: a job spec as given, or one built from a mapping.

    >>> job_spec({"kind": "Batch", "name": "hello", "command": ["true"]})
    Batch('hello')
    >>> job_spec({"kind": "Bach", "name": "hello"})
    Traceback (most recent call last):
    ...
    juliarun.errors.SpecError: invalid job: kind: must be one of Batch, JuliaBatch, ...
    """
    if isinstance(value, JuliaBatch | JuliaParBatchWorkers | Batch):
        return value
    if isinstance(value, JobSpec):  # another JobSpec subclass: refused by the union below
        value = {"kind": value.kind, **value.model_dump(mode="json")}
    return validate_spec(value)


def spec(value: Any, model: type[M]) -> M | None:
    """One optional spec parameter (``bundle``, ``image``): as given, or built from a mapping."""
    if value is None or isinstance(value, model):
        return value
    if not isinstance(value, Mapping):
        raise SpecError(model.__name__, [("(spec)", "must be a mapping of fields")])
    return model.model_validate(dict(value))


def specs(value: Any, model: type[M]) -> list[M] | None:
    """A list of specs (``storage``): each as given, or built from a mapping."""
    if value is None:
        return None
    if isinstance(value, Mapping | str) or not isinstance(value, Sequence):
        raise SpecError(model.__name__, [("(spec)", "must be a list of mappings")])
    return [item for item in (spec(v, model) for v in value) if item is not None]


def rejected(exc: SpecError) -> Any:
    """The state a flow returns for a spec it refuses: Failed, with juliarun's message (and its
    hint) as the run's one line; calling the flow from Python raises ``exc``."""
    from prefect.states import Failed

    return Failed(message=str(exc), data=exc)


def job_run_name() -> str:
    """A run of a job's flow is named after the job (the form's run name until then)."""
    from prefect.runtime import flow_run

    job = flow_run.parameters.get("job")
    name = job.get("name") if isinstance(job, Mapping) else getattr(job, "name", None)
    return name if isinstance(name, str) and name else str(flow_run.name or flow_run.flow_name)


_ENGINE_EXIT = "Engine execution exited with unexpected exception"


class _JuliaRunErrorsInOneLine:
    """A filter on Prefect's run loggers: a juliarun error (a refused spec, a failed job) is
    reported in its own words (message and hint, once in the run's state) without Python
    tracebacks: the engine's second report of the same failure is dropped, and other records
    keep their one-line message without the traceback."""

    def filter(self, record: object) -> bool:
        import logging

        from juliarun.errors import JuliaRunError

        assert isinstance(record, logging.LogRecord)
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, JuliaRunError):
            return True
        if record.msg == _ENGINE_EXIT:
            return False
        record.exc_info = None
        record.exc_text = None
        return True


_FILTER = _JuliaRunErrorsInOneLine()


def quiet_juliarun_tracebacks() -> None:
    """Install the filter on the loggers of flow and task runs (idempotent)."""
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
