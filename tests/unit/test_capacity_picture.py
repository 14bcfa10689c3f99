"""Issue 14, item 5: the cluster report's picture of free capacity per node and resource."""

from __future__ import annotations

import base64
import re

from juliarun.backends.base import ClusterStatus, NodeStatus
from juliarun.tasks.observe import capacity_markdown, capacity_png


def _status() -> ClusterStatus:
    return ClusterStatus(
        cluster="kube",
        kind="kubernetes",
        endpoint="https://127.0.0.1:6443",
        nodes=[
            NodeStatus("node-a", True, cpu=40, gpu=0, mem=75, dsk=90, pod=98),
            NodeStatus("node-b", True, cpu=100, gpu=50, mem=10, dsk=60, pod=100),
        ],
    )


def test_the_picture_is_a_png_beside_the_same_numbers_as_text() -> None:
    text = capacity_markdown(_status())
    found = re.search(r"!\[Free capacity per node of kube\]\(data:image/png;base64,([^)]+)\)", text)
    assert found
    png = base64.b64decode(found.group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| node | CPU | memory | GPU | disk | pods |" in text
    assert "| node-a | 40% | 75% | 0% | 90% | 98% |" in text
    assert "| node-b | 100% | 10% | 50% | 60% | 100% |" in text


def test_the_picture_grows_with_the_nodes() -> None:
    one = _status()
    one.nodes = one.nodes[:1]
    width = int.from_bytes(capacity_png(one)[16:20], "big")
    assert int.from_bytes(capacity_png(_status())[16:20], "big") == width  # both at the minimum
    many = _status()
    many.nodes = [NodeStatus(f"n{i}", True, 1, 2, 3, 4, 5) for i in range(8)]
    assert int.from_bytes(capacity_png(many)[16:20], "big") > width


def test_a_cluster_without_nodes_says_so() -> None:
    empty = _status()
    empty.nodes = []
    assert capacity_markdown(empty) == "**kube**: no nodes"
