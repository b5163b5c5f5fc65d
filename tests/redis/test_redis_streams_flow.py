"""Redis Streams flow control against the real Redis: the read-ahead bound, lane pausing,
lease extension and delayed requeue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis
from dispytch import Event, EventBase
from dispytch.dispatcher import EventDispatcher
from dispytch.redis import RedisStreamConsumer, RedisStreamSubscription
from dispytch.transport import LanePausing, LeaseExtension, Message

from tests.redis.redis_support import Names

pytestmark = pytest.mark.broker

TIMEOUT = 20.0


class Job(EventBase):
    n: int


async def pending(client: aredis.Redis, stream: str, group: str = "g") -> int:
    return int((await client.xpending(stream, group))["pending"])


async def next_message(it: AsyncIterator[Message], timeout: float = TIMEOUT) -> Message:
    return await asyncio.wait_for(it.__anext__(), timeout)


async def test_taken_and_unsettled_follows_max_in_flight(
    client: aredis.Redis, names: Names
) -> None:
    """max_in_flight=8, a slow handler, 300 entries queued: Redis never holds more than 8
    entries taken by this consumer and not yet acknowledged (it was 276)."""
    stream = names.stream("bp")
    await client.xgroup_create(stream, "g", id="$", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for n in range(300):
        pipe.xadd(stream, {"payload": Job(n=n).model_dump_json()})
    await pipe.execute()

    consumer = RedisStreamConsumer(client, group="g", block_ms=50)
    dispatcher = EventDispatcher(consumer, max_in_flight=8)  # configure(max_in_flight=8)
    handled: list[int] = []
    release = asyncio.Event()

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def slow(event: Event[Job]) -> None:
        await release.wait()
        handled.append(event.body.n)

    peaks: list[int] = []
    async with dispatcher:
        for _ in range(20):  # the handlers hold 8, nothing settles: does reading stop?
            await asyncio.sleep(0.05)
            peaks.append(await pending(client, stream))
        release.set()
        deadline = time.monotonic() + TIMEOUT
        while len(handled) < 300 and time.monotonic() < deadline:
            peaks.append(await pending(client, stream))
            await asyncio.sleep(0.01)
    assert sorted(handled) == list(range(300))
    assert max(peaks) <= 8, peaks
    assert peaks[:20] == [8] * 20  # the handlers were kept busy meanwhile
    assert consumer.batch_size == 8 and consumer.max_unsettled == 8
    assert await pending(client, stream) == 0


def test_read_ahead_defaults_and_explicit_settings(client: aredis.Redis) -> None:
    consumer = RedisStreamConsumer(client)
    assert (consumer.max_unsettled, consumer.batch_size) == (64, 64)  # until configured
    consumer.configure(max_in_flight=500)
    assert (consumer.max_unsettled, consumer.batch_size) == (500, 100)
    explicit = RedisStreamConsumer(client, batch_size=10, max_unsettled=30)
    explicit.configure(max_in_flight=8)
    assert (explicit.max_unsettled, explicit.batch_size) == (30, 10)


async def test_a_paused_lane_is_not_read_while_others_go_on(
    client: aredis.Redis, names: Names
) -> None:
    slow, busy = names.stream("slow"), names.stream("busy")
    consumer = RedisStreamConsumer(client, group="g", block_ms=50, ordered=True)
    assert isinstance(consumer, LanePausing)
    consumer.subscribe([RedisStreamSubscription(stream=slow), RedisStreamSubscription(stream=busy)])
    await consumer.start()
    try:
        consumer.pause(slow)
        consumer.pause(slow)  # idempotent
        await asyncio.sleep(0.2)  # the read blocked before the pause ends
        await client.xadd(slow, {"payload": b'{"n": 1}'})
        await client.xadd(busy, {"payload": b'{"n": 2}'})
        it = consumer.listen().__aiter__()
        first = await next_message(it)
        assert (first.route, first.lane) == (busy, busy)
        await consumer.ack(first)
        await asyncio.sleep(0.3)
        assert await pending(client, slow) == 0  # not taken while paused
        consumer.resume(slow)
        second = await next_message(it)
        assert second.route == slow
        await consumer.ack(second)
    finally:
        await consumer.stop()
        await consumer.close()


async def test_extend_keeps_a_long_handled_entry_from_other_members(
    client: aredis.Redis, names: Names
) -> None:
    stream = names.stream("lease")
    # Automatic refreshes far apart: only extend() keeps the entry.
    holder = RedisStreamConsumer(
        client, group="g", block_ms=50, min_idle_time=0.6, claim_interval=30.0
    )
    thief = RedisStreamConsumer(
        client, group="g", block_ms=50, min_idle_time=0.6, claim_interval=0.1
    )
    assert isinstance(holder, LeaseExtension)
    for c in (holder, thief):
        c.subscribe([RedisStreamSubscription(stream=stream)])
    await holder.start()
    try:
        await client.xadd(stream, {"payload": b'{"n": 1}'})
        message = await next_message(holder.listen().__aiter__())
        await thief.start()
        stolen: list[Message] = []

        async def watch() -> None:
            async for m in thief.listen():
                stolen.append(m)

        watcher = asyncio.create_task(watch())
        for _ in range(8):  # 1.6 s of "handling", well past min_idle_time
            await holder.extend(message)
            await asyncio.sleep(0.2)
        assert stolen == []
        # Without extending, the other member takes it over.
        await asyncio.sleep(1.5)
        assert [m.metadata["id"] for m in stolen] == [message.metadata["id"]]
        assert stolen[0].attempt == 2
        await thief.ack(stolen[0])
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        for c in (holder, thief):
            await c.stop()
            await c.close()


async def test_delayed_requeue_comes_back_no_sooner_than_the_delay(
    client: aredis.Redis, names: Names
) -> None:
    stream = names.stream("delay")
    consumer = RedisStreamConsumer(
        client, group="g", block_ms=50, min_idle_time=1.0, claim_interval=0.05
    )
    assert consumer.capabilities.delayed_requeue
    consumer.subscribe([RedisStreamSubscription(stream=stream)])
    await consumer.start()
    try:
        it = consumer.listen().__aiter__()
        results: list[tuple[float, float, Message]] = []
        for delay in (0.5, 1.6):  # shorter and longer than min_idle_time
            await client.xadd(stream, {"payload": b'{"n": 1}'})
            first = await next_message(it)
            nacked_at = time.monotonic()
            await consumer.nack(first, requeue=True, delay=delay)
            again = await next_message(it)
            results.append((delay, time.monotonic() - nacked_at, again))
            assert again.metadata["id"] == first.metadata["id"]
            assert again.attempt == 2
            await consumer.ack(again)
        for delay, waited, _ in results:
            assert waited >= delay - 0.05, (delay, waited)  # Redis's idle clock is in ms
    finally:
        await consumer.stop()
        await consumer.close()


async def test_configure_is_what_the_dispatcher_may_call(client: aredis.Redis) -> None:
    from dispytch.transport import ReadAhead

    consumer: Any = RedisStreamConsumer(client)
    assert isinstance(consumer, ReadAhead)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_both_protocols_read_streams_and_pubsub(names: Names, protocol: int) -> None:
    """RESP2 replies are lists of pairs, RESP3 ones maps and push frames: both are read."""
    from dispytch import EventEmitter
    from dispytch.redis import (
        RedisConsumer,
        RedisEventRoute,
        RedisEventSubscription,
        RedisProducer,
        RedisStreamRoute,
    )

    from tests.redis.redis_support import REDIS_URL

    client = aredis.Redis.from_url(REDIS_URL, protocol=protocol)
    stream, channel = names.stream("proto"), names.channel("proto")
    got: list[tuple[str, int]] = []
    streams = EventDispatcher(RedisStreamConsumer(client, group="g", block_ms=50))
    pubsub = EventDispatcher(RedisConsumer(client.pubsub()))

    @streams.handler(RedisStreamSubscription(stream=stream))
    async def on_entry(event: Event[Job]) -> None:
        got.append(("stream", event.body.n))

    @pubsub.handler(RedisEventSubscription(channel=channel))
    async def on_message(event: Event[Job]) -> None:
        got.append(("channel", event.body.n))

    emitter = EventEmitter(RedisProducer(client))
    try:
        async with streams, pubsub:
            for n in range(20):
                await emitter.emit(Job(n=n), route=RedisStreamRoute(stream=stream))
                await emitter.emit(Job(n=n), route=RedisEventRoute(channel=channel))
            deadline = time.monotonic() + TIMEOUT
            while len(got) < 40 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        assert sorted(got) == sorted(
            [("stream", n) for n in range(20)] + [("channel", n) for n in range(20)]
        )
    finally:
        await client.aclose()


async def test_pausing_keeps_back_what_was_already_taken_in_order(
    client: aredis.Redis, names: Names
) -> None:
    slow, busy = names.stream("slow"), names.stream("busy")
    consumer = RedisStreamConsumer(client, group="g", block_ms=50, ordered=True)
    consumer.subscribe([RedisStreamSubscription(stream=slow), RedisStreamSubscription(stream=busy)])
    await consumer.start()
    try:
        for n in range(3):
            await client.xadd(slow, {"payload": b'{"n": %d}' % n})
        await client.xadd(busy, {"payload": b'{"n": 9}'})
        for _ in range(500):  # taken from Redis (pending), not yet yielded
            if await pending(client, slow) == 3 and await pending(client, busy) == 1:
                break
            await asyncio.sleep(0.01)
        consumer.pause(slow)
        it = consumer.listen().__aiter__()
        first = await next_message(it)
        assert first.route == busy  # the slow stream's entries are kept back
        await consumer.ack(first)
        waiting = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # nothing is yielded for the paused stream
        consumer.resume(slow)
        again = [await asyncio.wait_for(waiting, TIMEOUT)]
        again += [await next_message(it) for _ in range(2)]
        assert [m.payload for m in again] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
        for m in again:
            await consumer.ack(m)
    finally:
        await consumer.stop()
        await consumer.close()
    assert await pending(client, slow) == 0


async def test_the_bound_holds_across_several_streams(client: aredis.Redis, names: Names) -> None:
    """XREADGROUP's COUNT is per stream: a read over several never asks for more than
    the room left in all."""
    streams = [names.stream(f"multi{i}") for i in range(3)]
    consumer = RedisStreamConsumer(client, group="g", block_ms=50)
    consumer.configure(max_in_flight=4)
    consumer.subscribe([RedisStreamSubscription(stream=s) for s in streams])
    await consumer.start()
    try:
        for s in streams:
            for n in range(10):
                await client.xadd(s, {"payload": b'{"n": %d}' % n})
        await asyncio.sleep(0.5)  # nothing acknowledged: reading must stop at 4
        total = sum([await pending(client, s) for s in streams])
        assert total == 4
        it = consumer.listen().__aiter__()
        for _ in range(30):
            await consumer.ack(await next_message(it))
    finally:
        await consumer.stop()
        await consumer.close()
    assert sum([await pending(client, s) for s in streams]) == 0
