"""The Elasticsearch log store against the real test server: the shared LogStore contract
(tests/contracts/log_store_contract.py), exactly-once shipping, the spool, jobs on the local
backend, and an outage."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

import juliarun
from juliarun.errors import StoreError
from juliarun.logs import open_log_store
from juliarun.logs.base import LogLine, LogQuery
from juliarun.logs.elasticsearch import ElasticsearchLogStore
from juliarun.outbox import DELIVERED
from tests.contracts.log_store_contract import LogStoreContract, WriterProcess, line, messages

pytestmark = pytest.mark.elasticsearch

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "http://127.0.0.1:9"  # nothing listens on the discard port: connection refused


def eventually(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def writer_spools(spool: Path) -> list[Path]:
    """The writers' spool directories (each with its ``lock`` and ``.ndjson`` bulks)."""
    return sorted(p for p in spool.glob("*") if p.is_dir() and p.name != "rejected")


def drop_prefix(es: Elasticsearch, prefix: str) -> None:
    """Delete the prefix's indices (by name: wildcard deletes are refused) and template."""
    names = list(es.options(ignore_status=404).indices.get(index=f"{prefix}-*"))
    if names:
        es.options(ignore_status=404).indices.delete(index=",".join(names))
    es.options(ignore_status=404).indices.delete_index_template(name=prefix)


@pytest.fixture
def es_url(es_client: Elasticsearch) -> str:
    return os.environ["JULIARUN_ES_URL"]


@pytest.fixture
def prefix(es_client: Elasticsearch) -> Iterator[str]:
    """A per-test index prefix; its indices and template are deleted afterwards."""
    name = f"juliarun-test-{uuid.uuid4().hex[:12]}"
    yield name
    drop_prefix(es_client, name)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_store(
    es_url: str, prefix: str, spool: Path
) -> Iterator[Callable[..., ElasticsearchLogStore]]:
    made: list[ElasticsearchLogStore] = []

    def make(**options: object) -> ElasticsearchLogStore:
        options = {"spool": spool, "index_prefix": prefix, **options}
        store = ElasticsearchLogStore(str(options.pop("url", es_url)), **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close(timeout=0)


@pytest.fixture
def store(make_store: Callable[..., ElasticsearchLogStore]) -> ElasticsearchLogStore:
    return make_store()


# -- the store's shape ---------------------------------------------------------------------


def test_is_registered(es_url: str, prefix: str, spool: Path) -> None:
    other = open_log_store(
        {"kind": "elasticsearch", "url": es_url, "spool": str(spool), "index_prefix": prefix}
    )
    assert isinstance(other, ElasticsearchLogStore)
    other.close()


def test_daily_indices_from_an_idempotent_template(
    make_store: Callable[..., ElasticsearchLogStore], es_client: Elasticsearch, prefix: str
) -> None:
    first, second = make_store(), make_store()
    first.write([line(0, "day one")])
    second.write([line(86_400, "day two")])  # puts the same template again: no error
    indices = es_client.indices.get(index=f"{prefix}-*")
    assert sorted(indices) == [f"{prefix}-2024.03.01", f"{prefix}-2024.03.02"]
    mapping = indices[f"{prefix}-2024.03.01"]["mappings"]["properties"]
    assert mapping["@timestamp"]["type"] == "date_nanos"
    assert {mapping[f]["type"] for f in ("cluster", "tenant", "job", "worker", "stream")} == {
        "keyword"
    }
    assert mapping["message"]["type"] == "text"
    assert mapping["message"]["fields"]["keyword"]["type"] == "keyword"
    template = es_client.indices.get_index_template(name=prefix)["index_templates"][0]
    assert template["index_template"]["_meta"]["managed_by"] == "juliarun"
    settings = indices[f"{prefix}-2024.03.01"]["settings"]["index"]
    assert settings["number_of_shards"] == "1"


def test_invalid_prefix_is_refused(spool: Path) -> None:
    with pytest.raises(StoreError, match="invalid index prefix"):
        ElasticsearchLogStore(NOWHERE, spool=spool, index_prefix="Bad*Prefix")


# -- the LogStore contract (tests/contracts/log_store_contract.py) --------------------------


def _write_from_process(url: str, spool: str, prefix: str, worker: str, n: int) -> None:
    store = ElasticsearchLogStore(url, spool=spool, index_prefix=prefix, bulk_size=50)
    try:
        for i in range(0, n, 25):
            store.write([line(i / 1000 + j / 1000, f"{worker} line {i + j}", worker=worker)
                         for j in range(25)])  # fmt: skip
    finally:
        store.close()


@pytest.fixture
def writer_process(
    store: ElasticsearchLogStore, es_url: str, spool: Path, prefix: str
) -> WriterProcess:
    """Processes writing 25 lines a call, in bulks of 50, while this test's store is open."""
    return lambda worker, n: (_write_from_process, (es_url, str(spool), prefix, worker, n))


class TestElasticsearchLogStore(LogStoreContract):
    pass


# -- beyond the contract: bulks, paging, regex with limit, errors, follow ------------------


def test_query_after_write_sees_a_large_write_split_into_bulks(
    make_store: Callable[..., ElasticsearchLogStore],
) -> None:
    store = make_store(bulk_size=100)
    n = 12_345  # several bulks, and more than one search page
    assert store.write(line(i / 1000, f"m{i}") for i in range(n)) == n
    assert store.count(LogQuery()) == n
    got = store.query(LogQuery())
    assert messages(got) == [f"m{i}" for i in range(n)]


def test_regex_with_limit_takes_the_most_recent_matches(store: ElasticsearchLogStore) -> None:
    store.write([line(i, f"{'even' if i % 2 == 0 else 'odd'} {i}") for i in range(10)])
    assert messages(store.query(LogQuery(regex=r"^even", limit=2))) == ["even 6", "even 8"]
    assert store.count(LogQuery(regex=r"^odd", limit=3)) == 3


def test_delete_pages_through_many_lines(store: ElasticsearchLogStore) -> None:
    store.write(line(i / 100, f"m{i}", job="big") for i in range(7000))
    store.write([line(0, "kept", job="small")])
    assert store.delete("big") == 7000
    assert messages(store.query(LogQuery())) == ["kept"]


def test_use_after_close_is_a_store_error(
    make_store: Callable[..., ElasticsearchLogStore],
) -> None:
    store = make_store()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.write([line(0, "late")])


def test_unreachable_server_is_a_store_error_on_read(
    make_store: Callable[..., ElasticsearchLogStore],
) -> None:
    store = make_store(url=NOWHERE)
    with pytest.raises(StoreError, match="cannot refresh") as info:
        store.query(LogQuery())
    assert "Elasticsearch is up" in info.value.hint


def test_a_search_waits_out_a_shard_that_is_still_starting(
    make_store: Callable[..., ElasticsearchLogStore], es_client: Elasticsearch, prefix: str
) -> None:
    """A search while an index's primary shard is not started yet (a daily index the first
    lines just created, indices recovering after a restart) gets 503 from Elasticsearch; reads
    retry that for ``read_retry`` seconds rather than fail. The shard is held unassigned by an
    allocation rule naming no node, then released."""
    store = make_store(read_retry=30.0)
    store.write([line(0, "stored")])  # the template, and today's index, exist
    store.refresh()
    index = f"{prefix}-2026.01.01"
    es_client.indices.create(
        index=index,
        settings={"number_of_replicas": 0, "routing.allocation.require._name": "no-such-node"},
        wait_for_active_shards="0",
    )
    release = threading.Timer(
        1.5,
        lambda: es_client.indices.put_settings(
            index=index, settings={"routing.allocation.require._name": None}
        ),
    )
    release.start()
    try:
        started = time.monotonic()
        # the search itself, without a refresh first
        assert messages(store._select(LogQuery())) == ["stored"]
        assert time.monotonic() - started >= 1.0  # it did wait for the shard
    finally:
        release.join()

    # A shard that never starts: the read gives up after read_retry, naming the 503 (not an
    # answer without that index's lines).
    es_client.indices.create(
        index=f"{prefix}-2026.01.02",
        settings={"number_of_replicas": 0, "routing.allocation.require._name": "no-such-node"},
        wait_for_active_shards="0",
    )
    brief = make_store(read_retry=1.0)
    with pytest.raises(StoreError, match="503"):
        brief._select(LogQuery())


def test_follow_sees_late_lines_with_old_timestamps(
    store: ElasticsearchLogStore, make_store: Callable[..., ElasticsearchLogStore]
) -> None:
    """A drained spool delivers lines older than ones already seen: follow still yields them."""
    store.write([line(100, "recent")])
    other = make_store()
    polls = 0

    def fake_sleep(_: float) -> None:
        nonlocal polls
        polls += 1
        other.write([line(1, "from a drained spool"), line(200, "newest")])

    got = store.follow(LogQuery(), stop=lambda: polls >= 1, sleep=fake_sleep)
    assert messages(list(got)) == ["recent", "from a drained spool", "newest"]


def test_follow_ignores_deleted_lines_and_a_new_day(store: ElasticsearchLogStore) -> None:
    store.write([line(0, "a", job="gone"), line(1, "b")])
    polls = 0

    def fake_sleep(_: float) -> None:
        nonlocal polls
        polls += 1
        if polls == 1:
            store.delete("gone")
        else:
            store.write([line(86_400, "next day")])

    got = store.follow(LogQuery(job="job-a"), stop=lambda: polls >= 2, sleep=fake_sleep)
    assert messages(list(got)) == ["b", "next day"]


# -- shipping: exactly once, rejections, the spool -----------------------------------------


def test_a_retried_bulk_stores_each_line_once(store: ElasticsearchLogStore) -> None:
    """A bulk retried after its response was lost meets 409 for what it already stored."""
    items = [store._item(line(i, f"m{i}")) for i in range(50)]
    assert store._deliver(items[:30], None) == DELIVERED
    assert store._deliver(items, None) == DELIVERED  # the first 30 again, plus 20 new
    assert store.count(LogQuery()) == 50
    assert sorted(messages(store.query(LogQuery()))) == sorted(f"m{i}" for i in range(50))


def test_a_refused_line_is_reported_and_counted_not_retried(
    store: ElasticsearchLogStore,
    es_client: Elasticsearch,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A day whose index maps `job` as a number: a line of job "job-a" is a mapping error there.
    es_client.indices.create(
        index=f"{prefix}-2024.02.01", mappings={"properties": {"job": {"type": "long"}}}
    )
    bad = LogLine(datetime(2024, 2, 1, tzinfo=UTC), "job-a", "w1", "stdout", "unmappable")
    assert store.write([bad, line(0, "fine")]) == 1
    assert store.rejected == 1
    assert store.backlog() == 0
    err = caplog.text
    assert "Elasticsearch refused a log line" in err
    assert "document_parsing_exception" in err or "mapper_parsing_exception" in err
    assert "unmappable" in err
    assert messages(store.query(LogQuery())) == ["fine"]


def test_unreachable_server_spools_and_a_later_store_drains_it(
    make_store: Callable[..., ElasticsearchLogStore], spool: Path
) -> None:
    down = make_store(url=NOWHERE, sleep=lambda _: None, retry_interval=60)
    assert down.write([line(i, f"m{i}") for i in range(100)]) == 100
    assert down.write([line(100, "m100")]) == 1  # spooled at once, behind the backlog
    assert down.backlog() == 101
    assert down.spooled == 101
    down.close(timeout=0)
    assert len(writer_spools(spool)) == 1

    reader = make_store()  # any store adopts the spool of a writer that is gone
    eventually(lambda: reader.count(LogQuery()) == 101, 30, "the spool to drain")
    assert messages(reader.query(LogQuery())) == [f"m{i}" for i in range(101)]
    eventually(lambda: not writer_spools(spool), 10, "the drained spool to be removed")
    assert not list(spool.glob("**/lock"))


def test_a_timed_out_bulk_is_spooled_not_retried_in_place(
    make_store: Callable[..., ElasticsearchLogStore],
) -> None:
    """A hung server (accepts connections, never answers): one attempt, then the spool."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        port = server.getsockname()[1]
        hung = make_store(url=f"http://127.0.0.1:{port}", request_timeout=0.5, retry_interval=60)
        assert hung.write([line(i, f"m{i}") for i in range(10)]) == 10
        assert hung.backlog() == 10
        assert len(accepted) == 1
        assert hung.write([line(10, "m10")]) == 1  # behind the backlog: no new attempt
        assert len(accepted) == 1
    finally:
        done.set()
        acceptor.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_a_spool_drained_twice_stores_each_line_once(
    make_store: Callable[..., ElasticsearchLogStore], spool: Path, tmp_path: Path
) -> None:
    """A crash between shipping a spooled bulk and forgetting it: the copy ships again."""
    down = make_store(url=NOWHERE, sleep=lambda _: None, retry_interval=60)
    down.write([line(i, f"m{i}") for i in range(40)])
    down.close(timeout=0)
    (directory,) = writer_spools(spool)
    shutil.copytree(directory, tmp_path / "copy")

    reader = make_store(adopt_interval=0.2)
    eventually(lambda: not directory.exists(), 30, "the first drain")
    shutil.copytree(tmp_path / "copy", directory)
    assert (directory / "lock").exists()
    eventually(lambda: not directory.exists(), 30, "the second drain")
    assert reader.count(LogQuery()) == 40


def test_a_live_writers_spool_is_not_adopted(
    make_store: Callable[..., ElasticsearchLogStore], spool: Path
) -> None:
    down = make_store(url=NOWHERE, sleep=lambda _: None, retry_interval=60)
    down.write([line(0, "still mine")])
    reader = make_store(adopt_interval=0.1)
    time.sleep(1)
    assert reader.count(LogQuery()) == 0
    assert down.backlog() == 1


def test_delete_drops_the_jobs_lines_from_the_spool(
    make_store: Callable[..., ElasticsearchLogStore],
) -> None:
    down = make_store(url=NOWHERE, sleep=lambda _: None, retry_interval=60)
    down.write([line(0, "a", job="x"), line(1, "b", job="y")])
    with pytest.raises(StoreError):  # the spool part is done; the server is unreachable
        down.delete("x")
    assert down.backlog() == 1


# -- jobs on the local backend -------------------------------------------------------------


@pytest.fixture
def es_env(juliarun_home: Path, monkeypatch: pytest.MonkeyPatch, es_url: str, prefix: str) -> Path:
    monkeypatch.setenv("JULIARUN_LOG_STORE", "elasticsearch")
    monkeypatch.setenv("JULIARUN_ES_URL", es_url)
    monkeypatch.setenv("JULIARUN_ES_INDEX_PREFIX", prefix)
    return juliarun_home


@pytest.mark.julia
def test_lines_of_a_running_three_worker_job_are_searchable(
    es_env: Path, tmp_path: Path, julia: str
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "w.jl").write_text(
        'for i in 1:150\n    println("worker ", ENV["JULIARUN_WORKER_INDEX"], " line ", i)\n'
        "    flush(stdout)\n    sleep(0.04)\nend\n"
        'println(stderr, "worker ", ENV["JULIARUN_WORKER_INDEX"], " done")\n'
    )
    name = f"esjob-{uuid.uuid4().hex[:6]}"
    with juliarun.init("local") as ctx:
        assert isinstance(ctx.logs, ElasticsearchLogStore)
        juliarun.define_storage(ctx, name="code", kind="host", path=str(code))
        job = juliarun.JuliaParBatchWorkers(name, "/mnt/code/w.jl", "code", nworkers=3)
        juliarun.submit(ctx, job)

        # searchable while it runs
        def some_from_every_worker() -> bool:
            found = ctx.logs.query(LogQuery(job=name, text="line"))
            return {x.worker for x in found} == {f"{name}-{i}" for i in range(3)}

        eventually(some_from_every_worker, 60, "lines from all three workers")
        assert not ctx.backend.status(name).done

        # follow streams them live, until the job ends
        followed = list(
            ctx.logs.follow(
                LogQuery(job=name),
                stop=lambda: ctx.backend.status(name).done,
                poll_interval=0.2,
            )
        )
        assert juliarun.wait(ctx, job, timeout=120).phase == "succeeded"

        # and after it ends: every line, once
        got = ctx.logs.query(LogQuery(job=name))
        assert len(got) == 3 * 151
        assert Counter(x.message for x in got) == Counter(
            [f"worker {w} line {i}" for w in range(3) for i in range(1, 151)]
            + [f"worker {w} done" for w in range(3)]
        )
        assert sorted(x.message for x in followed) == sorted(x.message for x in got)
        assert ctx.logs.count(LogQuery(job=name, stream="stderr")) == 3
        hits = juliarun.search(ctx, "line 150", job=name)
        assert sorted(x.worker for x in hits) == [f"{name}-{i}" for i in range(3)]
        hits = juliarun.search(ctx, regex=r"^worker 1 line 15\d?$", job=name)
        assert [x.message for x in hits] == ["worker 1 line 15", "worker 1 line 150"]
        juliarun.delete(ctx, job)


def _testenv(action: str) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "testenv"), action, "elasticsearch"],
        check=True,
        timeout=600,
        capture_output=True,
    )


def _node_start(es: Elasticsearch) -> int:
    (node,) = es.nodes.info(node_id="_local", metric="jvm")["nodes"].values()
    return int(node["jvm"]["start_time_in_millis"])


@pytest.mark.serial  # restarts the shared Elasticsearch (docs/testing.md)
def test_no_line_is_lost_or_doubled_when_elasticsearch_restarts_mid_job(
    es_env: Path, es_client: Elasticsearch
) -> None:
    """The job (~22 s) usually outlives the outage (~8 s), so its supervisor drains its own
    spool while still writing; if it ends first, it leaves the spool to this process's store
    (adoption is also tested on its own above)."""
    n = 2000
    script = (
        "import sys, time\n"
        f"for i in range({n}):\n"
        "    print(f'number {i}', flush=True)\n"
        "    time.sleep(0.01)\n"
    )
    name = f"outage-{uuid.uuid4().hex[:6]}"
    with juliarun.init("local") as ctx:
        job = juliarun.Batch(name, command=[sys.executable, "-c", script])
        juliarun.submit(ctx, job)
        eventually(lambda: ctx.logs.count(LogQuery(job=name)) >= 200, 60, "the first lines")
        started = _node_start(es_client)
        spool = es_env / "spool" / "logs"
        try:
            _testenv("down")
            # the job keeps printing: its supervisor spools the lines
            eventually(lambda: any(spool.glob("*/*.ndjson")), 30, "the supervisor to spool")
        finally:
            _testenv("up")
        assert _node_start(es_client) > started  # it really was a restart
        assert juliarun.wait(ctx, job, timeout=300).phase == "succeeded"

        def all_stored() -> bool:
            try:
                return ctx.logs.count(LogQuery(job=name)) >= n
            except StoreError:
                return False

        eventually(all_stored, 180, "every line to be shipped after the restart")
        eventually(lambda: not any(spool.glob("*/*.ndjson")), 60, "the spool to be emptied")
        got = ctx.logs.query(LogQuery(job=name))
    numbers = Counter(int(x.message.split()[1]) for x in got)
    assert len(got) == n
    assert set(numbers) == set(range(n))
    assert max(numbers.values()) == 1
