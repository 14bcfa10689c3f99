"""Progress of a build, read from the builder's own output: the image builder's ``Step N/M :``
lines, the bundle builder's step markers and the start of a push become steps; every other line
belongs to the step before it.

``build_image`` and ``build_bundle`` hand each output line to an ``on_line`` callback; a
:class:`StepTracker` is such a callback that tells a :class:`BuildProgress` about steps (with
the time each one took, by an injected clock) and lines. The command line draws it with rich
(``juliarun build``); :func:`log_progress` writes the same steps and lines to any logger, e.g. a
Prefect run logger:

>>> lines: list[str] = []
>>> ticks = iter([0.0, 2.5, 3.0])
>>> track = StepTracker(log_progress(lines.append), clock=lambda: next(ticks))
>>> for out in ["Step 1/2 : FROM debian", " ---> 1a2b", "Step 2/2 : RUN true", "done"]:
...     track(out)
>>> track.finish()
>>> print("\\n".join(lines))
step 1/2: FROM debian
  | ---> 1a2b
step 1/2 done in 2.5s
step 2/2: RUN true
  | done
step 2/2 done in 0.5s
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from juliarun.builders.bundles import STEP
from juliarun.logs.base import printable

__all__ = ["BuildProgress", "Step", "StepTracker", "log_progress", "parse_step"]

_DOCKER_STEP = re.compile(r"^Step (\d+)/(\d+) : (.+)$")
_PUSH = "The push refers to repository"


@dataclass(frozen=True)
class Step:
    """One step of a build: its number (from 1), how many there are when the builder says
    (``None`` when it does not), and its title."""

    index: int
    total: int | None
    title: str

    def label(self) -> str:
        """``step 2/5`` (or ``step 2`` when the total is unknown)."""
        return f"step {self.index}/{self.total}" if self.total else f"step {self.index}"


def parse_step(line: str) -> tuple[int | None, int | None, str] | None:
    """The step a builder's output line starts, as ``(index, total, title)`` (``None`` for
    what the builder does not number), or ``None`` when the line starts none.

    >>> parse_step("Step 3/7 : RUN apt-get update")
    (3, 7, 'RUN apt-get update')
    >>> parse_step("juliarun-step: Pkg.precompile()")
    (None, None, 'Pkg.precompile()')
    >>> parse_step("The push refers to repository [localhost:5000/app]")
    (None, None, 'push to localhost:5000/app')
    >>> parse_step("Precompiling project...") is None
    True
    """
    text = line.strip()
    m = _DOCKER_STEP.match(text)
    if m:
        return int(m.group(1)), int(m.group(2)), m.group(3)
    if text.startswith(STEP):
        return None, None, text[len(STEP) :].strip()
    if text.startswith(_PUSH):
        return None, None, "push to " + text[len(_PUSH) :].strip().strip("[]")
    return None


class BuildProgress(Protocol):
    """What follows a build: told when a step starts and ends and of every other line."""

    def step_started(self, step: Step) -> None: ...

    def step_done(self, step: Step, seconds: float) -> None: ...

    def line(self, text: str) -> None: ...


class StepTracker:
    """An ``on_line`` callback for the builders that turns their output into calls on a
    :class:`BuildProgress`; call :meth:`finish` when the build returns (it ends the last
    step). ``clock`` gives seconds (default: ``time.monotonic``)."""

    def __init__(
        self, progress: BuildProgress, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.progress = progress
        self.clock = clock
        self.current: Step | None = None
        self.steps: list[tuple[Step, float]] = []
        self._started = 0.0

    def __call__(self, line: str) -> None:
        found = parse_step(line)
        if found is None:
            self.progress.line(line)
            return
        index, total, title = found
        now = self.clock()
        self._end(now)
        if index is None:  # a builder that does not number its steps: count them
            index = self.steps[-1][0].index + 1 if self.steps else 1
            total = None
        self.current = Step(index, total, title)
        self._started = now
        self.progress.step_started(self.current)

    def _end(self, now: float) -> None:
        if self.current is not None:
            seconds = now - self._started
            self.steps.append((self.current, seconds))
            self.progress.step_done(self.current, seconds)
            self.current = None

    def finish(self) -> None:
        """End the step still running (the build returned or failed)."""
        self._end(self.clock())


class _LogProgress:
    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def step_started(self, step: Step) -> None:
        self.log(f"{step.label()}: {printable(step.title)}")

    def step_done(self, step: Step, seconds: float) -> None:
        self.log(f"{step.label()} done in {seconds:.1f}s")

    def line(self, text: str) -> None:
        self.log(f"  | {printable(text)}")


def log_progress(log: Callable[[str], None]) -> BuildProgress:
    """A :class:`BuildProgress` writing each step and line as one message to ``log``
    (e.g. ``get_run_logger().info``), control characters shown as ``\\xNN``; wrap it in a
    :class:`StepTracker` for a builder's ``on_line``."""
    return _LogProgress(log)
