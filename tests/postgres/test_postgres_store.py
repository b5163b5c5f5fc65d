"""The journal-store conformance suite over the local PostgreSQL, and durable runs on it."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dispytch.backoff import Backoff
from dispytch.durable import Durable, NewRun, gather, journal_store_for_url
from dispytch.durable.errors import LeaseLostError
from dispytch.errors import ConfigError
from dispytch.postgres import PostgresJournalStore
from dispytch.testing.journal import JournalStoreConformance

pytestmark = pytest.mark.broker

DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    for name in ("loads", "dumps", "load", "dump"):
        monkeypatch.setattr(pickle, name, refuse)


async def _drop(store: PostgresJournalStore) -> None:
    await store.open()  # a Durable's stop closes the store it was given
    for table in ("runs", "steps", "children"):
        await store.pool.execute(f"DROP TABLE IF EXISTS {store.prefix}{table}")


@pytest.fixture
async def pg_store() -> AsyncIterator[PostgresJournalStore]:
    store = PostgresJournalStore(DSN, table_prefix=f"t{uuid.uuid4().hex[:12]}_")
    await store.open()
    yield store
    await _drop(store)
    await store.close()


class TestPostgresConformance(JournalStoreConformance):
    @pytest.fixture
    async def store(self, pg_store: PostgresJournalStore) -> PostgresJournalStore:
        return pg_store


def test_the_plugin_serves_postgresql_urls() -> None:
    store = journal_store_for_url(f"{DSN}?table_prefix=abc_&max_size=3")
    assert isinstance(store, PostgresJournalStore)
    assert store.prefix == "abc_" and store.max_size == 3
    assert isinstance(journal_store_for_url("postgres://u@h/db"), PostgresJournalStore)
    with pytest.raises(ConfigError, match="table_prefix"):
        PostgresJournalStore(DSN, table_prefix="x; drop")
    with pytest.raises(ConfigError, match="whole number"):
        journal_store_for_url(f"{DSN}?min_size=many")


async def test_durable_runs_on_postgres(pg_store: PostgresJournalStore) -> None:
    durable = Durable(
        f"memory://pg-{uuid.uuid4().hex}",
        store=pg_store,
        backoff=Backoff(initial=0.01, cap=0.02),
    )
    calls = {"leaf": 0, "flaky": 0}

    @durable.function
    async def leaf(x: int) -> int:
        calls["leaf"] += 1
        await asyncio.sleep(0)
        return x * 2

    @durable.function
    async def flaky(values: list[int]) -> int:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise TimeoutError("once")
        return sum(values)

    @durable.function
    async def flow(n: int) -> int:
        values = await gather(*[leaf(i) for i in range(n)])
        return await flaky(values)

    async with durable:
        handle = await flow.dispatch(20)
        assert await handle.result(timeout=60) == sum(2 * i for i in range(20))
    assert calls == {"leaf": 20, "flaky": 2}
    record = await pg_store.get_run(handle.id)
    assert record is not None and record.status == "succeeded" and record.attempts == 1


class _CountingStore(PostgresJournalStore):
    """Counts the reads of a run's row: the result waiter must not poll."""

    reads = 0

    async def get_run(self, run_id: str) -> Any:
        self.reads += 1
        return await super().get_run(run_id)


async def test_results_are_pushed_to_another_process_not_polled(
    pg_store: PostgresJournalStore,
) -> None:
    transport = f"memory://pg-push-{uuid.uuid4().hex}"
    worker = Durable(transport, store=pg_store)
    # the reader: its own store (its own pool and listening connection), no worker
    reader_store = _CountingStore(DSN, table_prefix=pg_store.prefix)
    reader = Durable(transport, store=reader_store)
    release = asyncio.Event()

    @worker.function(name="push.slow")
    async def slow(x: int) -> int:
        await release.wait()
        return x + 1

    @reader.function(name="push.slow")
    async def slow_there(x: int) -> int:
        raise AssertionError("the reader runs nothing")

    try:
        await worker.start()
        handle = await slow.dispatch(1)
        waiting = asyncio.ensure_future(reader.handle(handle.id, slow_there).result(timeout=30))
        await asyncio.sleep(1.0)  # a polling waiter would read the run many times by now
        # one read at the start, one after asking for the notice (past a 50 ms grace)
        assert not waiting.done() and reader_store.reads == 2
        release.set()
        assert await waiting == 2
        assert reader_store.reads == 3  # and one when the notice came
    finally:
        await worker.stop()
        await reader.stop()


async def test_the_feed_listens_again_after_its_connection_is_killed(
    pg_store: PostgresJournalStore,
) -> None:
    seen: list[str | None] = []
    stop = await pg_store.watch_completions(seen.append)
    try:
        killed = await pg_store.pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE query = $1 AND pid <> pg_backend_pid()",
            f'LISTEN "{pg_store.channel}"',
        )
        assert killed == 1
        async with asyncio.timeout(20):
            while None not in seen:  # the feed says: notices may have been missed
                await asyncio.sleep(0.05)
        record, _ = await pg_store.create_run(NewRun("after-kill", "f", "{}", "h"))
        await pg_store.watch_run(record.id)
        token = await pg_store.acquire(record.id, 30.0)
        assert token is not None
        await pg_store.complete(record.id, token, "succeeded", "1")
        async with asyncio.timeout(20):
            while "after-kill" not in seen:
                await asyncio.sleep(0.05)
    finally:
        await stop()


def test_notify_option_in_the_url() -> None:
    assert journal_store_for_url(f"{DSN}?notify=false").notify is False  # type: ignore[attr-defined]
    assert journal_store_for_url(DSN).notify is True  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="notify=true or notify=false"):
        journal_store_for_url(f"{DSN}?notify=maybe")


async def test_only_watched_runs_are_notified(pg_store: PostgresJournalStore) -> None:
    seen: list[str | None] = []
    stop = await pg_store.watch_completions(seen.append)
    try:
        quiet, _ = await pg_store.create_run(NewRun(f"quiet-{uuid.uuid4().hex}", "f", "{}", "h"))
        loud, _ = await pg_store.create_run(NewRun(f"loud-{uuid.uuid4().hex}", "f", "{}", "h"))
        await pg_store.watch_run(loud.id)
        for record in (quiet, loud):
            token = await pg_store.acquire(record.id, 30.0)
            assert token is not None
            assert await pg_store.complete(record.id, token, "succeeded", "1")
        async with asyncio.timeout(20):
            while loud.id not in seen:
                await asyncio.sleep(0.02)
        assert quiet.id not in seen  # its notice came first had it been sent
    finally:
        await stop()


async def test_load_and_acquire_is_load_then_acquire_in_one_statement(
    pg_store: PostgresJournalStore,
) -> None:
    import time

    from dispytch.durable.store import NewRun, StepRecord

    assert await pg_store.load_and_acquire("missing", 30, time.time()) == (None, None)
    await pg_store.create_run(NewRun("r1", "f", "[]", "h"))
    journal, token = await pg_store.load_and_acquire("r1", 30, time.time())
    assert journal is not None and token == 1
    assert journal.run.status == "pending" and journal.steps == {}
    step = StepRecord("1", "g", "h1", "ok", "5")
    assert await pg_store.put_step("r1", token, step)
    # Leased: the journal (with the step) and no token.
    journal, again = await pg_store.load_and_acquire("r1", 30, time.time())
    assert journal is not None and again is None and journal.steps == {"1": step}
    await pg_store.set_retry("r1", token, 1, time.time() + 60)
    # Released but not due yet (the caller's clock): no token either.
    journal, later = await pg_store.load_and_acquire("r1", 30, time.time())
    assert journal is not None and later is None and journal.run.attempts == 1
    journal, due = await pg_store.load_and_acquire("r1", 30, time.time() + 61)
    assert journal is not None and due == 2
    assert await pg_store.complete("r1", due, "succeeded", "10")
    journal, final = await pg_store.load_and_acquire("r1", 30, time.time() + 61)
    assert journal is not None and journal.run.final and final is None
    with pytest.raises(LeaseLostError):
        await pg_store.put_step("r1", token, StepRecord("2", "g", "h2", "ok", "6"))
