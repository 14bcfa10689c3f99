"""A worker's metrics file, read by its supervisor without trusting the worker.

The worker appends InfluxDB line-protocol lines to its file; the file and the directory holding
it are the worker's to change (on Docker the directory is a bind mount). So the supervisor:

- never follows a link: the directory and the file are opened with ``O_NOFOLLOW`` (the file
  relative to the opened directory), and only a regular file with a single link (not a hard
  link to a file elsewhere) owned by an accepted owner is read;
- never blocks on it (``O_NONBLOCK``: a FIFO planted there is refused, not waited on) and
  reads at most :data:`MAX_READ` bytes a poll;
- notices a file rewritten rather than appended (a new inode, a shorter size, or other bytes
  where the last line read was) and reads it again from the start;
- reports what it refused or skipped as :attr:`MetricsFile.notes`: fixed sentences that never
  quote the file's content.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> f = MetricsFile(d / "w-0.lp", owners=frozenset({os.getuid()}))
>>> f.prepare()
>>> with open(d / "w-0.lp", "a") as out:
...     _ = out.write("loss value=1\\npartial")
>>> f.read(), f.notes
(b'loss value=1\\n', [])
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

MAX_READ = 4 << 20
"""At most this many bytes are read from one file per poll."""
_TAIL = 64  # bytes before the offset remembered to notice a file rewritten in place


class MetricsFile:
    """The supervisor's reader of one worker's metrics file.

    ``owners`` are the user ids a file may belong to (``None``: any owner; the Docker runtime's
    choice, where a container creates files as its own user inside the bind mount only)."""

    def __init__(self, path: Path, *, owners: frozenset[int] | None) -> None:
        self.path = path
        self.owners = owners
        self.offset = 0
        self.ident: tuple[int, int] | None = None
        self.tail = b""
        self.notes: list[str] = []
        self._refused: str | None = None

    def _dir_fd(self) -> int:
        return os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def _open(self, dir_fd: int) -> int:
        return os.open(
            self.path.name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )

    def _problem(self, st: os.stat_result) -> str | None:
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if st.st_nlink != 1:
            return "has other hard links"
        if self.owners is not None and st.st_uid not in self.owners:
            return f"is owned by user id {st.st_uid}, not by the job"
        return None

    def _note(self, text: str) -> None:
        self.notes.append(f"juliarun: metrics file {self.path.name} {text}")

    def prepare(self) -> None:
        """Before a worker starts: make sure the file is a regular file of ours (anything else
        an earlier attempt left there is removed and the file made anew, mode 0600) and start
        reading at its end (an earlier attempt's lines were read already)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        dir_fd = self._dir_fd()
        try:
            try:
                fd = self._open(dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ELOOP):
                    raise
                fd = -1
            is_dir = False
            if fd >= 0:
                try:
                    st = os.fstat(fd)
                    if self._problem(st) is None:
                        self._start_at(fd, st)
                        return
                    is_dir = stat.S_ISDIR(st.st_mode)
                finally:
                    os.close(fd)
            with contextlib.suppress(OSError):
                if is_dir:
                    os.rmdir(self.path.name, dir_fd=dir_fd)
                else:
                    os.unlink(self.path.name, dir_fd=dir_fd)
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.path.name, flags, 0o600, dir_fd=dir_fd)
            try:
                self._start_at(fd, os.fstat(fd))
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def _start_at(self, fd: int, st: os.stat_result) -> None:
        self.ident = (st.st_dev, st.st_ino)
        self.offset = st.st_size
        start = max(0, self.offset - _TAIL)
        self.tail = os.pread(fd, self.offset - start, start) if self.offset else b""

    def read(self) -> bytes:
        """The complete lines appended since the last read (``b""`` when none, or when the
        file is refused); what happened on the way is added to :attr:`notes`."""
        try:
            dir_fd = self._dir_fd()
        except FileNotFoundError:
            return b""
        except OSError:
            self._refuse("cannot be read: its directory is not a directory of the job")
            return b""
        try:
            try:
                fd = self._open(dir_fd)
            except FileNotFoundError:
                return b""
            except OSError as exc:
                link = exc.errno == errno.ELOOP
                self._refuse("is a symbolic link" if link else "cannot be opened")
                return b""
        finally:
            os.close(dir_fd)
        try:
            return self._read_fd(fd)
        finally:
            os.close(fd)

    def _refuse(self, why: str) -> None:
        if self._refused != why:  # once per change, not once per poll
            self._refused = why
            self._note(f"{why}: not read (metrics are read from a regular file only)")

    def _read_fd(self, fd: int) -> bytes:
        st = os.fstat(fd)
        problem = self._problem(st)
        if problem:
            self._refuse(problem)
            return b""
        self._refused = None
        if (st.st_dev, st.st_ino) != self.ident:
            if self.ident is not None:
                self._note("was replaced: reading it from the start")
            self.ident, self.offset, self.tail = (st.st_dev, st.st_ino), 0, b""
        elif st.st_size < self.offset:
            self._note("was truncated: reading it from the start")
            self.offset, self.tail = 0, b""
        elif self.tail and os.pread(fd, len(self.tail), self.offset - len(self.tail)) != self.tail:
            self._note("was rewritten: reading it from the start")
            self.offset, self.tail = 0, b""
        data = os.pread(fd, MAX_READ, self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= MAX_READ:
                self._note(f"has a line longer than {MAX_READ >> 20} MiB: skipped")
                self._advance(data)
            return b""
        complete = data[: end + 1]
        self._advance(complete)
        return complete

    def _advance(self, data: bytes) -> None:
        self.offset += len(data)
        self.tail = (self.tail + data)[-_TAIL:]

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes
