"""The journal-store conformance suite over the local PostgreSQL, and durable runs on it."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dispytch.backoff import Backoff
from dispytch.durable import Durable, gather, journal_store_for_url
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
