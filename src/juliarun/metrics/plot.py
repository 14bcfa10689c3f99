"""Plot aggregated metric rows as a PNG: one line per group, time on the x axis.

Rendered with matplotlib's Agg canvas on a private ``Figure`` (no pyplot, no global state, no
display needed), so it is safe in worker threads and headless processes.

>>> from datetime import UTC, datetime, timedelta
>>> t0 = datetime(2024, 1, 1, tzinfo=UTC)
>>> rows = [Row(t0 + timedelta(minutes=i), {"worker": "w1"}, float(i * i)) for i in range(5)]
>>> png = render_png(rows, title="loss")
>>> png[:8] == PNG_SIGNATURE
True
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from juliarun.metrics.base import Row

__all__ = ["PNG_SIGNATURE", "data_uri", "plot", "render_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _label(group: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in group.items()) or "all"


def time_limits(rows: Sequence[Row]) -> tuple[datetime, datetime]:
    """The x axis of ``rows``: their span, or a minute around them when they all share one
    time (else the date locator picks an axis of years around a single point).

    >>> from datetime import UTC
    >>> t = datetime(2026, 1, 1, 12, tzinfo=UTC)
    >>> [x.time().isoformat() for x in time_limits([Row(t, {}, 1.0)])]
    ['11:59:30', '12:00:30']
    """
    first = min(r.start for r in rows)
    last = max(r.start for r in rows)
    if first == last:
        return first - timedelta(seconds=30), last + timedelta(seconds=30)
    return first, last


def render_png(
    rows: Sequence[Row],
    *,
    title: str = "",
    ylabel: str = "value",
    width: float = 8.0,
    height: float = 4.0,
    dpi: int = 100,
) -> bytes:
    """The PNG bytes of a line chart of ``rows``, one line (with markers) per group.

    With no rows the chart says so instead of failing: an empty query is a result too.
    """
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    series: dict[tuple[tuple[str, str], ...], list[Row]] = {}
    for row in rows:
        series.setdefault(tuple(row.group.items()), []).append(row)
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    for key, group_rows in series.items():
        ordered = sorted(group_rows, key=lambda r: r.start)
        times: Any = [r.start for r in ordered]  # matplotlib converts datetimes itself
        ax.plot(
            times,
            [r.value for r in ordered],
            marker="o",
            markersize=3,
            label=_label(dict(key)),
        )
    if series:
        lo, hi = time_limits(rows)
        ax.set_xlim(lo, hi)  # type: ignore[arg-type]
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        if len(series) > 1 or any(key for key in series):
            ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot(rows: Sequence[Row], path: Path | str, *, title: str = "", ylabel: str = "value") -> Path:
    """Write the chart of ``rows`` to ``path`` (a PNG, parent directories created); returns
    the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(render_png(rows, title=title, ylabel=ylabel))
    return target


def data_uri(png: bytes) -> str:
    """``png`` as a ``data:`` URI, for an ``<img>`` or a Prefect image artifact.

    >>> data_uri(b"abc")
    'data:image/png;base64,YWJj'
    """
    return "data:image/png;base64," + base64.b64encode(png).decode()
