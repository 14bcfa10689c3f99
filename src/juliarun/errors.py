"""One exception root for juliarun; every subclass carries a ``hint`` (what to do next)."""

from __future__ import annotations

import re


class JuliaRunError(Exception):
    """Root of every error juliarun raises on purpose.

    ``hint`` says what to do next; ``str(err)`` is the message followed by the hint.
    ``cli_hint`` is the same advice for a person at the ``juliarun`` command line, where
    ``hint`` speaks Python (the command line prints ``cli_hint`` when there is one).

    >>> err = JuliaRunError("no such thing", hint="call f()", cli_hint="run `juliarun f`")
    >>> str(err), err.cli_hint
    ('no such thing (hint: call f())', 'run `juliarun f`')
    """

    default_hint: str = ""

    def __init__(
        self, message: str, *, hint: str | None = None, cli_hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.cli_hint = cli_hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class SpecError(JuliaRunError):
    """A user input is invalid. ``errors`` lists ``(field path, rule)`` pairs, all at once."""

    default_hint = "fix the named fields and submit again; nothing was created"

    def __init__(
        self, model: str, errors: list[tuple[str, str]], *, hint: str | None = None
    ) -> None:
        self.model = model
        self.errors = errors
        detail = "; ".join(f"{field}: {rule}" for field, rule in errors)
        super().__init__(f"invalid {model}: {detail}", hint=hint)


class ConfigError(JuliaRunError):
    """Settings or a cluster/storage block cannot be used as configured."""

    default_hint = "check the JULIARUN_* environment variables and saved blocks"


class StorageNotFoundError(JuliaRunError):
    """A job names storage that is not defined."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        known_text = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"storage {name!r} is not defined (defined: {known_text})",
            hint=f"define it first: juliarun.define_storage(ctx, name={name!r}, kind=..., ...)",
            cli_hint=f"define it first: `juliarun storage define {name} --kind host --path DIR`",
        )


class StorageError(JuliaRunError):
    """Storage could not be provisioned (a path, a tmpfs mount, a git checkout)."""


class JobNotFoundError(JuliaRunError):
    """No job of that name exists on the cluster."""

    def __init__(self, name: str, cluster: str) -> None:
        self.name = name
        self.cluster = cluster
        super().__init__(
            f"job {name!r} not found on cluster {cluster!r}",
            hint="list the jobs with `juliarun list`",
        )


class JobExistsError(JuliaRunError):
    """A different job of the same name already exists."""

    def __init__(self, name: str, cluster: str) -> None:
        self.name = name
        self.cluster = cluster
        super().__init__(
            f"a different job named {name!r} already exists on cluster {cluster!r}",
            hint=f"delete it first (`juliarun delete {name}`) or choose another name",
        )


_STACK_FRAME = re.compile(r"^\s*\[\d+\] ")


def fold_stack_frames(lines: list[str]) -> list[str]:
    """``lines`` with each run of Julia stack frames (`` [3] f() at file.jl:5``) folded into one
    line saying how many there were: a failure's message names the error, while the frames are
    in the job's own lines (a run's logs, ``juliarun tail``), so they are not said twice.

    >>> print("\\n".join(fold_stack_frames(["ERROR: LoadError: boom", "Stacktrace:",
    ...     " [1] error(::String) at ./error.jl:33", " [2] f() at /m/x.jl:3",
    ...     "in expression starting at /m/x.jl:5"])))
    ERROR: LoadError: boom
    Stacktrace: (2 frames, in the job's output)
    in expression starting at /m/x.jl:5
    """
    out: list[str] = []
    frames = 0
    for line in [*lines, None]:
        if line is not None and _STACK_FRAME.match(line):
            frames += 1
            continue
        if frames:
            summary = f"({frames} frame{'s' if frames > 1 else ''}, in the job's output)"
            if out and out[-1].rstrip().endswith("Stacktrace:"):
                out[-1] = f"{out[-1].rstrip()} {summary}"
            else:
                out.append(summary)
            frames = 0
        if line is not None:
            out.append(line)
    return out


class JobFailedError(JuliaRunError):
    """A job ended in failure; ``reason`` is the diagnosis, ``last_lines`` its final output."""

    def __init__(
        self,
        name: str,
        reason: str,
        *,
        last_lines: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.name = name
        self.reason = reason
        self.last_lines = last_lines or []
        tail = ""
        if self.last_lines:
            tail = "\nlast lines:\n  " + "\n  ".join(self.last_lines)
        super().__init__(
            f"job {name!r} failed: {reason}{tail}",
            hint=hint or f"see its output with `juliarun tail {name}`",
        )


class JobTimeoutError(JuliaRunError):
    """Waiting for a job exceeded its timeout; the job is left as it was."""

    def __init__(self, name: str, timeout: float, state: str) -> None:
        self.name = name
        self.timeout = timeout
        self.state = state
        super().__init__(
            f"job {name!r} still {state} after {timeout:g}s",
            hint="wait longer, or inspect it with `juliarun status` / `juliarun tail`",
        )


class BackendError(JuliaRunError):
    """The execution platform refused or failed an operation."""


class PermissionDeniedError(BackendError):
    """The platform refused an operation for lack of permission (a Kubernetes RBAC 403):
    ``user`` may not ``verb`` the ``resource`` in ``namespace`` (each ``None`` when unknown)."""

    def __init__(
        self,
        message: str,
        *,
        user: str | None = None,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.user = user
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        if hint is None and verb and resource:
            where = f" in namespace {namespace}" if namespace else " cluster-wide"
            hint = (
                f"the credentials ({user or 'this user'}) lack `{verb}` on {resource}{where}: "
                "use a context for your own tenant's namespace, or ask the cluster admin for a "
                "Role granting it"
            )
        super().__init__(message, hint=hint)


class QuotaExceededError(BackendError):
    """A job cannot fit a ResourceQuota: ``problems`` lists ``(resource, needed, hard)``."""

    def __init__(
        self,
        job: str,
        namespace: str,
        quota: str,
        problems: list[tuple[str, str, str]],
        *,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.job = job
        self.namespace = namespace
        self.quota = quota
        self.problems = problems
        what = "; ".join(f"{res} needs {need} > hard {hard}" for res, need, hard in problems)
        super().__init__(
            f"job {job!r}: quota exceeded: ResourceQuota {quota!r} in namespace "
            f"{namespace!r}: {detail or what}",
            hint=hint
            or f"ask for less (fewer workers, smaller requests) or raise the ResourceQuota "
            f"{quota} in namespace {namespace}; nothing was created",
        )


class StoreError(JuliaRunError):
    """A log or metric store could not be read or written."""


class LineProtocolError(JuliaRunError):
    """A metrics line is not valid InfluxDB line protocol.

    ``column`` is 1-based (``None`` when formatting a point), ``lineno`` the line's number in
    a bulk text (``None`` for a single line), ``rule`` the rule broken, ``line`` the text.
    """

    default_hint = (
        "write lines like `measurement,tag=value field=1.5,count=3i 1700000000000000000` "
        "(numeric fields only; escape commas, spaces and '=' with a backslash)"
    )

    def __init__(
        self,
        rule: str,
        *,
        line: str,
        column: int | None = None,
        lineno: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.rule = rule
        self.line = line
        self.column = column
        self.lineno = lineno
        where = []
        if lineno is not None:
            where.append(f"line {lineno}")
        if column is not None:
            where.append(f"column {column}")
        at = f" at {', '.join(where)}" if where else ""
        super().__init__(f"invalid line protocol{at}: {rule}: {line!r}", hint=hint)


class BuildError(JuliaRunError):
    """An image or package-bundle build failed: ``step`` is what failed (a Dockerfile
    instruction, a builder command), ``output`` the last lines it printed."""

    def __init__(
        self, what: str, step: str, output: list[str] | None = None, *, hint: str | None = None
    ) -> None:
        self.what = what
        self.step = step
        self.output = output or []
        tail = "\n  ".join(self.output)
        super().__init__(
            f"{what} failed at step: {step}" + (f"\noutput:\n  {tail}" if tail else ""),
            hint=hint or "fix the step (see its output above) and build again",
        )


class QueueError(JuliaRunError):
    """A message queue broker could not be started, reached or used."""

    default_hint = "check the broker's log (its directory is in the message) and that it is running"


class MetricError(JuliaRunError):
    """A metric a scaler reads failed or gave no usable number: ``source`` names the metric.
    A scaler that meets one holds the current scale and says why."""

    default_hint = (
        "check the metric's source (the queue, the metric store, the function); the scaler "
        "keeps the current scale until it reads a number again"
    )

    def __init__(self, source: str, problem: str, *, hint: str | None = None) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"metric {source}: {problem}", hint=hint)
