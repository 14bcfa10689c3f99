"""Kubernetes API requests per run_job: every request juliarun's client sends during one run of
a trivial job (``true``) with one host storage, counted by method and resource.

    eval "$(scripts/testenv env)"; .venv/bin/python bench/flow_calls.py [--runs 3]

The goal: one create per object (the Job; no namespace or storage request repeated per task),
the rest reads of the job's state while it is followed. The first run of a process also
connects (namespace, quota read); later runs in the same process reuse that context.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import tempfile
import threading
from typing import Any

from juliarun.backends.kubernetes.client import KubeClient

COUNTS: collections.Counter[str] = collections.Counter()
LOCK = threading.Lock()
_send = KubeClient._send


def resource(path: str) -> str:
    """``/apis/batch/v1/namespaces/x/jobs/y`` -> ``jobs/{name}``; query strings dropped."""
    parts = [p for p in path.split("?", maxsplit=1)[0].split("/") if p]
    if "namespaces" in parts:
        i = parts.index("namespaces")
        rest = parts[i + 2 :]
        if not rest:
            return "namespaces/{name}" if len(parts) > i + 1 else "namespaces"
        parts = rest
    else:
        parts = [p for p in parts if p not in ("api", "apis", "v1") and not re.match(r"v\d", p)]
        parts = parts[-2:] if len(parts) > 1 else parts
    kind = parts[0]
    return kind + ("/{name}" if len(parts) > 1 else "") + (f"/{parts[2]}" if len(parts) > 2 else "")


def counting(self: KubeClient, method: str, path: str, *args: Any) -> Any:
    with LOCK:
        COUNTS[f"{method} {resource(path)}"] += 1
    return _send(self, method, path, *args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="juliarun-bench-")
    os.environ["JULIARUN_HOME"] = home
    os.environ.setdefault("JULIARUN_POLL_INTERVAL", "0.2")
    os.environ.setdefault("JULIARUN_JULIA_IMAGE", "localhost:5000/juliarun/julia:1.5.3")
    KubeClient._send = counting  # type: ignore[method-assign]

    import juliarun
    from juliarun.flows import run_job

    data = tempfile.mkdtemp(prefix="juliarun-bench-data-")
    storage = juliarun.StorageSpec(name="benchdata", kind="host", path=data)
    for run in range(args.runs):
        COUNTS.clear()
        job = juliarun.Batch(
            f"calls-{os.getpid()}-{run}", command=["true"], storage=["benchdata"], cpu="100m"
        )
        result = run_job(job, cluster="kubernetes", storage=[storage], delete_after=True)
        assert result["status"] == "succeeded", result
        print(f"run {run}: {sum(COUNTS.values())} requests")
        for key, n in sorted(COUNTS.items()):
            print(f"  {n:3d}  {key}")


if __name__ == "__main__":
    main()
