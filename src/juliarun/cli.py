"""The ``juliarun`` command line: the seed's session from a shell."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from juliarun import api
from juliarun.cli_login import register as register_login
from juliarun.errors import JuliaRunError, SpecError
from juliarun.logs import LogLine, LogQuery
from juliarun.logs.base import Stream, printable
from juliarun.metrics import Row
from juliarun.metrics.base import MetricNames
from juliarun.specs import StorageKind, is_job_name, validate_spec

HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="juliarun",
    help="Run Julia workloads at scale: local processes, Docker and Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=HELP,
)
logs_app = typer.Typer(
    help="Search, follow and collect stored job output.",
    no_args_is_help=True,
    context_settings=HELP,
)
storage_app = typer.Typer(help="Define named storage.", no_args_is_help=True, context_settings=HELP)
app.add_typer(logs_app, name="logs")
app.add_typer(storage_app, name="storage")
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", "-c", help="local, docker, kubernetes or a cluster block name."),
]


def one_line(text: str) -> str:
    """``text`` as one printable line: line breaks become spaces, control characters (a
    terminal's escape sequences, from a job's output or a spec's unknown key) ``\\xNN``.

    >>> one_line("invalid job:\\n  \\x1b[31mred\\x1b[0m: unknown field")
    'invalid job: \\\\x1b[31mred\\\\x1b[0m: unknown field'
    """
    return printable(re.sub(r"\s*[\r\n]+\s*", " ", text).strip())


def cli_hint(exc: JuliaRunError, command: str) -> str:
    """The hint a person at the command line gets: the error's ``cli_hint`` when it has one;
    the spec hint ("... submit again") only after ``submit``; else its ``hint``.

    >>> cli_hint(SpecError("logs", [("since", "bad")]), "juliarun logs search")
    'see `juliarun logs search -h` for what each option takes'
    """
    if exc.cli_hint:
        return exc.cli_hint
    if exc.hint == SpecError.default_hint and not command.endswith(" submit"):
        return f"see `{command} -h` for what each option takes"
    return exc.hint


def fail(message: str, hint: str = "", code: int = 1) -> typer.Exit:
    """Print ``error: message`` (and ``hint:``) on stderr, one line each; the Exit to raise."""
    err.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[dim]hint: {escape(one_line(hint))}[/dim]", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def clean_errors(fn: F) -> F:
    """A JuliaRunError prints one line (and its hint) and exits 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JuliaRunError as exc:
            raise fail(exc.message, cli_hint(exc, command_path(wrapper))) from None

    return wrapper  # type: ignore[return-value]


def command_path(callback: Callable[..., Any], group: typer.Typer | None = None) -> str:
    """The command line that runs ``callback``: ``juliarun logs search``."""
    group = group or app
    for info in group.registered_commands:
        if info.callback is callback:
            name = info.name or callback.__name__.replace("_", "-")
            return f"juliarun {name}" if group is app else name
    for sub in group.registered_groups:
        if sub.typer_instance is None:
            continue
        found = command_path(callback, sub.typer_instance)
        if found != "juliarun":
            prefix = "juliarun " if group is app else ""
            return f"{prefix}{sub.name} {found.removeprefix('juliarun ')}"
    return "juliarun"


DEFAULT_CLUSTERS = ("local", "docker", "kubernetes")
_BLOCK_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def connect(cluster: str | None) -> api.Context:
    """``api.init(cluster)``, once the name is checked: a name that cannot be a saved block's
    is refused here, before anything asks a Prefect server about it."""
    if (
        cluster is not None
        and cluster not in DEFAULT_CLUSTERS
        and not _BLOCK_NAME.fullmatch(cluster)
    ):
        raise SpecError(
            "arguments",
            [
                (
                    "--cluster",
                    "must be local, docker, kubernetes or a saved cluster block's name "
                    f"(lowercase letters, digits and '-'), got {cluster[:80]!r}",
                )
            ],
            hint="",
        )
    return api.init(cluster)


def job_name(name: str) -> str:
    """A job-name argument, checked before anything uses it (a name becomes a path)."""
    if not is_job_name(name):
        raise SpecError(
            "arguments",
            [("job", f"must be a job name (a DNS-1123 label), got {name[:80]!r}")],
            hint="list the jobs with `juliarun list`",
        )
    return name


MAX_SPEC_BYTES = 1 << 20
MAX_YAML_DEPTH = 64


class _SpecLoader(yaml.SafeLoader):
    """YAML as a spec file is read: a key given twice is an error (not the last one winning),
    an integer too long to be a number is an error (not a crash), and so is nesting deeper
    than :data:`MAX_YAML_DEPTH` (found as it is read, not after a deep recursion)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nests deeper than {MAX_YAML_DEPTH} levels", None
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _mapping(loader: _SpecLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {str(key)[:80]!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


def _integer(loader: _SpecLoader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, "an integer too long to be a number", node.start_mark
        ) from None


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _integer)


def _decode(raw: bytes, where: str) -> str:
    """A spec file's text: UTF-8, or UTF-16/32 with a byte-order mark."""
    boms = (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    )
    encoding = next((enc for bom, enc in boms if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise SpecError(
            "job",
            [("(file)", f"{where} is not {encoding.upper()} text (at byte {exc.start})")],
            hint="save the file as UTF-8",
        ) from exc


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """A YAML error as one line naming the file, line and column: ``job.yaml:3:5: ...``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    detail = f"{context}, {problem}" if context and "twice" not in problem else problem
    return f"{where}: not valid YAML: {one_line(detail)}"


def load_spec_file(path: Path) -> Any:
    """The data of a YAML spec file; every way it can be unreadable is one :class:`SpecError`
    (a missing file: a :class:`JuliaRunError` saying so)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError as exc:
        raise JuliaRunError(
            f"no such file: {path}",
            hint="give the path of a YAML spec file; `juliarun explain KIND` shows one",
        ) from exc
    except OSError as exc:
        raise SpecError("job", [("(file)", f"cannot read {path}: {exc.strerror}")]) from exc
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError("job", [("(file)", f"{path} is larger than {MAX_SPEC_BYTES >> 20} MiB")])
    text = _decode(raw, str(path))
    try:
        return yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as exc:
        raise SpecError(
            "job", [("(file)", _yaml_problem(path, exc))], hint="fix the YAML there and try again"
        ) from exc
    except RecursionError as exc:
        raise SpecError("job", [("(file)", f"{path} nests too deeply")]) from exc


SHORTCUTS = ("cpu", "memory", "gpu", "node_type")


def check_layout(data: Any, path: Path) -> Any:
    """Refuse what a wrong indentation makes of a spec file: ``resources:`` with nothing under
    it (its fields dedented to the top level), or a resource field at the top level beside a
    ``resources:`` mapping. (Alone, a top-level ``cpu:`` is the documented shortcut.)"""
    if not isinstance(data, dict) or "resources" not in data:
        return data
    problems: list[tuple[str, str]] = []
    if data["resources"] is None:
        problems.append(
            ("resources", "is empty: indent its fields (cpu, memory, ...) under resources:")
        )
    for key in SHORTCUTS:
        if key in data:
            problems.append(
                (key, "is at the top level beside resources: (dedented?): indent it under it")
            )
    if problems:
        raise SpecError(
            str(data.get("kind", "job")), problems, hint=f"fix the indentation in {path}"
        )
    return data


def _version(value: bool) -> None:
    if value:
        try:
            print(f"juliarun {version('juliarun')}")
        except PackageNotFoundError:  # pragma: no cover - run from a bare checkout
            print("juliarun (not installed)")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    if verbose:
        logging.getLogger("juliarun").setLevel(logging.INFO)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s:%(levelname)s:%(name)s:%(message)s"))
        logging.getLogger("juliarun").addHandler(handler)


@app.command()
@clean_errors
def status(
    job: Annotated[str | None, typer.Argument(help="A job name; the cluster when omitted.")] = None,
    cluster: ClusterOpt = None,
) -> None:
    """The cluster (components, pods waiting, free capacity per node) or one job."""
    if job is not None:
        job_name(job)
    with connect(cluster) as ctx:
        if job is not None:
            api.status(ctx, job, verbose=True)
            return
        view = api.status(ctx)
        if not view.nodes and not view.healthy:  # nothing answered: no cluster to show
            down = next(c for c in view.components if not c.healthy)
            raise JuliaRunError(
                f"cluster {ctx.cluster!r} does not answer: {down.name}: {down.detail}",
                hint=f"start it, or choose another with --cluster ({', '.join(DEFAULT_CLUSTERS)})",
            )
        print(view.render(verbose=True))


@app.command()
@clean_errors
def submit(
    spec_file: Annotated[Path, typer.Argument(help="YAML with a job spec (kind: JuliaBatch...).")],
    cluster: ClusterOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait and tail until it ends.")
    ] = False,
) -> None:
    """Submit the job described in SPEC_FILE (`juliarun explain KIND` shows the fields)."""
    job = validate_spec(check_layout(load_spec_file(spec_file), spec_file))
    with connect(cluster) as ctx:
        print(f"{job.name}: {api.submit(ctx, job)}", flush=True)
        if wait:
            try:
                api.tail(ctx, job=job, follow=True)
            except KeyboardInterrupt:
                where = "" if cluster is None else f" --cluster {cluster}"
                raise fail(
                    f"stopped waiting; job {job.name!r} keeps running on cluster {ctx.cluster!r}",
                    f"follow it with `juliarun tail -f {job.name}{where}`, stop it with "
                    f"`juliarun delete {job.name}{where}`",
                    code=130,
                ) from None
            final = api.status(ctx, job)
            print(f"{job.name}: {final}")
            if final.phase == "failed":
                raise typer.Exit(1)


@app.command("list")
@clean_errors
def list_jobs(cluster: ClusterOpt = None) -> None:
    """The jobs on the cluster, oldest first: status, how long they ran, how old they are."""
    with connect(cluster) as ctx:
        jobs = api.list(ctx)
        if not jobs:
            err.print(f"no jobs on cluster {ctx.cluster!r}", highlight=False)
            return
        now = datetime.now(UTC)
        table = Table(
            "job", "kind", "workers", "status", "duration", "age", box=None, pad_edge=False
        )
        for job in jobs:
            state = api.status(ctx, job)
            started = state.created_at
            ran = None if started is None else (state.finished_at or now) - started
            table.add_row(
                job.name,
                job.kind,
                str(job.desired_workers()),
                str(state),
                age(ran),
                age(None if started is None else now - started),
            )
        Console().print(table)


def age(delta: timedelta | None) -> str:
    """A duration as kubectl shows one: two units at most.

    >>> [age(timedelta(seconds=s)) for s in (4, 75, 3600 * 5 + 120, 86400 * 3 + 7200)]
    ['4s', '1m15s', '5h2m', '3d2h']
    >>> age(None)
    '-'
    """
    if delta is None:
        return "-"
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


@app.command()
@clean_errors
def tail(
    job: Annotated[str, typer.Argument(help="The job name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following.")] = False,
    lines: Annotated[int | None, typer.Option("--lines", "-n", min=1, help="Last N lines.")] = None,
    worker: Annotated[str | None, typer.Option(help="Only this worker.")] = None,
    cluster: ClusterOpt = None,
) -> None:
    """Print a job's output as `timestamp, worker-id, line`."""
    job_name(job)
    with connect(cluster) as ctx:
        if worker is not None:
            state = api.status(ctx, job)
            known = sorted(
                {f"{job}-{i}" for i in range(state.desired_workers)}
                | {w.id for w in state.workers},
                key=lambda w: (len(w), w),
            )
            if worker not in known:
                raise JuliaRunError(
                    f"job {job!r} has no worker {worker[:80]!r}; its workers: "
                    + (", ".join(known) or "none"),
                    hint=f"see them with `juliarun status {job}`",
                )
        api.tail(ctx, job=job, follow=follow, lines=lines, worker=worker)


@app.command()
@clean_errors
def delete(
    job: Annotated[str, typer.Argument(help="The job name.")],
    force: Annotated[bool, typer.Option("--force", help="Kill at once, no grace.")] = False,
    cluster: ClusterOpt = None,
) -> None:
    """Stop a job's workers and remove it."""
    job_name(job)
    with connect(cluster) as ctx:
        if not api.delete(ctx, job, force=force):
            raise JuliaRunError(f"no job {job!r} on cluster {ctx.cluster!r}")
        print(f"deleted job {job}")


@app.command()
@clean_errors
def scale(
    job: Annotated[str, typer.Argument(help="A JuliaParBatchWorkers job.")],
    workers: Annotated[int, typer.Argument(min=0, max=1000, help="The new worker count.")],
    cluster: ClusterOpt = None,
) -> None:
    """Change the number of workers of a running job."""
    job_name(job)
    with connect(cluster) as ctx:
        print(api.scale(ctx, job, workers))


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str | None, now: datetime | None = None) -> datetime | None:
    """A time option: a duration ago (``90s``, ``10m``, ``2h``, ``1d``, ``1w``) or an ISO 8601
    time (UTC unless it names a zone).

    >>> t = datetime(2026, 1, 1, 12, tzinfo=UTC)
    >>> parse_when("10m", t).isoformat(), parse_when("2026-01-01T11:00", t).isoformat()
    ('2026-01-01T11:50:00+00:00', '2026-01-01T11:00:00+00:00')
    """
    if text is None:
        return None
    m = _DURATION.match(text.strip())
    if m:
        ago = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
        return (now or datetime.now(UTC)) - ago
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise SpecError(
            "logs", [("since/until", f"{text!r} is neither a duration (10m) nor an ISO time")]
        ) from exc
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _stream(value: str | None) -> Stream | None:
    if value not in (None, "stdout", "stderr"):
        raise SpecError("logs", [("stream", "must be stdout or stderr")])
    return value  # type: ignore[return-value]


JobOpt = Annotated[str | None, typer.Option(help="Only this job.")]
WorkerOpt = Annotated[str | None, typer.Option(help="Only this worker (<job>-<i>).")]
StreamOpt = Annotated[str | None, typer.Option(help="Only stdout or stderr.")]
TenantOpt = Annotated[str | None, typer.Option(help="Only this tenant's jobs.")]
SinceOpt = Annotated[
    str | None, typer.Option(help="From this time: a duration ago (10m, 2h) or ISO time.")
]
UntilOpt = Annotated[str | None, typer.Option(help="Before this time (same forms as --since).")]


@logs_app.command("search")
@clean_errors
def logs_search(
    query: Annotated[str, typer.Argument(help="Words that must all appear.")],
    job: JobOpt = None,
    worker: WorkerOpt = None,
    stream: StreamOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    tenant: TenantOpt = None,
    regex: Annotated[bool, typer.Option(help="QUERY is a regular expression.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (latest) lines.")] = 200,
    cluster: ClusterOpt = None,
) -> None:
    """Search stored output of every job (full text, or --regex), narrowed by the filters."""
    with connect(cluster) as ctx:
        found = api.search(
            ctx,
            None if regex else query,
            regex=query if regex else None,
            job=job,
            worker=worker,
            stream=_stream(stream),
            tenant=tenant,
            since=parse_when(since),
            until=parse_when(until),
            limit=limit,
        )
        for line in found:
            print(f"{line.job}: {mark_stream(line)}")


def mark_stream(line: LogLine) -> str:
    """A stored line as tail prints it, with ``(stderr)`` after the worker of a stderr line.

    >>> stamp = datetime(2026, 1, 1, tzinfo=UTC)
    >>> mark_stream(LogLine(stamp, "j", "j-0", "stderr", "oops"))
    '2026-01-01T00:00:00+00:00, j-0 (stderr), oops'
    """
    if line.stream != "stderr":
        return line.render()
    stamp, worker, message = line.render().split(", ", 2)
    return f"{stamp}, {worker} (stderr), {message}"


@logs_app.command("follow")
@clean_errors
def logs_follow(
    job: JobOpt = None,
    worker: WorkerOpt = None,
    stream: StreamOpt = None,
    tenant: TenantOpt = None,
    since: SinceOpt = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds.")
    ] = None,
    cluster: ClusterOpt = None,
) -> None:
    """Print stored lines as they arrive (until --job ends, --timeout, or Ctrl-C)."""
    with connect(cluster) as ctx:
        query = LogQuery(
            job=job,
            worker=worker,
            stream=_stream(stream),
            tenant=tenant,
            since=parse_when(since),
        )
        deadline = None if timeout is None else time.monotonic() + timeout

        def stop() -> bool:
            if deadline is not None and time.monotonic() >= deadline:
                return True
            return job is not None and ctx.backend.status(job).done

        with contextlib.suppress(KeyboardInterrupt):
            for line in ctx.logs.follow(query, stop=stop, poll_interval=ctx.settings.poll_interval):
                print(f"{line.job}: {mark_stream(line)}", flush=True)


@logs_app.command("collect")
@clean_errors
def logs_collect(
    job: Annotated[str, typer.Argument(help="The job name.")],
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds.")
    ] = None,
    cluster: ClusterOpt = None,
) -> None:
    """Ship a Kubernetes job's pod logs and metrics into the stores until it ends (exactly once:
    resumes after what the store holds). Local and Docker jobs are shipped already."""
    job_name(job)
    with connect(cluster) as ctx:
        result = api.collect(ctx, job, timeout=timeout)
        print(
            f"{job}: {result.lines} lines, {result.metric_points} metric points, "
            f"{result.system_points} system samples ({result.ended})"
        )


@storage_app.command("define")
@clean_errors
def storage_define(
    name: Annotated[str, typer.Argument(help="The storage name jobs use.")],
    kind: Annotated[str, typer.Option(help="host, ramdisk, volume or git.")] = "host",
    path: Annotated[str | None, typer.Option(help="host: the directory.")] = None,
    url: Annotated[str | None, typer.Option(help="git: the repository.")] = None,
    ref: Annotated[str | None, typer.Option(help="git: branch, tag or commit.")] = None,
    size: Annotated[
        str | None, typer.Option(help="ramdisk: size limit, e.g. 256Mi; volume: its size.")
    ] = None,
    storage_class: Annotated[
        str | None, typer.Option(help="volume: the Kubernetes StorageClass.")
    ] = None,
    access_mode: Annotated[
        str | None, typer.Option(help="volume: ReadWriteOnce, ReadOnlyMany or ReadWriteMany.")
    ] = None,
    cluster: ClusterOpt = None,
) -> None:
    """Define named storage (mounted by jobs at /mnt/NAME)."""
    storage_kind: StorageKind = kind  # type: ignore[assignment]  # validated by StorageSpec
    volume: dict[str, Any] = {
        k: v for k, v in (("storage_class", storage_class), ("access_mode", access_mode)) if v
    }
    with connect(cluster) as ctx:
        spec = api.define_storage(
            ctx, name=name, kind=storage_kind, path=path, url=url, ref=ref, size=size, **volume
        )
        print(f"{spec.name}: {spec.kind} at {ctx.backend.provision_storage(spec)}")


@storage_app.command("list")
@clean_errors
def storage_list(cluster: ClusterOpt = None) -> None:
    """The defined storage."""
    with connect(cluster) as ctx:
        for spec in ctx.storage.all():
            where = spec.path or spec.url or spec.size or ""
            print(f"{spec.name}\t{spec.kind}\t{where}")


class _DefaultQuery(TyperGroup):
    """``juliarun metrics NAME ...`` is ``juliarun metrics query NAME ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["query", *args]
        return super().parse_args(ctx, args)


metrics_app = typer.Typer(
    help="Aggregate and plot metrics.",
    no_args_is_help=True,
    cls=_DefaultQuery,
    context_settings=HELP,
)
app.add_typer(metrics_app, name="metrics")
AGGS = ("mean", "max", "min", "sum", "last", "count")
NameArg = Annotated[str, typer.Argument(help="The metric name.")]
AggOpt = Annotated[str, typer.Option(help="mean, max, min, sum, last or count.")]
WindowOpt = Annotated[float | None, typer.Option(help="Window in seconds.")]
ByOpt = Annotated[list[str] | None, typer.Option("--by", help="Group by this tag.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Only points with tag=value.")]
LastOpt = Annotated[str | None, typer.Option(help="Only the last period: 10m, 2h, 1d.")]


def _metric_rows(
    ctx: api.Context,
    name: str,
    agg: str,
    window: float | None,
    group_by: list[str] | None,
    tags: list[str] | None,
    last: str | None,
) -> list[Row]:
    if agg not in AGGS:
        raise SpecError("metrics", [("agg", f"must be one of {', '.join(AGGS)}")])
    pairs = [t.partition("=") for t in tags or []]
    if any(not k or not sep for k, sep, _ in pairs):
        raise SpecError("metrics", [("tag", "must be key=value")])
    since = parse_when(last)
    rows = api.metrics(
        ctx,
        name,
        tags={k: v for k, _, v in pairs},
        last=None if since is None else datetime.now(UTC) - since,
        agg=agg,  # type: ignore[arg-type]
        window=timedelta(seconds=window) if window else None,
        group_by=tuple(group_by or ()),
    )
    if not rows and isinstance(ctx.metrics, MetricNames):
        known = ctx.metrics.names()
        if name not in known:
            shown = ", ".join(known[:20]) + (
                f" (and {len(known) - 20} more)" if len(known) > 20 else ""
            )
            raise JuliaRunError(
                f"no metric {name[:80]!r} on cluster {ctx.cluster!r}; known: {shown or 'none'}",
                hint="check the spelling: metric names are case-sensitive",
            )
    return rows


NICE_WINDOWS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def auto_window(first: datetime, last: datetime, buckets: int = 60) -> float:
    """A window (seconds) that cuts ``first .. last`` into about ``buckets`` points, rounded
    to a whole unit (1s, 5s, 1m, 5m, 1h, 1d ...).

    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> [auto_window(t, t + timedelta(seconds=s)) for s in (0, 180, 2 * 86400)]
    [1, 5, 3600]
    """
    wanted = (last - first).total_seconds() / buckets
    return next((w for w in NICE_WINDOWS if w >= wanted), NICE_WINDOWS[-1])


@metrics_app.command("query")
@clean_errors
def metrics(
    name: NameArg,
    agg: AggOpt = "mean",
    window: WindowOpt = None,
    group_by: ByOpt = None,
    tag: TagOpt = None,
    last: LastOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Aggregate a metric (also: `juliarun metrics NAME ...`): tab-separated `start`, `group`
    (tag=value of --by) and the value, under a header."""
    with connect(cluster) as ctx:
        rows = _metric_rows(ctx, name, agg, window, group_by, tag, last)
        if not rows:
            err.print(f"no points of {name!r} match", highlight=False)
            return
        print(f"start\tgroup\t{agg}({name})")
        for row in rows:
            group = ",".join(f"{k}={v}" for k, v in row.group.items())
            print(f"{row.start.isoformat(timespec='seconds')}\t{group}\t{row.value:g}")


@metrics_app.command("plot")
@clean_errors
def metrics_plot(
    name: NameArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The PNG to write.")],
    agg: AggOpt = "mean",
    window: WindowOpt = None,
    group_by: ByOpt = None,
    tag: TagOpt = None,
    last: LastOpt = None,
    cluster: ClusterOpt = None,
) -> None:
    """Plot an aggregated metric as a PNG, one line per group. Without --window the window
    follows the data's span (about 60 points)."""
    from juliarun.metrics.plot import plot

    with connect(cluster) as ctx:
        rows = _metric_rows(ctx, name, "count", None, group_by, tag, last)
        if not rows:
            raise JuliaRunError(
                f"no points of {name!r} match", hint="check the name, --tag and --last"
            )
        if window is None:  # the span of the data: by the minute, then by the second
            ends = _metric_rows(ctx, name, "count", 60, None, tag, last)
            if ends[-1].start - ends[0].start < timedelta(minutes=10):
                ends = _metric_rows(ctx, name, "count", 1, None, tag, last)
            window = auto_window(ends[0].start, ends[-1].start)
        rows = _metric_rows(ctx, name, agg, window, group_by, tag, last)
        every = age(timedelta(seconds=window))
        path = plot(rows, out, title=f"{agg}({name}) per {every}", ylabel=name)
        print(f"{path}: {len(rows)} points, window {every}")


@app.command()
@clean_errors
def placement(
    cluster: ClusterOpt = None,
    interval: Annotated[
        float, typer.Option(help="Seconds between passes.", min=0.1, max=600)
    ] = 1.0,
) -> None:
    """Place gated jobs whole (a Kubernetes cluster with placement 'juliarun') until Ctrl-C,
    printing each decision."""
    from juliarun.backends.base import Placer

    with connect(cluster) as ctx:
        if not isinstance(ctx.backend, Placer):
            raise JuliaRunError(
                f"cluster {ctx.cluster!r} places its jobs itself ({ctx.backend.kind})",
                hint="juliarun places jobs whole on Kubernetes clusters with placement 'juliarun'",
            )
        controller = ctx.backend.placement_controller(interval=interval)
        controller.on_decision = lambda decision: print(decision, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            controller.run()


@app.command()
@clean_errors
def demo(
    which: Annotated[
        str,
        typer.Argument(
            help="session: the seed's session (helloworld batch, 3 workers, tail, delete) "
            "through the run_job flow; autoscale: the talk's process-autoscaler demo (a queue, "
            "Julia workers, a JobScaler following the backlog); cluster: the talk's cluster-"
            "autoscaler demo on a Kubernetes cluster with kwok (nodes follow a job up and down)."
        ),
    ] = "session",
) -> None:
    """Run one of the talk's demos on the embedded local default, with real Julia."""
    if which == "session":
        from juliarun.demo import run

        run()
    elif which == "autoscale":
        from juliarun.demo_autoscale import run as run_autoscale

        run_autoscale()
    elif which == "cluster":
        from juliarun.demo_cluster import run as run_cluster

        run_cluster()
    else:
        raise JuliaRunError(f"no demo {which!r}", hint="juliarun demo session | autoscale")


build_app = typer.Typer(
    help="Build container images and package bundles, showing each step as it runs.",
    no_args_is_help=True,
    context_settings=HELP,
)
app.add_typer(build_app, name="build")
register_login(app)  # juliarun login / logout / whoami (juliarun.cli_login)


def _spec_data(path: Path, kind: str) -> dict[str, Any]:
    data = load_spec_file(path)
    if not isinstance(data, dict):
        raise SpecError(kind, [("(spec)", f"{path} must hold a mapping of fields")])
    data = dict(data)
    named = data.pop("kind", kind)
    if named != kind:
        raise SpecError(kind, [("kind", f"must be {kind} here (got {str(named)[:80]!r})")])
    return data


def _build(what: str, run: Callable[[Callable[[str], None]], Any]) -> Any:
    """Run a build with its progress drawn on the terminal (stderr): one line per finished
    step with its time, the running step with a spinner and its elapsed time, and the
    builder's last lines folded under it. A failed build prints its step and output."""
    from juliarun.builders.progress import StepTracker
    from juliarun.cli_progress import RichBuildProgress
    from juliarun.errors import BuildError

    progress = RichBuildProgress(err, what)
    tracker = StepTracker(progress)
    with progress:
        try:
            result = run(tracker)
        except BuildError as exc:
            tracker.finish()
            progress.failed(exc.output)
            raise JuliaRunError(f"{exc.what} failed at step: {exc.step}", hint=exc.hint) from exc
        tracker.finish()
    return result


@build_app.command("image")
@clean_errors
def build_image(
    spec_file: Annotated[Path, typer.Argument(help="YAML with an image spec (`explain Image`).")],
    registry: Annotated[
        str, typer.Option(help="Registry to tag and push to; '' builds without pushing.")
    ] = "localhost:5000",
    push: Annotated[bool, typer.Option(help="Push the image once built.")] = True,
) -> None:
    """Build SPEC_FILE's image on the Docker engine (DOCKER_HOST) as REGISTRY/NAME:HASH and
    push it; an unchanged spec the registry has already is not built again."""
    from juliarun.backends.docker.engine import EngineConfig
    from juliarun.builders.images import build_image as build
    from juliarun.specs import ImageSpec

    spec = ImageSpec.model_validate(_spec_data(spec_file, "Image"))
    client = EngineConfig().connect()
    try:
        built = _build(
            f"image {spec.name}",
            lambda on_line: build(client, spec, registry, on_line=on_line, push=push),
        )
    finally:
        client.close()
    state = "built and pushed" if built.pushed else "built" if built.built else "up to date"
    print(f"{built.tag}: {state}")


@build_app.command("bundle")
@clean_errors
def build_bundle(
    spec_file: Annotated[Path, typer.Argument(help="YAML with a bundle spec (`explain Bundle`).")],
    cluster: ClusterOpt = None,
    timeout: Annotated[float, typer.Option(min=1, help="Give up after this many seconds.")] = 1800,
) -> None:
    """Precompile SPEC_FILE's package bundle with a builder job on the cluster; jobs then use
    it as pkg_bundle: NAME. An unchanged bundle is not built again."""
    from juliarun.builders.bundles import build_bundle as build
    from juliarun.specs import BundleSpec

    spec = BundleSpec.model_validate(_spec_data(spec_file, "Bundle"))
    with connect(cluster) as ctx:
        built = _build(
            f"bundle {spec.name}",
            lambda on_line: build(
                spec,
                ctx.backend,
                logs=ctx.logs,
                on_line=on_line,
                timeout=timeout,
                poll_interval=ctx.settings.poll_interval,
            ),
        )
    state = "built" if built.built else "up to date"
    print(f"{built.name}: {state} at {built.path} ({len(built.compiled)} packages compiled)")


@app.command()
@clean_errors
def explain(
    kind: Annotated[
        str,
        typer.Argument(help="JuliaBatch, JuliaParBatchWorkers, Batch, Storage, Image or Bundle."),
    ],
) -> None:
    """A spec kind's fields (type, default and description; * marks the required ones) and
    an example spec file."""
    from juliarun.explain import example, fields, model_of

    model = model_of(kind)
    console = Console()
    doc = " ".join((model.__doc__ or "").split(">>>")[0].split()).replace("``", "`")
    console.print(f"[bold]{model.__name__}[/bold]: {escape(doc)}", highlight=False)
    console.print("\nfields (* required):", highlight=False)
    for row in fields(kind):
        default = f", default {row.default}" if row.default else ""
        star = " *" if row.required else ""
        console.print(
            f"  [bold]{escape(row.name)}[/bold]{star} ({escape(row.type)}{escape(default)})",
            highlight=False,
        )
        console.print(f"      {escape(row.description)}", highlight=False)
    found = example(kind)
    if found is not None:
        path, text = found
        print(f"\nexample ({path.parent.name}/{path.name}):\n")
        print(text.rstrip())


@app.command()
@clean_errors
def serve(
    cluster: Annotated[
        str, typer.Option("--cluster", "-c", help="Cluster the flows use.")
    ] = "local",
    api_url: Annotated[str | None, typer.Option(help="Prefect API URL (default: env).")] = None,
) -> None:
    """Serve every juliarun deployment until Ctrl-C or SIGTERM: run-job, run-pipeline,
    process-autoscaler and cluster-autoscaler (triggered from the UI or Python), cluster-report
    (every 15 minutes), prune-bundles and prune-storage (daily), evaluate-alerts (every minute
    when JULIARUN_ALERT_RULES names rules)."""
    import os

    from juliarun.deployments.serve import serve as serve_flows
    from juliarun.deployments.serve import start_server
    from juliarun.settings import load_settings

    url = api_url or os.environ.get("PREFECT_API_URL") or start_server(load_settings().home)
    # Ctrl-C with the server up is a graceful stop, ending in CancelledError (see below).
    with stop_at_once_when_gone(url), contextlib.suppress(asyncio.CancelledError):
        serve_flows(cluster, url)


def _main_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    """The task of Prefect's runner (``Runner.start``) on ``loop``, if it runs."""
    for task in asyncio.all_tasks(loop):
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and code.co_qualname == "Runner.start":
            return task
    return None


@contextlib.contextmanager
def stop_at_once_when_gone(api_url: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM while the Prefect server at ``api_url`` is gone stops at once.

    Stopping gracefully, Prefect's runner pauses each deployment's schedule and waits for the
    flow runs in progress, which report their end; with the server gone every one of those
    calls retries it with growing pauses (PREFECT_CLIENT_MAX_RETRIES), for over a minute. So
    on Ctrl-C or SIGTERM the server is asked once: when it answers, the graceful stop goes on
    as asyncio would start it on Ctrl-C (the runner's task is cancelled; a second signal
    interrupts); when it does not, the flow-run processes are ended, one line says what was
    left, and the process exits (130 after Ctrl-C, 143 after SIGTERM) without reporting to a
    server that is not there. Their jobs keep running. (juliarun.deployments.serve keeps this
    SIGTERM handler in charge once Prefect's runner starts.)"""
    import os
    import signal

    import psutil

    from juliarun.deployments.serve import healthy

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupts = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if healthy(api_url, timeout=2):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not serving yet (registering the deployments)
                raise KeyboardInterrupt from None
            main = _main_task(loop)
            if interrupts > 1 or main is None or main.done():
                raise KeyboardInterrupt
            main.cancel()  # what asyncio.run's own handler does on a first Ctrl-C
            loop.call_soon_threadsafe(lambda: None)
            return
        # The flow-run processes (direct children); the jobs they started run on detached
        # supervisors of their own and are left running, as after `juliarun submit`.
        runs = psutil.Process().children(recursive=False)
        for child in runs:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(runs, timeout=5)
        where = api_url.removesuffix("/api")
        err.print(
            f"error: the Prefect server at {where} does not answer: stopped at once, without "
            f"pausing the schedules; flow runs in progress ended unreported: {len(runs)} (their "
            "jobs keep running: `juliarun list`)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(128 + signum)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    app(prog_name="juliarun")


if __name__ == "__main__":
    main()
