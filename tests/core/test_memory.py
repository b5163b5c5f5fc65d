"""The embedded memory transport: groups, competing consumers, parking, redelivery,
and the lifecycle the dispatcher relies on."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from dispytch import NotStartedError, OutgoingMessage, TopicRoute, TopicSubscription
from dispytch.memory import (
    MemoryBroker,
    MemoryConsumer,
    MemoryProducer,
    consumer_from_url,
    producer_from_url,
)
from dispytch.transport import Message


def out(topic: str, payload: bytes = b"{}", key: bytes | None = None) -> OutgoingMessage:
    return OutgoingMessage(TopicRoute(topic=topic), payload, {"h": "v"}, key)


async def take(consumer: MemoryConsumer, n: int) -> list[Message]:
    got: list[Message] = []

    async def run() -> None:
        async for msg in consumer.listen():
            got.append(msg)
            if len(got) == n:
                return

    await asyncio.wait_for(run(), 5)
    return got


async def started(broker: MemoryBroker, topic: str, group: str) -> MemoryConsumer:
    c = MemoryConsumer(broker, group=group)
    c.subscribe([TopicSubscription(topic=topic)])
    await c.start()
    return c


async def test_every_group_gets_a_copy_and_members_share() -> None:
    broker = MemoryBroker("t-groups")
    p = MemoryProducer(broker)
    await p.start()
    a1 = await started(broker, "orders.*", "a")
    a2 = await started(broker, "orders.*", "a")
    b = await started(broker, "orders.eu", "b")
    for i in range(4):
        await p.send(out("orders.eu", str(i).encode(), key=b"k"))
    got_b = await take(b, 4)
    got_a = [*(await take(a1, 2)), *(await take(a2, 2))]
    assert [m.payload for m in got_b] == [b"0", b"1", b"2", b"3"]
    assert sorted(m.payload for m in got_a) == [b"0", b"1", b"2", b"3"]
    m = got_b[0]
    assert (m.route, m.key, dict(m.headers), m.attempt) == ("orders.eu", b"k", {"h": "v"}, 1)
    assert m.metadata == {"group": "b"}
    assert broker.published == 4
    assert broker.pending("a") == 4 and broker.pending("b") == 4  # delivered, unsettled
    for msg in got_a:
        await a1.ack(msg)  # any member may settle the group's messages
    assert broker.pending("a") == 0


async def test_messages_wait_until_a_group_subscribes() -> None:
    broker = MemoryBroker("t-park")
    p = MemoryProducer(broker)
    await p.start()
    await p.send(out("late.topic"))
    c = await started(broker, "late.*", "g")
    [msg] = await take(c, 1)
    assert msg.route == "late.topic"


async def test_nack_requeue_redelivers_with_a_higher_attempt_and_reject_is_kept() -> None:
    broker = MemoryBroker("t-nack")
    p = MemoryProducer(broker)
    await p.start()
    c = await started(broker, "t", "g")
    await p.send(out("t", b"1"))
    [first] = await take(c, 1)
    await c.nack(first, requeue=True)
    [again] = await take(c, 1)
    assert again.payload == b"1" and again.attempt == 2
    await c.nack(again, requeue=False)
    assert broker.rejected == [again]
    # Settling twice is harmless.
    await c.ack(again)
    await c.nack(again, requeue=True)
    assert broker.pending("g") == 0 and broker.rejected == [again]


async def test_close_hands_back_what_was_not_settled() -> None:
    broker = MemoryBroker("t-close")
    p = MemoryProducer(broker)
    await p.start()
    c = await started(broker, "t", "g")
    await p.send(out("t", b"1"))
    await p.send(out("t", b"2"))
    one, two = await take(c, 2)
    await c.ack(one)
    await c.close()
    c2 = await started(broker, "t", "g")
    [back] = await take(c2, 1)
    assert back.payload == b"2" and back.attempt == 2


async def test_stop_ends_a_waiting_listen_promptly() -> None:
    broker = MemoryBroker("t-stop")
    c = await started(broker, "t", "g")
    seen: list[Message] = []

    async def run() -> None:
        async for msg in c.listen():
            seen.append(msg)

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    await c.stop()
    await asyncio.wait_for(task, 5)
    assert seen == []


async def test_not_started_clients_raise() -> None:
    broker = MemoryBroker("t-ns")
    with pytest.raises(NotStartedError, match="memory producer is not started"):
        await MemoryProducer(broker).send(out("t"))
    c = MemoryConsumer(broker)
    with pytest.raises(NotStartedError, match=r"call start\(\) first"):
        await anext(c.listen())


async def test_routes_without_a_topic_are_refused() -> None:
    from dataclasses import dataclass

    from dispytch import EventRoute

    @dataclass(frozen=True, kw_only=True)
    class Elsewhere(EventRoute):
        queue: str

    p = MemoryProducer(MemoryBroker("t-route"))
    await p.start()
    with pytest.raises(TypeError, match=r"publishes to topics; .* has none"):
        await p.send(OutgoingMessage(Elsewhere(queue="q"), b"{}", {}))


def test_urls_name_brokers_and_groups() -> None:
    p = producer_from_url("memory://shop")
    c = consumer_from_url("memory://shop?group=billing")
    assert p.broker is c.broker is MemoryBroker.named("shop")
    assert c._group.name == "billing"
    assert producer_from_url("memory://").broker is MemoryBroker.named()


# -- bounds --------------------------------------------------------------------------------


def test_parked_messages_are_bounded_oldest_dropped_first() -> None:
    broker = MemoryBroker(uuid.uuid4().hex, max_parked=3)
    for i in range(5):
        broker.publish(f"nobody.{i % 2}", str(i).encode(), {}, None)
    assert broker.parked == 3 and broker.parked_dropped == 2
    kept = [m.payload for m in broker._parked]
    assert sorted(kept) == [b"2", b"3", b"4"]


async def test_rejected_keeps_the_last_max_rejected() -> None:
    broker = MemoryBroker(uuid.uuid4().hex, max_rejected=2)
    consumer = MemoryConsumer(broker, group="g")
    consumer.subscribe([TopicSubscription(topic="t")])
    await consumer.start()
    for i in range(4):
        broker.publish("t", str(i).encode(), {}, None)
    messages = consumer.listen()
    for _ in range(4):
        await consumer.nack(await anext(messages), requeue=False)
    await consumer.close()
    assert [m.payload for m in broker.rejected] == [b"2", b"3"]
    assert broker.rejected_dropped == 2


def test_route_cache_is_bounded() -> None:
    from dispytch.memory import ROUTE_CACHE_LIMIT

    broker = MemoryBroker(uuid.uuid4().hex, max_parked=0)
    for i in range(ROUTE_CACHE_LIMIT + 10):
        broker.publish(f"dynamic.{i}", b"", {}, None)
    assert len(broker._route_cache) <= ROUTE_CACHE_LIMIT
    assert broker.parked == 0 and broker.parked_dropped == ROUTE_CACHE_LIMIT + 10
