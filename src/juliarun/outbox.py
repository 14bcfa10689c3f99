"""One outbox for the stores that ship records to a server: batching, a durable spool, replay.

The Elasticsearch log store and the InfluxDB metric store both hand their records (one line of
text each: a bulk item, a line of line protocol) to an :class:`Outbox`, with a ``deliver``
callable that sends one batch to their server. The outbox does the rest, the same way for both:

**Two ways in.** :meth:`Outbox.send` delivers in the caller's thread before it returns (the log
store: a line ``write`` accepted is on the server or on disk, never only in memory);
:meth:`Outbox.put` appends to a bounded in-memory buffer that a background thread sends in
batches of ``batch_size`` records, at least every ``max_age`` seconds (the metric store). A
writer that outruns the server waits up to ``block_timeout`` seconds for room in the buffer, then
spills the oldest batches to the spool itself: memory stays bounded and nothing is dropped.

**Retries.** A batch whose delivery fails with a retriable :class:`DeliveryError` (or that comes
back with records to send again) is retried ``max_retries`` times in place, with exponential
backoff between ``retry_delays`` (honouring the server's ``retry_after``), through
:func:`retry_call` -- tenacity with the injected ``sleep`` and ``clock``. An error that is not
worth retrying at once (``in_place=False``: a timed-out request, the server is struggling) goes
straight to the spool.

**The spool.** What could not be delivered is written to ``<root>/<writer>/<seq><suffix>`` (a
temporary name, fsync'd, renamed, the directory fsync'd): ``<writer>`` is this outbox (host,
pid, random suffix) and holds an exclusive ``flock`` on its ``lock`` file for its lifetime (the
kernel drops it when the process dies). From then on new batches go to the spool too, behind the
older ones, and the background thread replays the spool oldest first, probing the server after
``probe_delays`` (growing from the first to the second value while it stays away); when the
server answers, the spool drains and direct delivery resumes. The background thread of *every*
outbox on the same root, on start and every ``adopt_interval`` seconds, takes the lock of the
other writers' directories; one it obtains belongs to a closed or dead writer, and it replays
and removes it (a torn file yields its complete lines). A batch the server refuses for good is
kept under ``<root>/rejected/`` with the error next to it. Every retry, spooled batch and
rejection is reported to ``on_failure`` (default: this module's logger).

**Exactly once** is the store's part: a record must be delivered the same way every time (the
log store's document ids, the metric store's series + timestamp), because a batch can be sent
twice -- a retry after a lost response, a spool file replayed after a crash between the send
and the unlink.

**Closing.** :meth:`Outbox.close` sends the buffer and replays the spool for at most its
timeout (retrying on the probe schedule), spools what is left and unlocks the spool for the next
outbox on the root.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> def unreachable(records: list[str], timeout: float | None) -> Delivered:
...     raise DeliveryError(ConnectionRefusedError("nobody listens"), retriable=True)
>>> box = Outbox(root, unreachable, suffix=".txt", max_retries=0, on_failure=lambda f: None)
>>> box.send(["a", "b"])
0
>>> box.close(timeout=0)
>>> (box.stats.accepted, box.stats.spooled), [p.read_text() for p in root.glob("*/*.txt")]
((2, 2), ['a\\nb\\n'])
>>> delivered: list[str] = []
>>> def store(records: list[str], timeout: float | None) -> Delivered:
...     delivered.extend(records)
...     return DELIVERED
>>> later = Outbox(root, store, suffix=".txt")  # adopts the spool of the closed one
>>> later.wait_idle(10)
True
>>> later.close()
>>> delivered, list(root.iterdir())
(['a', 'b'], [])
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import tenacity

from juliarun.errors import StoreError

__all__ = [
    "DELIVERED",
    "Delivered",
    "DeliveryError",
    "Failure",
    "Outbox",
    "Stats",
    "failure_logger",
    "retry_call",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
REJECTED = "rejected"


# -- retries ----------------------------------------------------------------------------------


def retry_call(
    call: Callable[[], _T],
    *,
    retry_on: Callable[[BaseException], bool],
    delays: tuple[float, float],
    attempts: int | None = None,
    seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    hint: Callable[[BaseException], float | None] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> _T:
    """``call()``, retried while it raises an exception that ``retry_on`` accepts.

    Waits grow from ``delays[0]``, doubling, up to ``delays[1]`` (``hint(exc)``, when it gives
    a number, replaces the wait, still capped); gives up after ``attempts`` calls, or when the
    next wait would end past ``seconds`` after the first call (measured by ``clock``), and then
    raises the last exception. ``on_retry(exc, wait)`` runs before each wait.

    >>> tries: list[float] = []
    >>> def flaky() -> str:
    ...     tries.append(1)
    ...     if len(tries) < 3:
    ...         raise TimeoutError("not yet")
    ...     return "done"
    >>> waits: list[float] = []
    >>> retry_call(flaky, retry_on=lambda e: isinstance(e, TimeoutError), delays=(0.1, 0.15),
    ...            attempts=5, sleep=waits.append)
    'done'
    >>> waits
    [0.1, 0.15]
    """
    backoff = tenacity.wait_exponential(multiplier=delays[0], max=delays[1])

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        told = hint(exc) if hint is not None and exc is not None else None
        return min(told, delays[1]) if told is not None else backoff(state)

    stop: tenacity.stop.stop_base = tenacity.stop_never
    if attempts is not None:
        stop = tenacity.stop_after_attempt(max(1, attempts))
    if seconds is not None:
        deadline = clock() + seconds

        class _PastDeadline(tenacity.stop.stop_base):
            def __call__(self, state: tenacity.RetryCallState) -> bool:
                return clock() + state.upcoming_sleep > deadline

        stop = stop | _PastDeadline()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if on_retry is not None and exc is not None:
            on_retry(exc, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_on),
        wait=wait,
        stop=stop,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(call)


# -- what deliver says --------------------------------------------------------------------


class DeliveryError(Exception):
    """``deliver`` could not hand over a batch. ``retriable``: sending the same records again
    may succeed (else they are rejected for good); ``in_place``: worth retrying at once (a
    timed-out request is not: the batch goes to the spool); ``retry_after``: the server's wait,
    in seconds."""

    def __init__(
        self,
        cause: BaseException,
        *,
        retriable: bool,
        in_place: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retriable = retriable
        self.in_place = in_place
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Delivered:
    """What ``deliver`` returns: the records to send again (each failed in a retriable way),
    and those refused for good, each with the reason; every other record was stored."""

    retry: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


DELIVERED = Delivered()
"""Every record of the batch was stored."""

Deliver = Callable[[list[str], float | None], Delivered]
"""``deliver(records, timeout)``: send one batch (``timeout``: seconds the request may take,
``None``: the store's own); raise :class:`DeliveryError` when the whole batch failed."""


class _AwayError(Exception):
    """A replay of the spool stopped: the server failed a batch again."""


class _RetryError(Exception):
    """Some records of a batch are to be sent again."""


@dataclass(frozen=True, slots=True)
class Failure:
    """What ``on_failure`` receives: a batch of ``lines`` records met ``error``; ``action``
    says what happened to it: ``retrying`` (sent again after a backoff), ``spooled`` (on disk at
    ``path``, sent when the server answers again) or ``rejected`` (refused for good; kept at
    ``path`` with the error next to it)."""

    lines: int
    error: BaseException
    action: Literal["retrying", "spooled", "rejected"]
    path: Path | None = None


@dataclass(slots=True)
class Stats:
    """Counters, in records: accepted by ``put``/``send``; delivered directly; spooled;
    delivered from a spool (this writer's and adopted ones); rejected by the server."""

    accepted: int = 0
    sent: int = 0
    spooled: int = 0
    drained: int = 0
    rejected: int = 0


def failure_logger(
    logger: logging.Logger,
    server: str = "the server",
    records: str = "records",
    describe: Callable[[BaseException], str] = str,
) -> Callable[[Failure], None]:
    """An ``on_failure`` that writes one record to ``logger`` per failure: ``server`` names
    the server, ``records`` what is shipped, ``describe`` an error in a line.

    >>> report = failure_logger(logging.getLogger("demo"), "InfluxDB", "points")
    >>> report(Failure(3, OSError("refused"), "spooled", Path("/spool/w/1.lp")))
    """

    def report(failure: Failure) -> None:
        error = describe(failure.error)
        if failure.action == "retrying":
            logger.debug("a batch of %d %s failed, retrying: %s", failure.lines, records, error)
        elif failure.action == "spooled":
            logger.warning(
                "%s unavailable (%s): %d %s spooled to %s; they are sent when it is back",
                server,
                error,
                failure.lines,
                records,
                failure.path,
            )
        else:
            logger.error(
                "%s refused %d %s (%s); kept in %s",
                server,
                failure.lines,
                records,
                error,
                failure.path,
            )

    return report


# -- the spool on disk --------------------------------------------------------------------


def write_durably(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all: a temporary file, fsync'd, renamed."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.rename(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _encode(records: Iterable[str]) -> bytes:
    return "".join(f"{r}\n" for r in records).encode()


def _decode(data: bytes) -> list[str]:
    """The complete lines of a batch file (a torn temporary file yields the lines it has)."""
    end = data.rfind(b"\n")
    return data[:end].decode(errors="replace").split("\n") if end >= 0 else []


def _remove_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        for child in directory.iterdir():
            child.unlink(missing_ok=True)
        directory.rmdir()


@dataclass(slots=True)
class _Adopted:
    directory: Path
    lock_fd: int
    files: deque[Path]


class Outbox:
    """Records on their way to a server (see the module docstring).

    ``root``: the spool directory shared by every outbox of the kind on the host; ``deliver``:
    sends one batch; ``suffix``: of the spool files; ``name``: of the kind (``log``,
    ``metric``), in messages and the thread's name. ``clock`` (monotonic seconds) and ``sleep``
    drive backoff and deadlines.
    """

    def __init__(
        self,
        root: Path | str,
        deliver: Deliver,
        *,
        suffix: str = ".batch",
        batch_size: int = 1000,
        max_age: float = 1.0,
        max_buffer: int = 100_000,
        block_timeout: float = 1.0,
        max_retries: int = 3,
        retry_delays: tuple[float, float] = (0.2, 2.0),
        probe_delays: tuple[float, float] = (0.2, 2.0),
        close_timeout: float = 10.0,
        adopt_interval: float = 60.0,
        on_failure: Callable[[Failure], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        name: str = "outbox",
    ) -> None:
        if batch_size < 1 or max_buffer < batch_size:
            raise StoreError(
                f"batch_size {batch_size} must be >= 1 and <= max_buffer {max_buffer}",
                hint="pick e.g. batch_size=5000, max_buffer=100000",
            )
        self.root = Path(root)
        self.deliver = deliver
        self.suffix = suffix
        self.batch_size = batch_size
        self.max_age = max_age
        self.max_buffer = max_buffer
        self.block_timeout = block_timeout
        self.max_retries = max_retries
        self.retry_delays = retry_delays
        self.probe_delays = probe_delays
        self.close_timeout = close_timeout
        self.adopt_interval = adopt_interval
        self.on_failure = on_failure or failure_logger(log)
        self.clock = clock
        self.sleep = sleep
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stats = Stats()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the {name} spool under {str(root)!r}: {exc}",
                hint="the spool directory must be writable (under JULIARUN_HOME/spool)",
            ) from exc
        # the buffer and the lifecycle; taken before _spool_lock, never after it
        self._cond = threading.Condition(threading.RLock())
        self._buffer: deque[str] = deque()
        self._buffer_since: float | None = None
        self._inflight: tuple[int, list[str]] | None = None
        self._flush_requested = 0
        self._closing = False
        self._closed = False
        self._seq = 0
        self._spool_lock = threading.RLock()  # the spool files, their counts, the probe times
        self._directory: Path | None = None  # this writer's, made at the first spill
        self._lock_fd: int | None = None
        self._own: list[Path] = []  # sorted by name, i.e. by batch number
        self._counts: dict[Path, int] = {}
        self._adopted: deque[_Adopted] = deque()
        self._next_probe = 0.0  # before then the server is taken as away
        self._probe_failures = 0
        self._send_lock = threading.Lock()  # one send() at a time: a writer's order
        self._drain_lock = threading.Lock()  # one replay at a time
        self._thread = threading.Thread(
            target=self._run, name=f"{name}-outbox-{self.writer}", daemon=True
        )
        self._thread.start()

    # -- the way in ---------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """``close`` has begun: no more records are taken."""
        return self._closing

    def _check_open(self) -> None:
        if self._closing:
            raise StoreError("the store is closed", hint="open a new store instead of reusing it")

    def send(self, records: Sequence[str]) -> int:
        """Deliver ``records`` now (with retries), spooling what cannot be delivered; returns
        how many the server refused for good. While the spool holds this writer's records or
        the server is taken as away, they go straight to the spool, behind the older ones."""
        batch = list(records)
        if not batch:
            return 0
        with self._send_lock:
            with self._cond:
                self._check_open()
                self.stats.accepted += len(batch)
                seq = self._next_seq()
            if self._away():
                self._spill(seq, batch, None)
                return 0
            unsent, error, rejected = self._deliver(batch, self.max_retries, None)
            self.stats.sent += len(batch) - len(unsent) - rejected
            if unsent:
                self._spill(seq, unsent, error, down=True)
            return rejected

    def put(self, records: Sequence[str]) -> None:
        """Queue ``records`` for the background thread (waiting up to ``block_timeout`` for
        room in the buffer, then spilling its oldest batches to the spool)."""
        if not records:
            return
        with self._cond:
            self._check_open()
            self.stats.accepted += len(records)
            self._wait_for_room(len(records))
            if self._buffer_since is None:
                self._buffer_since = self.clock()
            self._buffer.extend(records)
            if len(self._buffer) >= self.batch_size:
                self._cond.notify_all()

    def _wait_for_room(self, incoming: int) -> None:
        """Called holding the lock: wait for the sender, then spill the oldest batches."""
        if len(self._buffer) + incoming <= self.max_buffer:
            return
        self._cond.notify_all()
        deadline = self.clock() + self.block_timeout
        while len(self._buffer) + incoming > self.max_buffer:
            left = deadline - self.clock()
            if left <= 0:
                break
            self._cond.wait(left)
        while len(self._buffer) + incoming > self.max_buffer and self._buffer:
            seq, batch = self._take_locked()
            try:
                self._spill(seq, batch, None)
            except OSError as exc:
                raise StoreError(
                    f"buffer full and the spool {self.root} is not writable: {exc}",
                    hint="free disk space under the spool directory, or check that the server"
                    " is up",
                ) from exc

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _take_locked(self) -> tuple[int, list[str]]:
        n = min(self.batch_size, len(self._buffer))
        batch = [self._buffer.popleft() for _ in range(n)]
        self._buffer_since = self.clock() if self._buffer else None
        self._cond.notify_all()
        return self._next_seq(), batch

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record put so far was delivered or spooled (up to ``timeout``
        seconds, default ``close_timeout``); ``True`` when nothing is left in memory or in a
        spool."""
        deadline = self.clock() + (self.close_timeout if timeout is None else timeout)
        with self._cond:
            self._flush_requested += 1
            self._cond.notify_all()
            try:
                while self._buffer or self._inflight is not None:
                    left = deadline - self.clock()
                    if left <= 0 or not self._thread.is_alive():
                        break
                    self._cond.wait(min(left, 0.1))
                return not (self._buffer or self._inflight or self.pending())
            finally:
                self._flush_requested -= 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait (polling) until nothing is buffered and no spool, own or adopted, is left."""
        deadline = self.clock() + timeout
        while not self.flush(max(0.0, deadline - self.clock())) and self.clock() < deadline:
            with self._cond:
                self._cond.wait(0.01)
        return self.flush(0)

    # -- delivering -----------------------------------------------------------------------

    def _deliver(
        self, records: list[str], retries: int, timeout: float | None
    ) -> tuple[list[str], BaseException | None, int]:
        """``(unsent, error, rejected)``: what is still to send after ``retries`` retries and
        why; how many records were refused for good (kept under ``rejected/``)."""
        pending = records
        rejected = 0

        def attempt() -> None:
            nonlocal pending, rejected
            result = self.deliver(pending, timeout)
            if result.rejected:
                rejected += len(result.rejected)
                self._reject(result.rejected, None)
            pending = result.retry
            if pending:
                raise DeliveryError(
                    _RetryError(f"{len(pending)} records to send again"), retriable=True
                )

        def retriable(exc: BaseException) -> bool:
            return (
                isinstance(exc, DeliveryError)
                and exc.retriable
                and exc.in_place
                and not self._closing
            )

        def hint(exc: BaseException) -> float | None:
            return exc.retry_after if isinstance(exc, DeliveryError) else None

        def report(exc: BaseException, _wait: float) -> None:
            cause = exc.cause if isinstance(exc, DeliveryError) else exc
            self._report(Failure(len(pending), cause, "retrying"))

        try:
            retry_call(
                attempt,
                retry_on=retriable,
                delays=self.retry_delays,
                attempts=retries + 1,
                clock=self.clock,
                sleep=self.sleep,
                hint=hint,
                on_retry=report,
            )
        except DeliveryError as exc:
            if exc.retriable:
                return pending, exc.cause, rejected
            reason = str(exc.cause)
            self._reject([(r, reason) for r in pending], exc.cause)
            return [], None, rejected + len(pending)
        except Exception as exc:  # a bug of ours or the client's: keep the batch
            log.exception("%s: delivery failed unexpectedly", self.writer)
            return pending, exc, rejected
        return [], None, rejected

    def _reject(self, refused: list[tuple[str, str]], error: BaseException | None) -> None:
        reasons = "\n".join(dict.fromkeys(reason for _r, reason in refused))
        seq = self._take_seq()
        with self._spool_lock:
            directory = self.root / REJECTED
            path = directory / f"{self.writer}-{seq:016d}{self.suffix}"
            try:
                directory.mkdir(exist_ok=True)
                write_durably(path, _encode(r for r, _reason in refused))
                write_durably(path.with_suffix(".error"), f"{reasons}\n".encode())
            except OSError as exc:
                log.error("cannot keep %d refused records in %s: %s", len(refused), path, exc)
            self.stats.rejected += len(refused)
        self._report(Failure(len(refused), error or StoreError(reasons), "rejected", path))

    def _take_seq(self) -> int:
        with self._cond:
            return self._next_seq()

    def _report(self, failure: Failure) -> None:
        try:
            self.on_failure(failure)
        except Exception:
            log.exception("the on_failure callback failed")

    # -- the spool ------------------------------------------------------------------------

    def _away(self) -> bool:
        """Records go to the spool: it holds this writer's older ones, or the server is away."""
        with self._spool_lock:
            return bool(self._own) or self.clock() < self._next_probe

    def _mark(self, *, up: bool) -> None:
        with self._spool_lock:
            if up:
                self._probe_failures = 0
                self._next_probe = 0.0
                return
            first, most = self.probe_delays
            delay = min(first * 2**self._probe_failures, most)
            self._probe_failures += 1
            self._next_probe = self.clock() + delay

    def _open_directory(self) -> Path:
        if self._directory is None:
            # Locked under a hidden name, then renamed: no one adopts it before it is locked.
            hidden = self.root / f".new-{self.writer}"
            hidden.mkdir(parents=True)
            fd = os.open(hidden / "lock", os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            directory = self.root / self.writer
            hidden.rename(directory)
            self._lock_fd, self._directory = fd, directory
        return self._directory

    def _spill(
        self, seq: int, records: list[str], error: BaseException | None, *, down: bool = False
    ) -> Path:
        """Append a batch to this writer's spool (``down``: the server just failed it)."""
        with self._spool_lock:
            if down:
                self._mark(up=False)
            try:
                path = self._open_directory() / f"{seq:016d}{self.suffix}"
                write_durably(path, _encode(records))
            except OSError as exc:
                log.error("cannot spool %d records under %s: %s", len(records), self.root, exc)
                self._report(Failure(len(records), exc, "retrying"))
                raise
            if path not in self._counts:
                bisect.insort(self._own, path)
            self._counts[path] = len(records)
            self.stats.spooled += len(records)
        if error is not None:
            self._report(Failure(len(records), error, "spooled", path))
        with self._cond:
            self._cond.notify_all()
        return path

    def backlog(self) -> int:
        """Records of this writer waiting in its spool."""
        with self._spool_lock:
            return sum(self._counts.values())

    def pending(self) -> bool:
        """Whether a spool (this writer's or an adopted one) holds records."""
        with self._spool_lock:
            return bool(self._own or self._adopted)

    def discard(self, keep: Callable[[str], bool]) -> int:
        """Drop from this writer's spool the records ``keep`` refuses; returns how many."""
        dropped = 0
        with self._spool_lock:
            for path in list(self._own):
                records = _decode(path.read_bytes())
                kept = [r for r in records if keep(r)]
                if len(kept) == len(records):
                    continue
                dropped += len(records) - len(kept)
                if kept:
                    write_durably(path, _encode(kept))
                    self._counts[path] = len(kept)
                else:
                    self._forget(path)
        return dropped

    def _forget(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        if path in self._counts:
            del self._counts[path]
            self._own.remove(path)

    def adopt(self) -> None:
        """Lock every other writer's directory whose lock is free, and queue its files."""
        with self._spool_lock:
            known = {a.directory for a in self._adopted}
            try:
                directories = sorted(self.root.iterdir())
            except OSError:
                return
            for directory in directories:
                if (
                    directory.name.startswith(".")
                    or directory.name in (REJECTED, self.writer)
                    or directory in known
                    or not directory.is_dir()
                ):
                    continue
                try:
                    fd = os.open(directory / "lock", os.O_RDWR)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    # drained and removed by another adopter meanwhile?
                    if os.fstat(fd).st_ino != os.stat(directory / "lock").st_ino:
                        raise FileNotFoundError(directory)
                except OSError:
                    os.close(fd)
                    continue
                files = sorted(p for p in directory.iterdir() if p.name != "lock")
                self._adopted.append(_Adopted(directory, fd, deque(files)))

    def _head(self) -> tuple[Path, list[str]] | None:
        """The oldest spooled batch: adopted directories first, then this writer's."""
        with self._spool_lock:
            while self._adopted:
                adopted = self._adopted[0]
                while adopted.files:
                    path = adopted.files[0]
                    try:
                        records = _decode(path.read_bytes())
                    except FileNotFoundError:
                        records = []
                    if records:
                        return path, records
                    path.unlink(missing_ok=True)
                    adopted.files.popleft()
                self._adopted.popleft()
                _remove_dir(adopted.directory)
                os.close(adopted.lock_fd)
            if self._own:
                path = self._own[0]
                return path, _decode(path.read_bytes())
            return None

    def _done(self, path: Path, unsent: list[str]) -> None:
        """``path`` was replayed; ``unsent``: its records still to send (kept in place)."""
        with self._spool_lock:
            if unsent:
                write_durably(path, _encode(unsent))
                if path in self._counts:
                    self._counts[path] = len(unsent)
                return
            if path in self._counts:
                self._forget(path)
                return
            path.unlink(missing_ok=True)
            adopted = self._adopted[0] if self._adopted else None
            if adopted is not None and adopted.files and adopted.files[0] == path:
                adopted.files.popleft()

    def drain(self, timeout: float | None = None) -> bool:
        """Replay spooled batches oldest first; ``False`` at the first the server fails again
        (it is then taken as away until the next probe)."""
        with self._drain_lock:
            while True:
                head = self._head()
                if head is None:
                    self._mark(up=True)
                    return True
                path, records = head
                unsent, _error, rejected = self._deliver(records, 0, timeout)
                self.stats.drained += len(records) - len(unsent) - rejected
                self._done(path, unsent)
                if unsent:
                    self._mark(up=False)
                    return False

    # -- the background thread ----------------------------------------------------------

    def _buffer_due(self, now: float) -> bool:
        return bool(self._buffer) and (
            len(self._buffer) >= self.batch_size
            or bool(self._flush_requested)
            or now - (self._buffer_since or now) >= self.max_age
        )

    def _run(self) -> None:
        next_adopt = 0.0
        while True:
            with self._cond:
                while True:
                    now = self.clock()
                    probe = self._next_probe
                    if (
                        self._closing
                        or self._buffer_due(now)
                        or (self.pending() and now >= probe)
                        or now >= next_adopt
                    ):
                        break
                    # an empty buffer too: put() wakes the thread only for a full batch
                    wake = [next_adopt, (self._buffer_since or now) + self.max_age]
                    if self.pending():
                        wake.append(probe)
                    self._cond.wait(max(0.001, min(wake) - now))
                closing = self._closing
            try:
                if self.clock() >= next_adopt:
                    next_adopt = self.clock() + self.adopt_interval
                    self.adopt()
                if self.pending() and (self.clock() >= self._next_probe or closing):
                    self.drain()
                self._send_buffer()
            except Exception:  # the sender must survive anything; report it
                log.exception("%s: unexpected error in the background thread", self.writer)
            with self._cond:
                if closing and not self._buffer and self._inflight is None:
                    return
                self._cond.notify_all()

    def _send_buffer(self) -> None:
        """Deliver (or, while the server is away, spool) the buffer, a batch at a time."""
        while True:
            with self._cond:
                if not self._buffer or self._closed:
                    return
                if not (self._closing or self._buffer_due(self.clock())):
                    return
                seq, batch = self._inflight = self._take_locked()
            try:
                if self._away():
                    self._spill(seq, batch, None)
                    continue
                unsent, error, rejected = self._deliver(batch, self.max_retries, None)
                self.stats.sent += len(batch) - len(unsent) - rejected
                if unsent:
                    self._spill(seq, unsent, error, down=True)
            finally:
                with self._cond:
                    self._inflight = None
                    self._cond.notify_all()

    # -- lifecycle ------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Deliver the buffer and replay the spool for at most ``timeout`` seconds (default
        ``close_timeout``), spool what is left and unlock it for a later outbox. Idempotent."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        wait = self.close_timeout if timeout is None else timeout
        deadline = self.clock() + wait
        self._thread.join(max(0.0, wait))

        def replay() -> None:
            if not self.drain(timeout=max(0.0, deadline - self.clock())):
                raise _AwayError(self.root)

        if not self._thread.is_alive() and self.pending() and self.clock() < deadline:
            with contextlib.suppress(_AwayError):  # what is left stays in the spool
                retry_call(
                    replay,
                    retry_on=lambda exc: isinstance(exc, _AwayError),
                    delays=self.probe_delays,
                    seconds=max(0.0, deadline - self.clock()),
                    clock=self.clock,
                    sleep=self.sleep,
                )
        with self._cond:
            self._closed = True
            leftovers: list[tuple[int, list[str]]] = []
            if self._inflight is not None:  # stuck in a request: keep a copy, dedup covers it
                leftovers.append(self._inflight)
            while self._buffer:
                leftovers.append(self._take_locked())
            self._cond.notify_all()
        for seq, batch in leftovers:
            try:
                self._spill(seq, batch, None)
            except OSError as exc:
                log.error("%d records lost at close: %s", len(batch), exc)
        self._thread.join(1.0)
        with self._spool_lock:
            for adopted in self._adopted:
                os.close(adopted.lock_fd)
            self._adopted.clear()
            if self._directory is not None and not self._own:
                _remove_dir(self._directory)
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock: the spool is anyone's to replay
                self._lock_fd = None
