"""Files juliarun keeps for one user: its home directory mode 0700, its databases and catalogs
mode 0600 (they hold every job's output and metrics, and store configs).

>>> import stat, tempfile
>>> home = private_dir(Path(tempfile.mkdtemp()) / "home")
>>> db = private_file(home / "a.db")
>>> oct(stat.S_IMODE(home.stat().st_mode)), oct(stat.S_IMODE(db.stat().st_mode))
('0o700', '0o600')
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter: created 0700 (parents too) if
    missing, narrowed to 0700 if it is this user's and open to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _narrow(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner can read: created empty 0600 if missing (never
    through a link), narrowed to 0600 if it is this user's and open to others."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    _narrow(path, 0o600)
    return path


def _narrow(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, mode)
