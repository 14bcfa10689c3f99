"""The outbox both remote stores ship through: batching by size and age, retries (tenacity, with
the injected sleep and clock), spilling to the spool on failure, replay in order, adoption of a
dead writer's spool (a real process killed mid-write), rejections, flush and close deadlines."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from juliarun.outbox import (
    DELIVERED,
    Delivered,
    DeliveryError,
    Failure,
    Outbox,
    retry_call,
)
from tests.unit.local_jobs import eventually

ROOT = Path(__file__).resolve().parents[2]


class Server:
    """A deliver callable: records what it stores; ``up`` decides whether it answers."""

    def __init__(self) -> None:
        self.up = True
        self.batches: list[list[str]] = []
        self.calls = 0
        self.gate: threading.Event | None = None
        self.error: Callable[[], DeliveryError] = lambda: DeliveryError(
            ConnectionRefusedError("down"), retriable=True
        )

    def __call__(self, records: list[str], timeout: float | None) -> Delivered:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if not self.up:
            raise self.error()
        self.batches.append(list(records))
        return DELIVERED

    @property
    def stored(self) -> list[str]:
        return [r for batch in self.batches for r in batch]


class Sleeps:
    """The injected sleep: records each wait and advances a fake clock by it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def spooled(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*.rec") if p.parent.name != "rejected")


@pytest.fixture
def boxes() -> Iterator[Callable[..., Outbox]]:
    made: list[Outbox] = []

    def make(
        root: Path, deliver: Callable[[list[str], float | None], Delivered], **kw: object
    ) -> Outbox:
        options: dict[str, object] = {
            "suffix": ".rec",
            "probe_delays": (0.001, 0.001),
            "retry_delays": (0.001, 0.001),
            "close_timeout": 2.0,
            "on_failure": lambda failure: None,
        }
        options.update(kw)
        box = Outbox(root, deliver, **options)  # type: ignore[arg-type]
        made.append(box)
        return box

    yield make
    for box in made:
        box.close(timeout=0)


# -- batching ---------------------------------------------------------------------------------


def test_put_batches_by_size(tmp_path: Path, boxes: Callable[..., Outbox]) -> None:
    server = Server()
    box = boxes(tmp_path, server, batch_size=1000, max_age=3600)
    box.put([f"r{i}" for i in range(2500)])
    eventually(lambda: len(server.batches) == 2, timeout=5, what="two full batches")
    assert [len(b) for b in server.batches] == [1000, 1000]  # the rest waits for its age
    assert box.flush(timeout=5)
    assert [len(b) for b in server.batches] == [1000, 1000, 500]
    assert server.stored == [f"r{i}" for i in range(2500)]
    assert (box.stats.accepted, box.stats.sent, box.stats.spooled) == (2500, 2500, 0)


def test_put_sends_a_partial_batch_when_it_is_old_enough(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    server = Server()
    box = boxes(tmp_path, server, batch_size=1000, max_age=0.005)
    box.put(["a", "b"])
    eventually(lambda: server.batches == [["a", "b"]], timeout=5, what="the aged batch")


def test_a_full_buffer_spills_its_oldest_batches(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    server = Server()
    server.gate = threading.Event()  # the server hangs: the buffer cannot drain
    box = boxes(tmp_path, server, batch_size=10, max_buffer=20, block_timeout=0.005)
    box.put([f"r{i}" for i in range(10)])  # taken by the sender, which then hangs
    eventually(lambda: server.calls == 1, timeout=5, what="the first request")
    box.put([f"r{i}" for i in range(10, 30)])  # the buffer is full
    box.put([f"r{i}" for i in range(30, 40)])  # no room: r10..r19 go to the spool
    assert box.stats.spooled == 10
    assert [p.read_text().split() for p in spooled(tmp_path)] == [[f"r{i}" for i in range(10, 20)]]
    server.gate.set()
    assert box.wait_idle(5)
    assert sorted(server.stored) == sorted(f"r{i}" for i in range(40))


# -- retries, the spool, replay ---------------------------------------------------------------


def test_send_retries_with_backoff_then_spills(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    server = Server()
    server.up = False
    sleeps = Sleeps()
    failures: list[Failure] = []
    box = boxes(
        tmp_path,
        server,
        max_retries=3,
        retry_delays=(0.1, 0.25),
        probe_delays=(60.0, 60.0),
        sleep=sleeps,
        clock=sleeps.clock,
        on_failure=failures.append,
    )
    assert box.send(["a", "b"]) == 0
    assert sleeps.waits == [0.1, 0.2, 0.25]  # exponential, capped; no real sleeping
    assert server.calls == 4
    assert [f.action for f in failures] == ["retrying", "retrying", "retrying", "spooled"]
    (path,) = spooled(tmp_path)
    assert failures[-1].path == path and path.read_text() == "a\nb\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert box.backlog() == 2
    # the server is taken as away until the next probe: later records go behind the spool at once
    assert box.send(["c"]) == 0
    assert server.calls == 4
    assert [p.read_text() for p in spooled(tmp_path)] == ["a\nb\n", "c\n"]


def test_retry_after_replaces_the_backoff_and_is_capped(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    server = Server()
    server.up = False
    server.error = lambda: DeliveryError(RuntimeError("429"), retriable=True, retry_after=7.0)
    sleeps = Sleeps()
    box = boxes(
        tmp_path, server, max_retries=2, retry_delays=(0.1, 5.0), sleep=sleeps, clock=sleeps.clock
    )
    box.send(["x"])
    assert sleeps.waits == [5.0, 5.0]


def test_a_timeout_goes_to_the_spool_without_retrying_in_place(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    server = Server()
    server.up = False
    server.error = lambda: DeliveryError(TimeoutError("hung"), retriable=True, in_place=False)
    sleeps = Sleeps()
    box = boxes(tmp_path, server, max_retries=3, sleep=sleeps, probe_delays=(60.0, 60.0))
    box.send(["x"])
    assert (server.calls, sleeps.waits, box.backlog()) == (1, [], 1)


def test_only_the_records_to_retry_are_sent_again(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    sent: list[list[str]] = []

    def partly(records: list[str], timeout: float | None) -> Delivered:
        sent.append(list(records))
        return Delivered(retry=[r for r in records if r == "busy"]) if len(sent) == 1 else DELIVERED

    box = boxes(tmp_path, partly, sleep=Sleeps())
    assert box.send(["ok", "busy", "fine"]) == 0
    assert sent == [["ok", "busy", "fine"], ["busy"]]
    assert (box.stats.sent, box.stats.spooled) == (3, 0)


def test_the_spool_replays_in_order_when_the_server_is_back(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    server = Server()
    server.up = False
    box = boxes(tmp_path, server, max_retries=0, probe_delays=(0.002, 0.002))
    for i in range(5):
        box.send([f"{i}a", f"{i}b"])
    assert box.backlog() == 10
    server.up = True
    eventually(lambda: box.backlog() == 0, timeout=5, what="the spool replayed")
    assert server.stored == [f"{i}{s}" for i in range(5) for s in "ab"]
    assert box.stats.drained == 10 and spooled(tmp_path) == []
    box.send(["after"])  # direct again
    assert server.batches[-1] == ["after"] and box.stats.sent == 1


def test_refused_records_are_kept_with_the_reason(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    failures: list[Failure] = []

    def picky(records: list[str], timeout: float | None) -> Delivered:
        return Delivered(rejected=[(r, f"bad {r}") for r in records if r.startswith("bad")])

    box = boxes(tmp_path, picky, on_failure=failures.append)
    assert box.send(["bad1", "good", "bad2"]) == 2
    assert (box.stats.rejected, box.stats.sent) == (2, 1)
    (failure,) = failures
    assert failure.action == "rejected" and failure.path is not None
    assert failure.path.read_text() == "bad1\nbad2\n"
    assert failure.path.with_suffix(".error").read_text() == "bad bad1\nbad bad2\n"

    def refuse(records: list[str], timeout: float | None) -> Delivered:
        raise DeliveryError(ValueError("conflicting types"), retriable=False)

    other = boxes(tmp_path / "other", refuse, on_failure=failures.append)
    assert other.send(["x", "y"]) == 2
    assert failures[-1].action == "rejected" and isinstance(failures[-1].error, ValueError)
    assert failures[-1].path is not None and failures[-1].path.read_text() == "x\ny\n"


def test_discard_drops_records_from_the_spool(tmp_path: Path, boxes: Callable[..., Outbox]) -> None:
    server = Server()
    server.up = False
    box = boxes(tmp_path, server, max_retries=0, probe_delays=(60.0, 60.0))
    box.send(["x1", "y1"])
    box.send(["x2"])
    assert box.discard(lambda r: not r.startswith("x")) == 2
    assert box.backlog() == 1
    assert [p.read_text() for p in spooled(tmp_path)] == ["y1\n"]


# -- other writers' spools --------------------------------------------------------------------


def test_a_closed_writers_spool_is_adopted_and_a_live_ones_is_not(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    down = Server()
    down.up = False
    alive = boxes(tmp_path, down, max_retries=0, probe_delays=(60.0, 60.0))
    alive.send(["mine"])
    gone = boxes(tmp_path, down, max_retries=0, probe_delays=(60.0, 60.0))
    gone.send(["orphan"])
    gone.close(timeout=0)

    server = Server()
    reader = boxes(tmp_path, server, adopt_interval=0.01)
    eventually(lambda: server.stored == ["orphan"], timeout=5, what="the orphan replayed")
    time.sleep(0.05)  # a few adoption rounds: the live writer's spool stays its own
    assert server.stored == ["orphan"] and reader.stats.drained == 1
    assert alive.backlog() == 1
    assert [p.parent.name for p in spooled(tmp_path)] == [alive.writer]


CHILD = textwrap.dedent(
    """
    import sys
    from juliarun.outbox import DeliveryError, Outbox

    def down(records, timeout):
        raise DeliveryError(ConnectionRefusedError("down"), retriable=True)

    box = Outbox(sys.argv[1], down, suffix=".rec", max_retries=0, probe_delays=(3600, 3600),
                 on_failure=lambda failure: None)
    i = 0
    while True:
        box.send([f"{i:06d}-{k:03d}-" + "x" * 200 for k in range(50)])
        print(i, flush=True)  # this batch is on disk
        i += 1
    """
)


def test_a_killed_writers_spool_is_replayed_whole_and_in_order(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    """A real process spooling as fast as it can is killed with SIGKILL mid-write: every batch
    it was told is on disk is replayed, in order, and no torn record comes out."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acked = [int(child.stdout.readline()) for _ in range(20)]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    acked += [int(line) for line in child.stdout.read().split()]

    server = Server()
    box = boxes(tmp_path, server)
    assert box.wait_idle(30)
    batches = {int(r.split("-")[0]) for r in server.stored}
    assert set(acked) <= batches  # everything acknowledged survived the kill
    assert all(len(r) == 6 + 1 + 3 + 1 + 200 for r in server.stored)  # none torn
    assert server.stored == sorted(set(server.stored))  # in order, each once
    for i in batches:
        got = [r for r in server.stored if r.startswith(f"{i:06d}-")]
        whole = [f"{i:06d}-{k:03d}-" + "x" * 200 for k in range(50)]
        # an acknowledged batch is whole; the one being written at the kill, if any came out
        # of its temporary file, is a prefix of whole records
        assert got == whole if i in acked else got == whole[: len(got)]
    assert sorted(batches) == list(range(len(batches)))
    assert list(tmp_path.iterdir()) == []


# -- flush, close, retry_call -----------------------------------------------------------------


def test_flush_gives_up_at_its_timeout(tmp_path: Path, boxes: Callable[..., Outbox]) -> None:
    server = Server()
    server.gate = threading.Event()
    box = boxes(tmp_path, server, max_age=0.001)
    box.put(["slow"])
    started = time.monotonic()
    assert not box.flush(timeout=0.02)
    assert time.monotonic() - started < 1
    server.gate.set()
    assert box.flush(timeout=5)
    assert server.stored == ["slow"]


def test_close_replays_until_its_deadline_then_leaves_the_spool(
    tmp_path: Path, boxes: Callable[..., Outbox]
) -> None:
    server = Server()
    server.up = False
    sleeps = Sleeps()
    box = boxes(
        tmp_path, server, max_retries=0, probe_delays=(1.0, 4.0), sleep=sleeps, clock=sleeps.clock
    )
    box.send(["kept"])
    calls = server.calls
    box.close(timeout=10)  # the fake clock runs only through sleep: no real waiting
    assert sleeps.waits == [1.0, 2.0, 4.0]  # the next wait (4) would end past the deadline
    # one try by the background thread as it stops, then four by close itself
    assert server.calls == calls + 5 and server.stored == []
    assert [p.read_text() for p in spooled(tmp_path)] == ["kept\n"]
    with pytest.raises(Exception, match="closed"):
        box.send(["late"])


def test_retry_call_stops_at_the_deadline_of_the_injected_clock() -> None:
    sleeps = Sleeps()
    calls = 0

    def busy() -> None:
        nonlocal calls
        calls += 1
        raise OSError("busy")

    with pytest.raises(OSError, match="busy"):
        retry_call(
            busy,
            retry_on=lambda e: isinstance(e, OSError),
            delays=(0.05, 1.0),
            seconds=3.0,
            clock=sleeps.clock,
            sleep=sleeps,
        )
    assert sleeps.waits == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]  # the next wait would pass 3 s
    assert calls == 7


def test_retry_call_does_not_retry_other_errors() -> None:
    sleeps = Sleeps()
    with pytest.raises(KeyError):
        retry_call(
            lambda: {}["x"],
            retry_on=lambda e: isinstance(e, OSError),
            delays=(0.05, 1.0),
            attempts=5,
            sleep=sleeps,
        )
    assert sleeps.waits == []
