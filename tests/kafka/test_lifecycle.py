"""Lane pausing, restarts over the user's client, fatal errors and bounded stops (Tansu)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from dispytch.dispatcher import EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.errors import ConsumerClosedError, EmitError
from dispytch.event import Event
from dispytch.kafka import (
    KafkaConsumer,
    KafkaEventRoute,
    KafkaEventSubscription,
    KafkaMessage,
    KafkaProducer,
    _compat,
)
from dispytch.transport import LanePausing

from .harness import FAST_GROUP
from .helpers import HOST, committed, create_topic, free_port, start_tansu
from .test_consumer import Item, emit_items, group, publish

pytestmark = pytest.mark.broker

T = 30.0


async def _next(it: object) -> KafkaMessage:
    msg = await asyncio.wait_for(it.__anext__(), T)  # type: ignore[attr-defined]
    assert isinstance(msg, KafkaMessage)
    return msg


async def test_paused_partition_yields_nothing_until_resumed(
    kafka_bootstrap: str, topic: str
) -> None:
    """Records of a paused partition already fetched are not yielded; after resume they
    come again, in order, once each, and the commits count every record."""
    await create_topic(kafka_bootstrap, topic, 2)
    await publish(kafka_bootstrap, topic, [b"a%d" % i for i in range(60)], partition=0)
    await publish(kafka_bootstrap, topic, [b"b%d" % i for i in range(60)], partition=1)
    gid = group()
    c = KafkaConsumer.from_url(
        f"kafka://{kafka_bootstrap}", group_id=gid, commit_interval=0.0, **FAST_GROUP
    )
    assert isinstance(c, LanePausing) and c.capabilities.pause_lanes
    c.subscribe([KafkaEventSubscription(topic=topic)])
    await c.start()
    a, b = TopicPartition(topic, 0), TopicPartition(topic, 1)
    seen: dict[int, list[int]] = {0: [], 1: []}
    it = c.listen().__aiter__()
    try:
        while not seen[0]:  # up to the first record of partition A
            msg = await _next(it)
            seen[msg.record.partition].append(msg.record.offset)
            await c.ack(msg)
        c.pause(a)
        c.pause((topic, 0))  # idempotent, and a (topic, partition) pair is a lane too
        assert c.paused() == {a}
        while len(seen[1]) < 60:
            msg = await _next(it)
            assert msg.lane == b, "a record of the paused partition was yielded"
            seen[1].append(msg.record.offset)
            await c.ack(msg)
        assert len(seen[0]) == 1
        c.resume(a)
        c.resume(a)
        while len(seen[0]) < 60:
            msg = await _next(it)
            assert msg.lane == a
            seen[0].append(msg.record.offset)
            await c.ack(msg)
        assert seen[0] == list(range(60)) and seen[1] == list(range(60))
    finally:
        await c.stop()
        await c.close()
    assert await committed(kafka_bootstrap, gid, topic, 2) == [60, 60]


async def test_restart_over_the_users_consumer_loses_nothing(kafka_bootstrap: str) -> None:
    """The issue's scenario: one partition, 200 records, a 10 ms handler, the user's own
    started AIOKafkaConsumer (auto-commit off); a dispatcher over it is stopped mid-run with
    a short stop_timeout (in-flight records handed back), then new dispatchers over new
    KafkaConsumer(raw) run on: every record is handled."""
    topic = f"t-{uuid.uuid4().hex[:12]}"
    await create_topic(kafka_bootstrap, topic, 1)
    await emit_items(kafka_bootstrap, topic, range(200))
    raw = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    await raw.start()
    got: list[int] = []
    try:
        for stop_at in (40, 90, 140, 200):
            dispatcher = EventDispatcher(KafkaConsumer(raw), stop_timeout=0.05)

            @dispatcher.handler(KafkaEventSubscription(topic=topic))
            async def on_item(event: Event[Item]) -> None:
                await asyncio.sleep(0.01)
                got.append(event.body.n)

            await dispatcher.start()
            async with asyncio.timeout(T):
                while len(set(got)) < stop_at:
                    await asyncio.sleep(0.005)
            await dispatcher.stop()
            assert not _compat.client_closed(raw)  # the user's client stays open
    finally:
        await raw.stop()
    assert set(got) == set(range(200)), f"lost: {sorted(set(range(200)) - set(got))}"


async def test_nack_after_stop_still_rewinds_a_users_client(
    kafka_bootstrap: str, topic: str
) -> None:
    """What a dispatcher hands back after ``stop()`` (before ``close()``) is delivered again
    by the next consumer over the same client."""
    await create_topic(kafka_bootstrap, topic, 1)
    await publish(kafka_bootstrap, topic, [b"%d" % i for i in range(20)])
    raw = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    await raw.start()
    try:
        c = KafkaConsumer(raw, commit_interval=0.0)
        c.subscribe([KafkaEventSubscription(topic=topic)])
        await c.start()
        it = c.listen().__aiter__()
        first = [await _next(it) for _ in range(5)]
        for m in first[:2]:
            await c.ack(m)
        await c.stop()
        for m in first[2:]:
            await c.nack(m, requeue=True)
        await c.close()
        again = KafkaConsumer(raw)
        again.subscribe([KafkaEventSubscription(topic=topic)])
        await again.start()
        it = again.listen().__aiter__()
        offsets = [(await _next(it)).record.offset for _ in range(18)]
        await again.stop()
        await again.close()
    finally:
        await raw.stop()
    assert offsets == list(range(2, 20))


async def test_users_client_stopped_under_the_consumer_is_fatal(
    kafka_bootstrap: str, new_topic: str
) -> None:
    raw = AIOKafkaConsumer(
        new_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group(),
        enable_auto_commit=False,
        **FAST_GROUP,
    )
    await raw.start()
    c = KafkaConsumer(raw, poll_timeout=0.2)
    c.subscribe([KafkaEventSubscription(topic=new_topic)])
    await c.start()

    async def drain() -> None:
        async for _ in c.listen():
            pass

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.3)
    await raw.stop()
    with pytest.raises(ConsumerClosedError, match="was stopped while Dispytch was consuming"):
        await asyncio.wait_for(task, T)
    await c.close()


async def test_stop_is_bounded_while_the_broker_is_down() -> None:
    """``dispatcher.stop(timeout=5)`` with the broker gone returns within the timeout plus
    a second (a liveness bound), although the final commit and disconnect cannot finish."""
    port = free_port()
    proc = start_tansu(port)
    bootstrap = f"{HOST}:{port}"
    try:
        topic = f"t-{uuid.uuid4().hex[:12]}"
        await create_topic(bootstrap, topic, 1)
        got: list[int] = []
        dispatcher = EventDispatcher(
            KafkaConsumer.from_url(
                f"kafka://{bootstrap}", group_id=group(), commit_interval=5.0, **FAST_GROUP
            )
        )

        @dispatcher.handler(KafkaEventSubscription(topic=topic))
        async def on_item(event: Event[Item]) -> None:
            got.append(event.body.n)

        await dispatcher.start()
        await emit_items(bootstrap, topic, range(10))
        async with asyncio.timeout(T):
            while len(got) < 10:
                await asyncio.sleep(0.02)
    finally:
        proc.kill()
        proc.wait(5)
    async with asyncio.timeout(5 + 1):
        await dispatcher.stop(timeout=5)
    assert not dispatcher.running


async def test_owned_producer_stop_is_bounded_while_the_broker_is_down() -> None:
    """An emit waiting on a broker that went away does not hang ``emitter.stop()`` past
    the producer's ``close_timeout``; the emit itself ends in an error, not a success."""
    port = free_port()
    proc = start_tansu(port)
    bootstrap = f"{HOST}:{port}"
    topic = f"t-{uuid.uuid4().hex[:12]}"
    try:
        await create_topic(bootstrap, topic, 1)
        emitter = EventEmitter(
            KafkaProducer.from_url(f"kafka://{bootstrap}", close_timeout=1, request_timeout_ms=8000)
        )
        await emitter.start()
        await emitter.emit(Item(n=1), route=KafkaEventRoute(topic=topic))
    finally:
        proc.kill()
        proc.wait(5)
    pending = asyncio.create_task(emitter.emit(Item(n=2), route=KafkaEventRoute(topic=topic)))
    await asyncio.sleep(0.2)
    async with asyncio.timeout(1 + 1):
        await emitter.stop()
    with pytest.raises(EmitError):
        await asyncio.wait_for(pending, T)


async def test_dispatcher_ends_visibly_when_the_users_client_is_stopped(
    kafka_bootstrap: str, new_topic: str
) -> None:
    raw = AIOKafkaConsumer(
        new_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group(),
        enable_auto_commit=False,
        **FAST_GROUP,
    )
    await raw.start()
    dispatcher = EventDispatcher(KafkaConsumer(raw, poll_timeout=0.2))

    @dispatcher.handler(KafkaEventSubscription(topic=new_topic))
    async def on_item(event: Event[Item]) -> None: ...

    await dispatcher.start()
    await asyncio.sleep(0.3)
    await raw.stop()
    with pytest.raises(ConsumerClosedError):
        await asyncio.wait_for(dispatcher.wait(), T)
    assert not dispatcher.running
