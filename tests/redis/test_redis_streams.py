"""Redis Streams transport against the real server: groups, acks, reclaim, dead letters."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis
from dispytch import Event, EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.redis import (
    RedisEventSubscription,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamProducer,
    RedisStreamRoute,
    RedisStreamSubscription,
)
from dispytch.routes import TopicRoute, TopicSubscription
from dispytch.transport import Message, OutgoingMessage

from tests.redis.redis_support import STREAMS_URL, Names

pytestmark = pytest.mark.broker

TIMEOUT = 10.0


class Order(EventBase):
    __event_type__ = "order"
    order_id: int


async def wait_for(check: Any, what: str, timeout: float = TIMEOUT) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def next_message(it: AsyncIterator[Message], timeout: float = TIMEOUT) -> Message:
    return await asyncio.wait_for(it.__anext__(), timeout)


def entry(order_id: int) -> dict[bytes, bytes]:
    return {b"payload": Order(order_id=order_id).model_dump_json().encode()}


async def pending(client: aredis.Redis, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


def fast(client: aredis.Redis, **kw: Any) -> RedisStreamConsumer:
    """A consumer with short timings so recovery cases run quickly."""
    kw.setdefault("group", "g")
    kw.setdefault("block_ms", 50)
    kw.setdefault("min_idle_time", 0.5)
    kw.setdefault("claim_interval", 0.05)
    return RedisStreamConsumer(client, **kw)


# ---------------------------------------------------------------------- round trips
async def test_round_trip_acks_after_handling(client: aredis.Redis, names: Names) -> None:
    stream = names.stream()
    got: list[Event[Order]] = []
    consumer = RedisStreamConsumer(client, group="g", consumer="worker-1")
    dispatcher = EventDispatcher(consumer)

    @dispatcher.handler(RedisStreamSubscription(stream=stream, group="billing"))
    async def on_order(event: Event[Order]) -> None:
        got.append(event)

    class Routed(Order):
        __route__ = RedisStreamRoute(stream=stream)

    emitter = EventEmitter(RedisStreamProducer(client))
    async with dispatcher, emitter:
        # The group was created (MKSTREAM) by start().
        groups = await client.xinfo_groups(stream)
        assert [g["name"] for g in groups] == [b"billing"]
        await emitter.emit_batch([Routed(order_id=i) for i in range(20)])
        await wait_for(lambda: len(got) == 20, "20 events")
    assert sorted(e.body.order_id for e in got) == list(range(20))
    first = got[0]
    assert first.route == stream
    assert first.attempt == 1
    assert first.metadata["group"] == "billing"
    assert first.metadata["consumer"] == "worker-1"
    assert first.metadata["id"].count("-") == 1
    assert await pending(client, stream, "billing") == 0  # every entry acknowledged
    assert await client.ping()  # the user's client stays open


async def test_topic_routes_and_subscriptions_map_to_streams(
    client: aredis.Redis, names: Names
) -> None:
    stream = names.stream()
    got: list[int] = []
    dispatcher = EventDispatcher(RedisStreamConsumer(client, group="g"))

    @dispatcher.handler(TopicSubscription(topic=stream))
    async def on_order(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    emitter = EventEmitter(RedisStreamProducer(client))
    async with dispatcher, emitter:
        await emitter.emit(Order(order_id=1), route=TopicRoute(topic=stream))
        await wait_for(lambda: got == [1], "topic round trip")
    assert await client.xlen(stream) == 1


async def test_entry_fields_payload_headers_key(client: aredis.Redis, names: Names) -> None:
    stream = names.stream()
    producer = RedisStreamProducer(client)
    await producer.start()
    try:
        await producer.send(
            OutgoingMessage(RedisStreamRoute(stream=stream), b'{"order_id":1}', {"h": "v"}, b"k")
        )
    finally:
        await producer.stop()
    [(_, fields)] = await client.xrange(stream)
    assert fields == {b"payload": b'{"order_id":1}', b"headers": b'{"h":"v"}', b"key": b"k"}


async def test_entries_from_another_program_are_read(client: aredis.Redis, names: Names) -> None:
    stream = names.stream()
    got: list[int] = []
    dispatcher = EventDispatcher(RedisStreamConsumer(client, group="g", start_id="0"))
    await client.xadd(stream, {"data": b'{"order_id": 3}'})  # before the group exists

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_order(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    async with dispatcher:
        await wait_for(lambda: got == [3], "raw entry (start_id='0')")


async def test_maxlen_trims_exactly_or_approximately(client: aredis.Redis, names: Names) -> None:
    exact, approx = names.stream(), names.stream()
    producer = RedisProducer(client)
    await producer.start()
    try:
        for i in range(50):
            await producer.send(
                OutgoingMessage(
                    RedisStreamRoute(stream=exact, maxlen=10, approximate=False), b"%d" % i, {}
                )
            )
        await producer.send_batch(
            [
                OutgoingMessage(RedisStreamRoute(stream=approx, maxlen=100), b"%d" % i, {})
                for i in range(1000)
            ]
        )
    finally:
        await producer.stop()
    assert await client.xlen(exact) == 10
    assert (await client.xrange(exact, count=1))[0][1][b"payload"] == b"40"
    assert 100 <= await client.xlen(approx) < 1000


# ---------------------------------------------------------------------- settlement
async def test_nack_requeue_redelivers_promptly_with_attempt(
    client: aredis.Redis, names: Names
) -> None:
    stream = names.stream()
    consumer = fast(client, min_idle_time=60.0, claim_interval=60.0)
    consumer.subscribe([RedisStreamSubscription(stream=stream)])
    await consumer.start()
    try:
        await client.xadd(stream, entry(1))
        it = consumer.listen().__aiter__()
        first = await next_message(it)
        assert first.attempt == 1
        await consumer.nack(first, requeue=True)
        # Redelivered long before min_idle_time (60 s): the entry was made claimable.
        again = await next_message(it)
        assert again.metadata["id"] == first.metadata["id"]
        assert again.attempt == 2
        await consumer.ack(again)
    finally:
        await consumer.stop()
        await consumer.close()
    assert await pending(client, stream, "g") == 0


async def test_nack_without_requeue_acks_and_dead_letters(
    client: aredis.Redis, names: Names
) -> None:
    stream, dlq = names.stream(), names.stream("dlq")
    consumer = fast(client, dead_letter_stream=dlq)
    consumer.subscribe([RedisStreamSubscription(stream=stream)])
    await consumer.start()
    try:
        await client.xadd(stream, {b"payload": b"{}", b"headers": b'{"tenant":"acme"}'})
        msg = await next_message(consumer.listen().__aiter__())
        await consumer.nack(msg, requeue=False)
    finally:
        await consumer.stop()
        await consumer.close()
    assert await pending(client, stream, "g") == 0
    [(_, fields)] = await client.xrange(dlq)
    headers = json.loads(fields[b"headers"])
    assert fields[b"payload"] == b"{}"
    assert headers["tenant"] == "acme"
    assert headers["dispytch-original-route"] == stream
    assert headers["dispytch-error-type"] == "Rejected"
    assert "dispytch-dead-lettered-at" in headers


async def test_nack_without_requeue_and_no_dead_letter_stream_just_acks(
    client: aredis.Redis, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    stream = names.stream()
    consumer = fast(client)
    consumer.subscribe([RedisStreamSubscription(stream=stream)])
    await consumer.start()
    try:
        await client.xadd(stream, entry(1))
        msg = await next_message(consumer.listen().__aiter__())
        with caplog.at_level(logging.ERROR, logger="dispytch.redis"):
            await consumer.nack(msg, requeue=False)
    finally:
        await consumer.stop()
        await consumer.close()
    assert await pending(client, stream, "g") == 0
    assert "Gave up on entry" in caplog.records[0].getMessage()


# ---------------------------------------------------------------------- recovery
async def test_entries_of_a_dead_member_are_reclaimed(client: aredis.Redis, names: Names) -> None:
    stream = names.stream()
    await client.xgroup_create(stream, "g", id="$", mkstream=True)
    for i in range(5):
        await client.xadd(stream, entry(i))
    # A member that read everything and died without acknowledging.
    await client.xreadgroup("g", "dead", {stream: ">"}, count=10)
    assert await pending(client, stream, "g") == 5

    got: list[tuple[int, int]] = []
    dispatcher = EventDispatcher(fast(client))

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_order(event: Event[Order]) -> None:
        got.append((event.body.order_id, event.attempt))

    async with dispatcher:
        await wait_for(lambda: len(got) == 5, "reclaimed entries")
    assert sorted(got) == [(i, 2) for i in range(5)]
    assert await pending(client, stream, "g") == 0


async def test_max_deliveries_sends_to_the_dead_letter_stream(
    client: aredis.Redis, names: Names
) -> None:
    stream, dlq = names.stream(), names.stream("dlq")
    await client.xgroup_create(stream, "g", id="$", mkstream=True)
    poison = await client.xadd(stream, entry(13))
    await client.xadd(stream, entry(14))
    await client.xreadgroup("g", "dead", {stream: ">"}, count=10)
    # The poison entry was delivered twice more (members crashing on it).
    await client.xclaim(stream, "g", "dead-2", 0, [poison])
    await client.xclaim(stream, "g", "dead-3", 0, [poison])

    got: list[int] = []
    dispatcher = EventDispatcher(fast(client, max_deliveries=3, dead_letter_stream=dlq))

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_order(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    async with dispatcher:
        await wait_for(lambda: got == [14], "the healthy entry")

        async def dead_lettered() -> int:
            return int(await client.xlen(dlq))

        for _ in range(500):
            if await dead_lettered():
                break
            await asyncio.sleep(0.01)
    assert got == [14]
    [(_, fields)] = await client.xrange(dlq)
    headers = json.loads(fields[b"headers"])
    assert json.loads(fields[b"payload"]) == {"order_id": 13}
    assert headers["dispytch-error-type"] == "MaxDeliveriesExceeded"
    assert headers["dispytch-error-attempts"] == "4"
    assert "max_deliveries=3" in headers["dispytch-error-message"]
    assert await pending(client, stream, "g") == 0


async def test_live_members_keep_their_entries(client: aredis.Redis, names: Names) -> None:
    """A slow handler's entry is refreshed, so another member does not take it over."""
    stream = names.stream()
    holder = fast(client, min_idle_time=1.0, claim_interval=0.1)
    holder.subscribe([RedisStreamSubscription(stream=stream)])
    await holder.start()
    other_got: list[Message] = []
    other = EventDispatcher(fast(client, min_idle_time=1.0, claim_interval=0.1))

    @other.handler(RedisStreamSubscription(stream=stream))
    async def on_order(message: Message) -> None:
        other_got.append(message)

    try:
        await client.xadd(stream, entry(1))
        held = await next_message(holder.listen().__aiter__())
        async with other:
            await asyncio.sleep(2.5)  # well past min_idle_time: observe that nothing moves
            assert other_got == []
        await holder.ack(held)
    finally:
        await holder.stop()
        await holder.close()
    assert await pending(client, stream, "g") == 0


async def test_close_hands_back_unhandled_entries(client: aredis.Redis, names: Names) -> None:
    stream = names.stream()
    first = fast(client, min_idle_time=60.0, claim_interval=60.0)
    first.subscribe([RedisStreamSubscription(stream=stream)])
    await first.start()
    for i in range(3):
        await client.xadd(stream, entry(i))
    await next_message(first.listen().__aiter__())  # taken, never settled
    await first.stop()
    await first.close()

    # The next member takes them at once, not after min_idle_time (60 s).
    got: list[int] = []
    dispatcher = EventDispatcher(fast(client, min_idle_time=60.0, claim_interval=60.0))

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_order(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    async with dispatcher:
        await wait_for(lambda: sorted(got) == [0, 1, 2], "handed-back entries")


async def test_close_forgets_a_generated_member_name(client: aredis.Redis, names: Names) -> None:
    stream = names.stream()
    consumer = fast(client)
    consumer.subscribe([RedisStreamSubscription(stream=stream)])
    await consumer.start()
    await client.xadd(stream, entry(1))
    msg = await next_message(consumer.listen().__aiter__())
    await consumer.ack(msg)
    await consumer.stop()
    await consumer.close()
    assert await client.xinfo_consumers(stream, "g") == []


# ---------------------------------------------------------------------- misuse
async def test_subscription_checks(client: aredis.Redis) -> None:
    consumer = RedisStreamConsumer(client)
    with pytest.raises(TypeError, match="(?s)Pub/Sub subscription.*RedisStreamSubscription"):
        consumer.subscribe([RedisEventSubscription(channel="c")])
    with pytest.raises(ValueError, match="nothing to read"):
        await consumer.start()
    consumer.subscribe([RedisStreamSubscription(stream="s", group="g", consumer="a")])
    with pytest.raises(ValueError, match="subscribed as two members"):
        consumer.subscribe([RedisStreamSubscription(stream="s", group="g", consumer="b")])


def test_option_checks(client: aredis.Redis) -> None:
    with pytest.raises(ValueError, match="at least 1 delivery"):
        RedisStreamConsumer(client, max_deliveries=0)
    with pytest.raises(ValueError, match="min_idle_time=0"):
        RedisStreamConsumer(client, min_idle_time=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        RedisStreamConsumer(client, batch_size=0)


async def test_from_url_reads_options(names: Names) -> None:
    stream = names.stream()
    consumer = RedisStreamConsumer.from_url(
        f"{STREAMS_URL}?group=audit&consumer=c9&min_idle_time=5&max_deliveries=4"
        f"&dead_letter_stream={stream}.dlq"
    )
    assert (consumer.group, consumer.consumer_name) == ("audit", "c9")
    assert (consumer.min_idle_time, consumer.max_deliveries) == (5.0, 4)
    assert consumer.dead_letter_stream == f"{stream}.dlq"
    await consumer.close()


async def test_one_url_configures_emitter_and_dispatcher(names: Names) -> None:
    """Consumer options in the URL are not handed to the producer's redis client (and the
    producer's not to the consumer's), so one URL serves both sides."""
    stream = names.stream()
    url = f"{STREAMS_URL}?group=shared&max_deliveries=3&delivery_timeout=5"
    got: list[int] = []
    emitter = EventEmitter.from_url(url)
    dispatcher = EventDispatcher.from_url(url)

    @dispatcher.handler(TopicSubscription(topic=stream))
    async def on_order(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    async with emitter, dispatcher:
        await emitter.emit(Order(order_id=1), route=TopicRoute(topic=stream))
        await wait_for(lambda: got == [1], "the event through one URL")
    assert dispatcher.consumer.group == "shared"  # type: ignore[attr-defined]


async def test_fixed_member_name_resumes_its_own_pending_entries(
    client: aredis.Redis, names: Names
) -> None:
    """A restarted process with a fixed member name gets its pending entries at once."""
    stream = names.stream()
    await client.xgroup_create(stream, "g", id="$", mkstream=True)
    for i in range(3):
        await client.xadd(stream, entry(i))
    await client.xreadgroup("g", "worker-7", {stream: ">"}, count=10)  # then it "crashed"

    got: list[tuple[int, int]] = []
    dispatcher = EventDispatcher(
        fast(client, consumer="worker-7", min_idle_time=60.0, claim_interval=60.0)
    )

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_order(event: Event[Order]) -> None:
        got.append((event.body.order_id, event.attempt))

    async with dispatcher:
        await wait_for(lambda: len(got) == 3, "own pending entries")
        await client.xadd(stream, entry(3))
        await wait_for(lambda: len(got) == 4, "a new entry after them")
    assert sorted(got) == [(0, 2), (1, 2), (2, 2), (3, 1)]
    assert await pending(client, stream, "g") == 0
    # A fixed name is kept in the group (it is the user's to manage).
    assert [c["name"] for c in await client.xinfo_consumers(stream, "g")] == [b"worker-7"]


async def test_trimmed_pending_entries_are_skipped(client: aredis.Redis, names: Names) -> None:
    stream = names.stream()
    await client.xgroup_create(stream, "g", id="$", mkstream=True)
    await client.xadd(stream, entry(1))
    await client.xreadgroup("g", "worker-8", {stream: ">"}, count=10)
    await client.xtrim(stream, maxlen=0)  # the pending entry's data is gone
    await client.xadd(stream, entry(2))

    got: list[int] = []
    dispatcher = EventDispatcher(fast(client, consumer="worker-8"))

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_order(event: Event[Order]) -> None:
        got.append(event.body.order_id)

    async with dispatcher:
        await wait_for(lambda: got == [2], "the surviving entry")

        async def settled() -> bool:
            return await pending(client, stream, "g") == 0

        for _ in range(300):
            if await settled():
                break
            await asyncio.sleep(0.01)
    assert await pending(client, stream, "g") == 0


async def test_pattern_subscriptions_find_streams_and_inject_params(
    client: aredis.Redis, names: Names
) -> None:
    base = names.stream("region")
    eu, us, later = f"{base}.eu", f"{base}.us", f"{base}.apac"
    names.keys += [eu, us, later]
    await client.xadd(eu, entry(1))
    await client.xadd(us, entry(2))
    await client.set(f"{base}.notastream", b"x")
    names.keys.append(f"{base}.notastream")
    got: list[tuple[str, int, str]] = []
    dispatcher = EventDispatcher(
        RedisStreamConsumer(client, group="g", start_id="0", discover_interval=0.1)
    )

    @dispatcher.handler(RedisStreamSubscription(stream=base + ".{region}"))
    async def on_order(event: Event[Order], region: str) -> None:
        got.append((region, event.body.order_id, event.route))

    async with dispatcher:
        await wait_for(lambda: len(got) == 2, "entries of the streams that exist")
        # A stream created after start is found by the next SCAN, from its first entry.
        await client.xadd(later, entry(3))
        await wait_for(lambda: len(got) == 3, "an entry of a stream created later")
    assert sorted(got) == [("apac", 3, later), ("eu", 1, eu), ("us", 2, us)]
    for stream in (eu, us, later):
        assert await pending(client, stream, "g") == 0


async def test_a_stopped_consumer_cannot_restart(client: aredis.Redis, names: Names) -> None:
    consumer = fast(client)
    consumer.subscribe([RedisStreamSubscription(stream=names.stream())])
    await consumer.start()
    await consumer.stop()
    await consumer.close()
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        await consumer.start()
