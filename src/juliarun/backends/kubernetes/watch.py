"""Watches that survive an apiserver restart: the resume logic is a pure function over the
events a watch delivers, so it is tested with recorded events, and a small driver does the I/O.

A watch starts from a list's ``resourceVersion``; every event (and every ``BOOKMARK``) moves the
cursor forward; a dropped connection or a server-side timeout resumes from the cursor, so no
event is lost or seen twice; ``410 Gone`` (the version was compacted away, e.g. after a long
outage) means list again.

>>> c = Cursor("100")
>>> c, obj = advance(c, {"type": "ADDED", "object": {"metadata": {"resourceVersion": "101"}}})
>>> c.resource_version, obj is not None
('101', True)
>>> c, obj = advance(c, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}})
>>> c.resource_version, obj
('150', None)
>>> c, obj = advance(c, {"type": "ERROR", "object": {"kind": "Status", "code": 410}})
>>> c.relist, c.resource_version
(True, None)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from juliarun.errors import BackendError

Event = Mapping[str, Any]


@dataclass(frozen=True)
class Cursor:
    """Where a watch resumes: after ``resource_version``; ``relist`` when it must list anew."""

    resource_version: str | None
    relist: bool = False


def advance(cursor: Cursor, event: Event) -> tuple[Cursor, Mapping[str, Any] | None]:
    """The cursor after ``event`` and the object to deliver (``None`` for bookmarks and
    errors). An ``ERROR`` with code 410 (Gone/Expired) asks for a relist; other errors keep the
    cursor (the watch is resumed from it)."""
    kind = event.get("type")
    obj = event.get("object") or {}
    if kind == "ERROR":
        if obj.get("code") == 410 or obj.get("reason") in {"Expired", "Gone"}:
            return Cursor(None, relist=True), None
        return cursor, None
    version = (obj.get("metadata") or {}).get("resourceVersion") or cursor.resource_version
    new = Cursor(version)
    if kind == "BOOKMARK":
        return new, None
    return new, obj


def after_disconnect(cursor: Cursor) -> Cursor:
    """A dropped stream (apiserver restart, timeout) resumes where it was."""
    return cursor


def decode(lines: Iterable[str]) -> Iterator[Event]:
    """Watch events from the lines of a ``watch=true`` response (blank lines skipped)."""
    for line in lines:
        if line.strip():
            yield json.loads(line)


def resumable_watch(
    list_fn: Callable[[], Mapping[str, Any]],
    watch_fn: Callable[[str], Iterable[str]],
    *,
    stop: Callable[[], bool],
    sleep: Callable[[float], None],
    on_transient: Callable[[Exception], None] | None = None,
    max_backoff: float = 5.0,
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``("SYNC", item)`` for every item of a list, then ``(type, object)`` per watch event,
    until ``stop()``. ``watch_fn(resource_version)`` opens a stream (lines of JSON events)
    that may end at any time; it is reopened from the cursor, after a backoff when it failed."""
    cursor = Cursor(None, relist=True)
    failures = 0
    while not stop():
        try:
            if cursor.relist or cursor.resource_version is None:
                listing = list_fn()
                for item in listing.get("items") or []:
                    yield "SYNC", item
                cursor = Cursor(str((listing.get("metadata") or {}).get("resourceVersion")))
            for event in decode(watch_fn(str(cursor.resource_version))):
                cursor, obj = advance(cursor, event)
                if obj is not None:
                    yield str(event.get("type")), obj
                if cursor.relist or stop():
                    break
            failures = 0
        except (BackendError, OSError, ValueError) as exc:
            if getattr(exc, "status", None) == 410:
                cursor = Cursor(None, relist=True)
            else:
                cursor = after_disconnect(cursor)
            failures += 1
            if on_transient is not None:
                on_transient(exc)
            sleep(min(max_backoff, 0.1 * 2**failures))
