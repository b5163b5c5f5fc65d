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
