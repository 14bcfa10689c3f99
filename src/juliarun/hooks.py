"""Alert hooks that act on a cluster through the public API (they connect by cluster name,
so they live beside the facade, above the plain metric layer).

>>> from datetime import UTC, datetime
>>> ScaleHook("local", "crew", min_workers=1, max_workers=4).fires_for(
...     Alert(rule="busy", metric="queue", kind="threshold", value=9.0, group={"job": "crew"},
...           message="", at=datetime.now(UTC)))
True
"""

from __future__ import annotations

from dataclasses import dataclass

from juliarun.errors import ConfigError
from juliarun.metrics.alerts import Alert

__all__ = ["ScaleHook"]


@dataclass(frozen=True, slots=True)
class ScaleHook:
    """Scale the ``JuliaParBatchWorkers`` job ``job`` of ``cluster`` by ``step`` workers: up
    (to at most ``max_workers``) while a threshold alert fires for it — one whose group has
    ``job=<job>`` or whose rule is one of ``rules`` — and back down (to at least
    ``min_workers``) at each evaluation where none does. A job that has ended is left alone."""

    cluster: str
    job: str
    min_workers: int = 1
    max_workers: int = 4
    step: int = 1
    rules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers or self.step < 1:
            raise ConfigError(
                f"ScaleHook({self.job!r}): need 1 <= min_workers <= max_workers and step >= 1"
            )

    def fires_for(self, alert: Alert) -> bool:
        return alert.kind == "threshold" and (
            alert.group.get("job") == self.job or alert.rule in self.rules
        )

    def __call__(self, alerts: list[Alert]) -> None:
        import juliarun

        with juliarun.init(self.cluster) as ctx:
            status = juliarun.status(ctx, self.job)
            if status.done:
                return
            current = status.desired_workers
            if any(self.fires_for(a) for a in alerts):
                wanted = min(current + self.step, self.max_workers)
            else:
                wanted = max(current - self.step, self.min_workers)
            if wanted != current:
                juliarun.scale(ctx, self.job, wanted)
