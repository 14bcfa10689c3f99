"""Real git repositories for storage tests: made with the git CLI, one commit at a time."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True, text=True
    )
    return proc.stdout.strip()


def make_repo(path: Path, text: str = "from git\n") -> str:
    """A repository at ``path`` (branch ``main``) whose one commit holds ``data.txt``; returns
    its path (a URL git clones)."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(path, "data.txt", text)
    return str(path)


def commit(repo: Path, path: str, text: str) -> str:
    """Write ``path`` in ``repo`` and commit it; returns the new commit."""
    (repo / path).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", path)
    return git(repo, "rev-parse", "HEAD")
