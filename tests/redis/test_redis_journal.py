"""The journal-store conformance suite over Redis (the user's client and a URL-built one),
the persistence check, and durable runs with their journal in Redis.

The shared server runs with ``appendonly no``: the suite opens it with
``allow_volatile=True``; the persistence check is tested against it (refused) and against
servers of the test's own (``redis-server`` on a free port) with AOF on (opened) and with
an evicting ``maxmemory-policy`` (refused).
"""

from __future__ import annotations

import asyncio
import pickle
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from dispytch.backoff import Backoff
from dispytch.durable import Durable, gather, journal_store_for_url
from dispytch.durable.store import NewRun, StepRecord
from dispytch.errors import ConfigError
from dispytch.redis.journal import RedisJournalStore
from dispytch.testing.journal import JournalStoreConformance

from tests.redis.redis_support import REDIS_URL, STREAMS_URL, own_redis

pytestmark = pytest.mark.broker


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    for name in ("loads", "dumps", "load", "dump"):
        monkeypatch.setattr(pickle, name, refuse)


async def _drop(client: aredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await client.delete(*keys)


def _prefix() -> str:
    return f"test.journal.{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def client_store(client: aredis.Redis) -> AsyncIterator[RedisJournalStore]:
    """A store around the test's own client (the store never closes it)."""
    store = RedisJournalStore(client, prefix=_prefix(), allow_volatile=True)
    await store.open()
    yield store
    await store.close()
    assert await client.ping()  # still the user's, still open
    await _drop(client, store.prefix)


@pytest.fixture
async def url_store(client: aredis.Redis) -> AsyncIterator[RedisJournalStore]:
    """A store built from a URL (journal_store_for_url, the plugin's factory)."""
    store = journal_store_for_url(f"{REDIS_URL}?prefix={_prefix()}&allow_volatile=true")
    assert isinstance(store, RedisJournalStore)
    await store.open()
    yield store
    await store.close()
    await _drop(client, store.prefix)


class TestRedisJournalClientConformance(JournalStoreConformance):
    @pytest.fixture
    async def store(self, client_store: RedisJournalStore) -> RedisJournalStore:
        return client_store


class TestRedisJournalURLConformance(JournalStoreConformance):
    @pytest.fixture
    async def store(self, url_store: RedisJournalStore) -> RedisJournalStore:
        return url_store


# -- the persistence check -----------------------------------------------------------


async def test_a_server_without_aof_is_refused_unless_allowed(client: aredis.Redis) -> None:
    assert (await client.info("persistence"))["aof_enabled"] == 0  # the local server's
    for store in (
        RedisJournalStore(client, prefix=_prefix()),
        journal_store_for_url(REDIS_URL),
    ):
        with pytest.raises(ConfigError, match=r"appendonly no.*\n.*allow_volatile=true"):
            await store.open()
        await store.close()
    allowed = journal_store_for_url(f"{REDIS_URL}?allow_volatile=true")
    await allowed.open()
    await allowed.close()


async def test_a_server_with_aof_opens_and_keeps_the_journal(tmp_path: Path) -> None:
    with own_redis(tmp_path, "--appendonly", "yes") as url:
        store = journal_store_for_url(url)
        await store.open()
        try:
            record, created = await store.create_run(NewRun("r1", "mod.fn", "[]", "h"))
            assert created and record.status == "pending"
        finally:
            await store.close()


async def test_an_evicting_server_is_refused(tmp_path: Path) -> None:
    with own_redis(
        tmp_path, "--appendonly", "yes", "--maxmemory", "100mb",
        "--maxmemory-policy", "allkeys-lru",
    ) as url:  # fmt: skip
        store = journal_store_for_url(url)
        with pytest.raises(ConfigError, match=r"allkeys-lru.*\n.*allow_volatile=true"):
            await store.open()
        await store.close()


# -- construction ---------------------------------------------------------------------


def test_the_plugin_serves_redis_urls() -> None:
    store = journal_store_for_url(
        "redis://127.0.0.1:6379/2?prefix=jobs:&allow_volatile=yes&socket_timeout=5"
    )
    assert isinstance(store, RedisJournalStore)
    assert store.prefix == "jobs:" and store.allow_volatile
    kwargs = store.client.connection_pool.connection_kwargs
    assert kwargs["db"] == 2 and kwargs["socket_timeout"] == 5.0  # the rest goes to redis-py
    assert "prefix" not in kwargs and "allow_volatile" not in kwargs
    assert isinstance(journal_store_for_url("rediss://h:6380/0"), RedisJournalStore)
    assert repr(store) == "RedisJournalStore(127.0.0.1:6379, prefix='jobs:')"
    with pytest.raises(ConfigError, match="allow_volatile"):
        journal_store_for_url("redis://h/0?allow_volatile=perhaps")
    with pytest.raises(ConfigError, match="prefix"):
        journal_store_for_url("redis://h/0?prefix=")
    with pytest.raises(ConfigError, match="Not a Redis URL"):
        RedisJournalStore.from_url("postgresql://h/db")


def test_clients_that_cannot_work_are_refused() -> None:
    import redis

    with pytest.raises(TypeError, match="asyncio"):
        RedisJournalStore(redis.Redis())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_responses"):
        RedisJournalStore(aredis.Redis(decode_responses=True))
    with pytest.raises(ConfigError, match="prefix"):
        RedisJournalStore(aredis.Redis(), prefix="")


async def test_values_with_any_text_round_trip(client_store: RedisJournalStore) -> None:
    """Outcomes are any text (NUL, newlines, non-ASCII); names may not hold NUL."""
    record, _ = await client_store.create_run(NewRun("r-" + uuid.uuid4().hex, "m.f", "{}", "h"))
    token = await client_store.acquire(record.id, 30.0)
    assert token is not None
    odd = 'a\x00b\nc "é" \x00'
    assert await client_store.put_step(record.id, token, StepRecord("1", "m.s", "h", "ok", odd))
    journal = await client_store.load(record.id)
    assert journal is not None and journal.steps["1"].outcome == odd
    with pytest.raises(ValueError, match="NUL"):
        await client_store.put_step(record.id, token, StepRecord("2", "m\x00s", "h", "ok", "1"))


async def test_completion_is_published(
    client: aredis.Redis, client_store: RedisJournalStore
) -> None:
    record, _ = await client_store.create_run(NewRun("r-" + uuid.uuid4().hex, "m.f", "{}", "h"))
    token = await client_store.acquire(record.id, 30.0)
    assert token is not None
    pubsub = client.pubsub()
    await pubsub.subscribe(client_store.done_channel)
    try:
        assert await client_store.complete(record.id, token, "succeeded", "1")
        message = None
        async with asyncio.timeout(5):
            while message is None or message["type"] != "message":
                message = await pubsub.get_message(timeout=1.0)
        assert message["data"] == record.id.encode()
    finally:
        await pubsub.aclose()


# -- durable runs with the journal in Redis ------------------------------------------


async def test_durable_runs_on_redis(client: aredis.Redis) -> None:
    prefix = _prefix()
    durable = Durable(
        f"{STREAMS_URL}?start_id=0",
        store=f"{REDIS_URL}?prefix={prefix}&allow_volatile=true",
        topic=f"test.durable.{uuid.uuid4().hex[:10]}",
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

    try:
        async with durable:
            handle = await flow.dispatch(20)
            assert await handle.result(timeout=60) == sum(2 * i for i in range(20))
            record = await durable.store.get_run(handle.id)
        assert calls == {"leaf": 20, "flaky": 2}
        assert record is not None and record.status == "succeeded" and record.attempts == 1
    finally:
        await client.delete(durable.topic)
        await _drop(client, prefix)


async def test_durable_jobs_on_pubsub_are_refused(client: aredis.Redis) -> None:
    """Redis Pub/Sub is at-most-once: a worker killed mid-run would lose the run."""
    from dispytch.redis import RedisConsumer

    store = RedisJournalStore(client, prefix=_prefix(), allow_volatile=True)
    by_url = Durable(REDIS_URL, store=store)
    with pytest.raises(ConfigError, match=r"at-most-once.*\n.*at-least-once transport"):
        by_url.worker()
    own = Durable(REDIS_URL, store=store, consumer=RedisConsumer(client.pubsub()))
    with pytest.raises(ConfigError, match=r"RedisConsumer delivers at-most-once"):
        own.worker()
    # A process that only dispatches is refused too: nothing would ever run the run.
    dispatcher_only = Durable(REDIS_URL, store=store)

    @dispatcher_only.function
    async def job(x: int) -> int:
        return x

    with pytest.raises(
        ConfigError, match=r"'redis://.*' delivers at-most-once.*\n.*redis\+streams"
    ):
        await job.dispatch(1)
    assert await store.list_runs() == []  # nothing was journalled


async def test_the_completion_feed_reports_finished_runs_from_any_client(
    client: aredis.Redis, client_store: RedisJournalStore
) -> None:
    """watch_completions: ids of runs completed or cancelled through another client (as in
    another process), and None after its connection was killed and resubscribed."""
    name = f"dispytch-test-{uuid.uuid4().hex[:8]}"
    own = aredis.Redis.from_url(REDIS_URL, client_name=name)
    watcher = RedisJournalStore(own, prefix=client_store.prefix, allow_volatile=True)
    seen: list[str | None] = []
    stop = await watcher.watch_completions(seen.append)
    try:
        done, _ = await client_store.create_run(NewRun("r-" + uuid.uuid4().hex, "m.f", "{}", "h"))
        token = await client_store.acquire(done.id, 30.0)
        assert token is not None
        assert await client_store.complete(done.id, token, "succeeded", "1")
        gone, _ = await client_store.create_run(NewRun("r-" + uuid.uuid4().hex, "m.f", "{}", "h"))
        assert await client_store.cancel_run(gone.id, "{}") == [gone.id]
        async with asyncio.timeout(10):
            while len(seen) < 2:
                await asyncio.sleep(0.01)
        assert seen == [done.id, gone.id]

        killed = 0
        for info in await client.client_list(_type="pubsub"):
            if info.get("name") == name:
                await client.client_kill_filter(_id=info["id"])
                killed += 1
        assert killed == 1
        async with asyncio.timeout(10):
            while None not in seen:
                await asyncio.sleep(0.01)
        later, _ = await client_store.create_run(NewRun("r-" + uuid.uuid4().hex, "m.f", "{}", "h"))
        assert await client_store.cancel_run(later.id, "{}") == [later.id]
        async with asyncio.timeout(10):
            while later.id not in seen:
                await asyncio.sleep(0.01)
    finally:
        await stop()
        await own.aclose()


async def test_no_notices_without_notify(client: aredis.Redis) -> None:
    quiet = RedisJournalStore(client, prefix=_prefix(), allow_volatile=True, notify=False)
    assert not journal_store_for_url(f"{REDIS_URL}?notify=false").notify  # type: ignore[attr-defined]
    seen: list[str | None] = []
    stop = await quiet.watch_completions(seen.append)
    try:
        record, _ = await quiet.create_run(NewRun("r-" + uuid.uuid4().hex, "m.f", "{}", "h"))
        token = await quiet.acquire(record.id, 30.0)
        assert token is not None
        assert await quiet.complete(record.id, token, "succeeded", "1")
        probe, _ = await RedisJournalStore(
            client, prefix=quiet.prefix, allow_volatile=True
        ).create_run(NewRun("probe-" + uuid.uuid4().hex, "m.f", "{}", "h"))
        assert await RedisJournalStore(client, prefix=quiet.prefix).cancel_run(probe.id, "{}")
        async with asyncio.timeout(10):  # the probe's notice arrives; the quiet one never did
            while probe.id not in seen:
                await asyncio.sleep(0.01)
        assert seen == [probe.id]
    finally:
        await stop()
        await _drop(client, quiet.prefix)
