"""Connections killed under the consumers (CLIENT KILL): both transports reconnect."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aredis
from dispytch import Event, EventBase, EventEmitter, QueryBase
from dispytch.cqrs import RequestTimeoutError
from dispytch.dispatcher import EventDispatcher
from dispytch.redis import (
    RedisConsumer,
    RedisEventRoute,
    RedisEventSubscription,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamSubscription,
)

from tests.redis.redis_support import REDIS_URL, Names

pytestmark = pytest.mark.broker

TIMEOUT = 15.0


class Ping(EventBase):
    n: int


async def kill_connections(admin: aredis.Redis, name: str, kind: str | None = None) -> int:
    """Kill the connections of clients named ``name`` (optionally of one CLIENT LIST type)."""
    killed = 0
    for info in await admin.client_list(_type=kind) if kind else await admin.client_list():
        if info.get("name") == name:
            await admin.client_kill_filter(_id=info["id"])
            killed += 1
    return killed


async def test_pubsub_consumer_resubscribes_after_its_connection_is_killed(
    client: aredis.Redis, names: Names
) -> None:
    channel = names.channel()
    name = f"dispytch-test-{uuid.uuid4().hex[:8]}"
    owned = aredis.Redis.from_url(REDIS_URL, client_name=name)
    got: list[int] = []
    dispatcher = EventDispatcher(RedisConsumer(owned))

    @dispatcher.handler(RedisEventSubscription(channel=channel))
    async def on_ping(event: Event[Ping]) -> None:
        got.append(event.body.n)

    try:
        async with dispatcher:
            await client.publish(channel, Ping(n=1).model_dump_json())
            await asyncio.wait_for(_until(lambda: 1 in got), TIMEOUT)
            assert await kill_connections(client, name, "pubsub") == 1

            async def delivered_again() -> None:
                n = 2
                while not any(x >= 2 for x in got):
                    await client.publish(channel, Ping(n=n).model_dump_json())
                    n += 1
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(delivered_again(), TIMEOUT)
    finally:
        await owned.aclose()


async def test_stream_reader_reconnects_after_its_connection_is_killed(
    client: aredis.Redis, names: Names
) -> None:
    stream = names.stream()
    name = f"dispytch-test-{uuid.uuid4().hex[:8]}"
    owned = aredis.Redis.from_url(REDIS_URL, client_name=name)
    got: list[int] = []
    dispatcher = EventDispatcher(RedisStreamConsumer(owned, group="g", block_ms=2000))

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_ping(event: Event[Ping]) -> None:
        got.append(event.body.n)

    try:
        async with dispatcher:
            await client.xadd(stream, {"payload": Ping(n=1).model_dump_json()})
            await asyncio.wait_for(_until(lambda: got == [1]), TIMEOUT)
            # The reader is blocked in XREADGROUP on its own connection: kill them all.
            assert await kill_connections(client, name) >= 1
            await client.xadd(stream, {"payload": Ping(n=2).model_dump_json()})
            await asyncio.wait_for(_until(lambda: got == [1, 2]), TIMEOUT)
        assert int((await client.xpending(stream, "g"))["pending"]) == 0
    finally:
        await owned.aclose()


class Double(QueryBase[int]):
    n: int


async def test_reply_subscription_resubscribes_after_its_connection_is_killed(
    client: aredis.Redis, names: Names
) -> None:
    """The requester's reply channel is read on a PubSub connection of its own: killed,
    it is reconnected and resubscribed, and later requests get their replies."""
    channel = names.channel()
    name = f"dispytch-test-{uuid.uuid4().hex[:8]}"
    owned = aredis.Redis.from_url(REDIS_URL, client_name=name)
    dispatcher = EventDispatcher(RedisConsumer(client.pubsub()))

    @dispatcher.query(Double, subscription=RedisEventSubscription(channel=channel))
    async def double(q: Double) -> int:
        return q.n * 2

    route = RedisEventRoute(channel=channel)
    try:
        async with dispatcher, EventEmitter(RedisProducer(owned)) as emitter:
            assert await emitter.request(Double(n=1), route=route, timeout=TIMEOUT) == 2
            assert await kill_connections(client, name, "pubsub") == 1

            async def answered_again() -> int:
                for n in range(2, 200):  # bounded; each try waits at most 0.5 s
                    try:
                        return await emitter.request(Double(n=n), route=route, timeout=0.5)
                    except RequestTimeoutError:
                        continue  # sent while the reply channel was down: lost
                raise AssertionError("no reply after the reply connection was killed")

            assert await asyncio.wait_for(answered_again(), TIMEOUT) % 2 == 0
    finally:
        await owned.aclose()


async def _until(check) -> None:  # type: ignore[no-untyped-def]
    while not check():
        await asyncio.sleep(0.01)
