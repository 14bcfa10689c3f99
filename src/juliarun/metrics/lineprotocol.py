"""InfluxDB line protocol: how a running Julia job records metrics without extra packages.

The job appends lines to the file named by ``JULIARUN_METRICS_FILE``, e.g. in Julia::

    open(ENV["JULIARUN_METRICS_FILE"], "a") do io
        println(io, "loss,epoch=3 value=0.25,grad_norm=1.5 ", time_ns())
    end

A line is ``measurement[,tag=value...] field=value[,field=value...] [timestamp]``: commas,
spaces and ``=`` in names, tag keys and tag values are escaped with a backslash (``\\`` is a
backslash); field values are floats, integers (``42i``, ``42u``) or booleans (``true``/``false``,
stored as 1.0/0.0); string fields are refused, a metric is a number; the timestamp is integer
nanoseconds since the epoch, "now" when missing. Lines starting with ``#`` and blank lines are
skipped. Each field becomes one :class:`~juliarun.metrics.base.Point`, named ``measurement`` for
the field ``value`` and ``measurement.field`` otherwise.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from juliarun.errors import LineProtocolError
from juliarun.metrics.base import Point

__all__ = [
    "IDENTITY_TAGS",
    "METRICS_FILE_ENV",
    "RESERVED_PREFIX",
    "LineProtocolError",
    "format_point",
    "parse_line",
    "parse_lines",
    "rejected_metrics_note",
]

METRICS_FILE_ENV = "JULIARUN_METRICS_FILE"
"""The environment variable naming the file a job appends its metric lines to."""

RESERVED_PREFIX = "juliarun."
"""Metric names starting with this are the platform's (cpu, memory, restarts): a job's own
lines may not use them."""

IDENTITY_TAGS = frozenset({"cluster", "tenant", "job", "worker"})
"""Tags the platform sets on every point of a job; a job's own values for them are replaced."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ESCAPABLE = frozenset(",= \\")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+i|[0-9]+u")
_TIMESTAMP = re.compile(r"-?[0-9]+")
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})

_NAME_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ "})
_KEY_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ ", "=": "\\="})


def _scan(text: str, i: int, stops: str) -> tuple[str, int]:
    """Read from ``i`` up to the first unescaped character of ``stops``; unescape on the way."""
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
            out.append(text[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i] == " ":
        i += 1
    return i


def _field_value(raw: str) -> float | None:
    """The number a field value denotes, or ``None`` when it is not a number."""
    if _FLOAT.fullmatch(raw):
        return float(raw)
    if _INTEGER.fullmatch(raw):
        return float(int(raw[:-1]))
    if raw in _TRUE:
        return 1.0
    if raw in _FALSE:
        return 0.0
    return None


def parse_line(line: str, now: datetime | None = None, *, lineno: int | None = None) -> list[Point]:
    """The points of one line (none for a blank or ``#`` comment line).

    ``now`` (default: the current UTC time) stamps a line without a timestamp; ``lineno`` only
    labels errors. Raises :class:`~juliarun.errors.LineProtocolError` naming the 1-based column
    and the rule broken.

    >>> [(p.name, p.value, dict(p.tags)) for p in parse_line("gpu,id=0 util=0.5,mem=2i 0")]
    [('gpu.util', 0.5, {'id': '0'}), ('gpu.mem', 2.0, {'id': '0'})]
    >>> try:
    ...     parse_line('job state="done"')
    ... except LineProtocolError as err:
    ...     print(err.column, err.rule)
    11 string field values are not metrics (a metric is a number)
    """
    text = line.rstrip("\r\n")

    def fail(rule: str, i: int) -> LineProtocolError:
        return LineProtocolError(rule, line=text, column=i + 1, lineno=lineno)

    n = len(text)
    if "\n" in text:
        raise fail("a line must not contain a newline", text.index("\n"))
    i = _skip_spaces(text, 0)
    if i == n or text[i] == "#":
        return []

    measurement, i = _scan(text, i, ", ")
    if not measurement:
        raise fail("missing measurement", i)

    tags: dict[str, str] = {}
    while i < n and text[i] == ",":
        key, i = _scan(text, i + 1, ",= ")
        if not key:
            raise fail("empty tag key", i)
        if i == n or text[i] != "=":
            raise fail(f"tag {key!r} must be key=value", i)
        value, i = _scan(text, i + 1, ",= ")
        if not value:
            raise fail(f"empty value for tag {key!r}", i)
        if i < n and text[i] == "=":
            raise fail("unescaped '=' in a tag value (escape it as '\\=')", i)
        if key in tags:
            raise fail(f"duplicate tag {key!r}", i - 1)
        tags[key] = value

    i = _skip_spaces(text, i)
    if i == n:
        raise fail("missing field set (expected a space, then field=value)", i)

    fields: dict[str, float] = {}
    while True:
        key, i = _scan(text, i, ",= ")
        if not key:
            raise fail("empty field key", i)
        if i == n or text[i] != "=":
            raise fail(f"field {key!r} must be key=value", i)
        start = i + 1
        if start < n and text[start] == '"':
            raise fail("string field values are not metrics (a metric is a number)", start)
        end = start
        while end < n and text[end] not in ", ":
            end += 1
        raw = text[start:end]
        if not raw:
            raise fail(f"missing value for field {key!r}", start)
        value_ = _field_value(raw)
        if value_ is None:
            raise fail(
                f"invalid value {raw!r} for field {key!r}"
                " (expected a float, an integer like 42i, or true/false)",
                start,
            )
        if not math.isfinite(value_):
            raise fail(f"value {raw!r} for field {key!r} is out of range", start)
        if key in fields:
            raise fail(f"duplicate field {key!r}", start - 1)
        fields[key] = value_
        i = end
        if i < n and text[i] == ",":
            i += 1
            continue
        break

    i = _skip_spaces(text, i)
    if i < n:
        end = i
        while end < n and text[end] != " ":
            end += 1
        raw = text[i:end]
        if not _TIMESTAMP.fullmatch(raw):
            raise fail(f"timestamp {raw!r} is not integer nanoseconds since the epoch", i)
        try:
            when = _EPOCH + timedelta(microseconds=int(raw) // 1000)
        except OverflowError as exc:
            raise fail(f"timestamp {raw!r} is out of range", i) from exc
        rest = _skip_spaces(text, end)
        if rest < n:
            raise fail("unexpected text after the timestamp", rest)
    else:
        when = now if now is not None else datetime.now(UTC)

    return [
        Point(
            name=measurement if key == "value" else f"{measurement}.{key}",
            value=value,
            timestamp=when,
            tags=dict(tags),
        )
        for key, value in fields.items()
    ]


def parse_lines(
    text: str, now: datetime | None = None
) -> tuple[list[Point], list[LineProtocolError]]:
    """Parse many lines, keeping the good ones: ``(points, errors)``.

    Each error carries its 1-based ``lineno``. Lines are separated by ``\\n`` only; a caller
    tailing a file should pass complete lines. ``now`` (default: the current UTC time, read once)
    stamps lines without a timestamp.

    >>> points, errors = parse_lines("cpu value=1 0\\nbad line\\n# comment\\nmem value=2i 0\\n")
    >>> [p.name for p in points], [(e.lineno, e.column) for e in errors]
    (['cpu', 'mem'], [(2, 9)])
    """
    when = now if now is not None else datetime.now(UTC)
    points: list[Point] = []
    errors: list[LineProtocolError] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        try:
            points.extend(parse_line(line, when, lineno=lineno))
        except LineProtocolError as exc:
            errors.append(exc)
    return points, errors


# A quoted value in a rule of a rejected metric line: job-controlled text, never echoed.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def rejected_metrics_note(errors: list[LineProtocolError], reserved: int) -> str | None:
    """The one log line reporting metric lines and points that were not stored: counts and
    rules only, never the content (the file may have been pointed at a secret).

    >>> _, errors = parse_lines("password='hunter2' x\\ntoken value=s3cr3t\\nok value=1\\n")
    >>> note = rejected_metrics_note(errors, 1)
    >>> "hunter2" in note or "s3cr3t" in note
    False
    >>> note.split(" (")[0], note.split("; ")[-1]
    ('juliarun: ignored 2 metric lines', 'ignored 1 point with a reserved juliarun.* name')
    """
    parts = []
    if errors:
        rules = list(dict.fromkeys(_QUOTED.sub("…", e.rule)[:200] for e in errors))
        shown = "; ".join(rules[:3]) + ("; ..." if len(rules) > 3 else "")
        parts.append(f"ignored {len(errors)} metric line{'s' * (len(errors) != 1)} ({shown})")
    if reserved:
        plural = "s" * (reserved != 1)
        parts.append(f"ignored {reserved} point{plural} with a reserved {RESERVED_PREFIX}* name")
    return f"juliarun: {'; '.join(parts)}" if parts else None


def format_point(point: Point) -> str:
    """One line for ``point``: the name as measurement, one field ``value``, tags sorted,
    timestamp in nanoseconds (a naive timestamp is taken as UTC).

    Raises :class:`~juliarun.errors.LineProtocolError` for what line protocol cannot carry:
    an empty name or one starting with ``#``, empty tag keys or values, newlines, a non-finite
    value.

    >>> from datetime import UTC, datetime
    >>> format_point(Point("loss", 0.25, datetime(2024, 1, 1, tzinfo=UTC), {"run id": "a,b"}))
    'loss,run\\\\ id=a\\\\,b value=0.25 1704067200000000000'
    """

    def fail(rule: str) -> LineProtocolError:
        return LineProtocolError(rule, line=repr(point))

    texts = [point.name, *point.tags.keys(), *point.tags.values()]
    if any("\n" in t or "\r" in t for t in texts):
        raise fail("line protocol cannot carry newlines or carriage returns")
    if not point.name:
        raise fail("missing measurement")
    if point.name.startswith("#"):
        raise fail("a measurement starting with '#' would be read as a comment")
    if not math.isfinite(point.value):
        raise fail(f"value {point.value!r} is not a finite number")
    parts = [point.name.translate(_NAME_ESCAPES)]
    for key, value in sorted(point.tags.items()):
        if not key or not value:
            raise fail(f"empty tag key or value ({key!r}={value!r})")
        parts.append(f"{key.translate(_KEY_ESCAPES)}={value.translate(_KEY_ESCAPES)}")
    timestamp = point.timestamp
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    nanos = (timestamp - _EPOCH) // _MICROSECOND * 1000
    return f"{','.join(parts)} value={float(point.value)!r} {nanos}"
