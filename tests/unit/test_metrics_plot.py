"""Charts of metric rows: real PNGs, one line per group."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

from juliarun.metrics.base import Row
from juliarun.metrics.plot import PNG_SIGNATURE, data_uri, plot, render_png

T0 = datetime(2024, 6, 1, tzinfo=UTC)


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature and chunk type."""
    assert png[:8] == PNG_SIGNATURE
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert png.endswith(b"IEND\xaeB`\x82")
    return width, height


def rows(groups: int = 2, n: int = 30) -> list[Row]:
    return [
        Row(T0 + timedelta(minutes=i), {"worker": f"w{g}"}, float((i * (g + 1)) % 7))
        for g in range(groups)
        for i in range(n)
    ]


def test_plot_writes_a_png_of_the_requested_size(tmp_path: Path) -> None:
    path = plot(rows(), tmp_path / "charts" / "load.png", title="load")
    assert path == tmp_path / "charts" / "load.png"
    assert png_size(path.read_bytes()) == (800, 400)


def test_render_png_options_and_groups() -> None:
    one = render_png(rows(groups=1), width=4, height=3, dpi=50)
    assert png_size(one) == (200, 150)
    many = render_png(rows(groups=5))
    assert png_size(many) == (800, 400) and many != render_png(rows(groups=1))


def test_no_rows_is_still_a_chart() -> None:
    assert png_size(render_png([], title="nothing yet")) == (800, 400)


def test_data_uri_round_trips() -> None:
    png = render_png(rows())
    uri = data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png
