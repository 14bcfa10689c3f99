"""A build's progress on a terminal, drawn with rich: finished steps as lines with their
time, the running step with a spinner and its elapsed time, and the builder's last lines
folded under it. On a console that is not a terminal (a pipe, a log file, CI) the same
steps and lines are printed one per line instead.

>>> import io
>>> from rich.console import Console
>>> out = io.StringIO()
>>> progress = RichBuildProgress(Console(file=out, width=80), "image app")
>>> with progress:
...     progress.step_started(Step(1, 2, "FROM debian"))
...     progress.line("pulling")
...     progress.step_done(Step(1, 2, "FROM debian"), 1.25)
>>> print(out.getvalue().rstrip())
image app: step 1/2: FROM debian
  | pulling
image app: step 1/2 done in 1.2s
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from juliarun.builders.progress import Step
from juliarun.logs.base import printable

FOLDED = 6


class RichBuildProgress:
    """A :class:`~juliarun.builders.progress.BuildProgress` on a rich console."""

    def __init__(self, console: Console, what: str, *, folded: int = FOLDED) -> None:
        self.console = console
        self.what = what
        self.live_mode = console.is_terminal
        self.lines: deque[str] = deque(maxlen=folded)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: TaskID | None = None
        self.live: Live | None = None

    def _view(self) -> Group:
        folded = Text("\n".join(f"  │ {line}" for line in self.lines), style="dim")
        return Group(self.progress, folded)

    def __enter__(self) -> RichBuildProgress:
        if self.live_mode:
            self.task = self.progress.add_task(f"{self.what}: starting")
            self.live = Live(self._view(), console=self.console, refresh_per_second=8)
            self.live.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.update(Group())  # the spinner and folded lines go; finished steps stay
            self.live.__exit__(kind, exc, tb)
            self.live = None

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._view())

    def step_started(self, step: Step) -> None:
        title = f"{self.what}: {step.label()}: {printable(step.title)}"
        if self.live_mode and self.task is not None:
            self.lines.clear()
            self.progress.reset(self.task, description=escape(title))
            self._refresh()
        else:
            self.console.print(title, highlight=False, markup=False, soft_wrap=True)

    def step_done(self, step: Step, seconds: float) -> None:
        if self.live_mode:
            done = f"[green]✓[/green] {escape(printable(step.title))} [dim]({seconds:.1f}s)[/dim]"
            self.console.print(f"{escape(self.what)}: {step.label()} {done}", highlight=False)
        else:
            self.console.print(
                f"{self.what}: {step.label()} done in {seconds:.1f}s", highlight=False, markup=False
            )

    def line(self, text: str) -> None:
        shown = printable(text)
        if self.live_mode:
            self.lines.append(shown)
            self._refresh()
        else:
            self.console.print(f"  | {shown}", highlight=False, markup=False, soft_wrap=True)

    def failed(self, output: list[str]) -> None:
        """The build failed: on a terminal its last lines (folded so far) are printed in full
        under the finished steps; elsewhere they were printed already."""
        if self.live is None:
            return
        self.live.update(Group())
        for text in output[-20:]:
            self.console.print(f"  | {printable(text)}", style="red", highlight=False, markup=False)
