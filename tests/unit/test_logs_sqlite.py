"""The embedded SQLite log store, on real database files: the shared LogStore contract
(tests/contracts/log_store_contract.py) and what is particular to SQLite (WAL, FTS5, sequence
numbers, threads)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from juliarun.errors import StoreError
from juliarun.logs.base import LogLine, LogQuery
from juliarun.logs.sqlite import SqliteLogStore, fts_query
from tests.contracts.log_store_contract import LogStoreContract, WriterProcess, line, messages


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "logs.db"


@pytest.fixture
def make_store(db: Path) -> Iterator[Callable[[], SqliteLogStore]]:
    made: list[SqliteLogStore] = []

    def make() -> SqliteLogStore:
        made.append(SqliteLogStore(db))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: Callable[[], SqliteLogStore]) -> SqliteLogStore:
    return make_store()


def _write_from_process(path: str, worker: str, n: int) -> None:
    store = SqliteLogStore(path)
    try:
        for i in range(n):
            store.write([line(i / 1000, f"{worker} line {i}", worker=worker)])
    finally:
        store.close()


@pytest.fixture
def writer_process(db: Path) -> WriterProcess:
    """Processes that each open the (not yet created) file themselves, one line per write."""
    return lambda worker, n: (_write_from_process, (str(db), worker, n))


class TestSqliteLogStore(LogStoreContract):
    def test_delete_keeps_the_full_text_index_consistent(
        self, store: SqliteLogStore, sample: list[LogLine]
    ) -> None:
        assert store.delete("job-a") == 3
        assert messages(store.query(LogQuery(text="world"))) == []
        conn = sqlite3.connect(store.path)
        try:
            conn.execute("INSERT INTO lines_fts(lines_fts) VALUES ('integrity-check')")
        finally:
            conn.close()


def test_creates_a_wal_file(store: SqliteLogStore, db: Path) -> None:
    assert db.exists()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_fts_query_quotes_each_word() -> None:
    assert fts_query('a "b" c!') == '"a" """b""" "c!"'
    assert fts_query("") is None


def test_sequence_numbers_are_not_reused_after_delete(db: Path) -> None:
    with SqliteLogStore(db) as store:
        store.write([line(0, "a", job="x"), line(1, "b", job="x")])
        store.delete("x")
        store.write([line(2, "c", job="y")])
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT seq FROM lines").fetchall() == [(3,)]
    finally:
        conn.close()


def test_use_after_close_is_a_store_error(db: Path) -> None:
    store = SqliteLogStore(db)
    store.close()
    with pytest.raises(StoreError, match="cannot query lines"):
        store.query(LogQuery())


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open log store") as info:
        SqliteLogStore(not_a_db)
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_threads_share_one_instance(store: SqliteLogStore) -> None:
    def work(worker: str) -> None:
        for i in range(20):
            store.write([line(i, f"{worker}-{i}", worker=worker)])
            store.count(LogQuery(worker=worker))

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count(LogQuery()) == 80
    assert store.count(LogQuery(worker="t2")) == 20


def _open_at_barrier(path: str, barrier: Any) -> None:
    barrier.wait()
    SqliteLogStore(path).close()


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Switching a new file to WAL needs an exclusive lock that SQLite refuses at once (no busy
    handler) when several processes create the file together; every opener must still succeed."""
    ctx = multiprocessing.get_context("fork")
    for round_ in range(25):
        path = str(tmp_path / f"r{round_}" / "logs.db")
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_at_barrier, args=(path, barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0], f"round {round_}"
