"""Storage on the local backend: host directories, RAM disks (tmpfs), volumes (a directory
under ``JULIARUN_HOME/storage/volume/<name>``; its size and class are not enforced here) and
git checkouts."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from juliarun.errors import StorageError
from juliarun.specs import StorageSpec

RAM_ROOT = Path("/dev/shm")


def _is_tmpfs(path: Path) -> bool:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(
        parts[1] == str(path) and parts[2] == "tmpfs"
        for parts in (line.split() for line in mounts)
        if len(parts) > 2
    )


def _git(*args: str, storage: str, cwd: Path | None = None) -> str:
    # Never wait on a credential prompt: an unknown or private https URL fails at once.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    if proc.returncode != 0:
        raise StorageError(
            f"storage {storage!r}: git {' '.join(args)} failed: "
            f"{proc.stderr.strip() or proc.stdout.strip()}",
            hint="check the storage's url and ref",
        )
    return proc.stdout.strip()


def ram_root(home: Path) -> Path:
    """This home's directory of RAM disks under /dev/shm: a name no one else can guess
    (``juliarun-<uid>-<random>``, the random part kept in ``<home>/ramdisk.id``), so nobody can
    plant a link there before it exists."""
    home.mkdir(parents=True, exist_ok=True)
    token_file = home / "ramdisk.id"
    try:
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        token = token_file.read_text().strip()
    else:
        token = secrets.token_hex(8)
        with os.fdopen(fd, "w") as out:
            out.write(token)
    if not re.fullmatch(r"[0-9a-f]{16}", token):
        raise StorageError(
            f"{token_file} is corrupt", hint=f"remove {token_file}; a new one is made"
        )
    return RAM_ROOT / f"juliarun-{os.getuid()}-{token}"


def _private_dir(parent: Path, name: str) -> Path:
    """``parent/name`` as a directory of this user's, created mode 0700 if missing; a link,
    a file, or a directory of another user there is refused (:class:`StorageError`)."""
    path = parent / name if name else parent
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise StorageError(
            f"{path} is not a directory of this user (a link, a file, or another user's)",
            hint="remove it; juliarun makes its RAM disks itself",
        )
    return path


def provision(spec: StorageSpec, home: Path) -> Path:
    """Create ``spec`` on this machine if needed and return its directory (idempotent)."""
    if spec.kind == "host":
        path = Path(spec.path or "")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"storage {spec.name!r}: cannot create host directory {path}: {exc.strerror}",
                hint="choose a path this user can write",
            ) from exc
        return path
    if spec.kind == "ramdisk":
        if not _is_tmpfs(RAM_ROOT):
            raise StorageError(
                f"storage {spec.name!r}: no tmpfs at {RAM_ROOT} for a RAM disk",
                hint="mount a tmpfs at /dev/shm, or use kind='host'",
            )
        return _private_dir(_private_dir(ram_root(home), ""), spec.name)
    if spec.kind == "volume":
        return volume_dir(spec, home)
    return _git_checkout(spec, home)


def volume_dir(spec: StorageSpec, home: Path) -> Path:
    """A ``volume`` on this machine: a directory kept under the home (a Block volume is a raw
    device only Kubernetes can give)."""
    if spec.volume_mode == "Block":
        raise StorageError(
            f"storage {spec.name!r}: volume_mode 'Block' needs a Kubernetes cluster",
            hint="use volume_mode 'Filesystem' on local and Docker",
        )
    path = home / "storage" / "volume" / spec.name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _git_checkout(spec: StorageSpec, home: Path) -> Path:
    with git_checkout(spec, home) as (path, _commit):
        return path


@contextlib.contextmanager
def git_checkout(spec: StorageSpec, home: Path) -> Iterator[tuple[Path, str]]:
    """The checkout of ``spec`` at its ref, cloned or fetched under
    ``JULIARUN_HOME/storage/git``: yields its directory and the commit the ref resolved to,
    holding the checkout's lock until the ``with`` block ends (the working tree stays at that
    commit meanwhile, e.g. while it is copied). A ref that is not in the repository raises
    :class:`StorageError` naming it."""
    ref = spec.ref or "HEAD"
    url = spec.url or ""
    safe_ref = re.sub(r"[^A-Za-z0-9._-]", "_", ref)
    # The url and the exact ref are part of the directory's name: redefining the storage with
    # another url gets a fresh clone, and refs that sanitize alike ("a/b", "a_b") stay apart.
    key = hashlib.sha256(f"{url}\0{ref}".encode()).hexdigest()[:8]
    path = home / "storage" / "git" / f"{spec.name}@{safe_ref}-{key}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.with_name(path.name + ".lock")):  # one provisioner at a time
        if not (path / ".git").exists():
            tmp = path.with_name(path.name + ".partial")
            if tmp.exists():
                shutil.rmtree(tmp)
            # "--": the url and the path are never options, whatever they start with.
            _git("clone", "--quiet", "--no-checkout", "--", url, str(tmp), storage=spec.name)
            tmp.rename(path)
        else:  # --force: a tag moved upstream is updated, not a failed fetch
            _git("fetch", "--quiet", "--force", "--tags", "origin", storage=spec.name, cwd=path)
        commit = _resolve(path, ref)
        if commit is None:
            raise StorageError(
                f"storage {spec.name!r}: git ref {ref!r} not found in {url}",
                hint="use a branch, tag or commit that exists in the repository",
            )
        _git("checkout", "--quiet", "--force", "--detach", commit, storage=spec.name, cwd=path)
        yield path, commit


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``lock`` (created if missing) for the block."""
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _resolve(path: Path, ref: str) -> str | None:
    candidates = [f"origin/{ref}", ref] if ref != "HEAD" else ["origin/HEAD", "HEAD"]
    for candidate in candidates:
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"],
            cwd=path,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return proc.stdout.strip()
    return None
