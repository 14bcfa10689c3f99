"""The log store seam: one protocol, one module per implementation (sqlite, elasticsearch)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a job printed. ``timestamp`` is timezone-aware UTC."""

    timestamp: datetime
    job: str
    worker: str
    stream: Stream
    message: str
    cluster: str = "local"
    tenant: str = "default"

    def render(self) -> str:
        """The seed's tail format: ``timestamp, worker-id, line``, with control characters
        (a terminal's escape sequences) shown as ``\\xNN``, never sent to the terminal.

        >>> from datetime import UTC
        >>> LogLine(datetime(2026, 1, 1, tzinfo=UTC), "j", "j-0", "stdout", "\\x1b[2Jhi").render()
        '2026-01-01T00:00:00+00:00, j-0, \\\\x1b[2Jhi'
        """
        stamp = self.timestamp.isoformat(timespec="seconds")
        return f"{stamp}, {printable(self.worker)}, {printable(self.message)}"


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters other than tab as ``\\xNN`` escapes.

    >>> printable("a\\tb\\x1b]0;title\\x07")
    'a\\tb\\\\x1b]0;title\\\\x07'
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True, slots=True)
class LogQuery:
    """A filter over stored lines; every field left ``None`` matches everything.

    ``text`` is a full-text query (words must all appear, in any order); ``regex`` a Python
    regular expression applied to the message. ``since`` is inclusive, ``until`` exclusive.
    """

    job: str | None = None
    worker: str | None = None
    stream: Stream | None = None
    cluster: str | None = None
    tenant: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    regex: str | None = None
    limit: int | None = None
    jobs: tuple[str, ...] = field(default=())


@runtime_checkable
class LogStore(Protocol):
    """Where job output goes and how it is read back."""

    def write(self, lines: Iterable[LogLine]) -> int:
        """Store lines; returns how many were stored."""
        ...

    def query(self, q: LogQuery) -> list[LogLine]:
        """Matching lines in the order they were written (timestamp, then arrival)."""
        ...

    def follow(
        self,
        q: LogQuery,
        *,
        stop: Callable[[], bool],
        poll_interval: float = 0.5,
        sleep: Callable[[float], None] = ...,
    ) -> Iterator[LogLine]:
        """Yield matching lines already stored, then new ones as they arrive, until ``stop()``
        is true (checked after each poll; lines stored before it turned true are still yielded)."""
        ...

    def count(self, q: LogQuery) -> int:
        """How many lines match."""
        ...

    def delete(self, job: str) -> int:
        """Remove every line of ``job``; returns how many were removed."""
        ...

    def close(self) -> None: ...
