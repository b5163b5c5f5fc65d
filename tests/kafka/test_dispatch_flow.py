"""The dispatcher's flow control over Kafka end to end: fair lanes (a slow partition with a
backlog does not stall a fast one) and the ``AckPolicy.MANUAL`` bound (Tansu)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest
from dispytch.dispatcher import AckPolicy, EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.event import Event, EventBase
from dispytch.kafka import KafkaConsumer, KafkaEventRoute, KafkaEventSubscription, KafkaProducer
from dispytch.transport import Acknowledger

from .harness import FAST_GROUP
from .helpers import committed, create_topic
from .test_consumer import group

pytestmark = pytest.mark.broker


class Rec(EventBase):
    __event_type__ = "rec"
    part: int
    n: int


async def emit(bootstrap: str, topic: str, part: int, count: int) -> None:
    route = KafkaEventRoute(topic=topic, partition=part)
    async with EventEmitter(KafkaProducer.from_url(f"kafka://{bootstrap}")) as em:
        await em.producer.send_batch(
            [em.build(Rec(part=part, n=n), route=route) for n in range(count)]
        )


class Watched(KafkaConsumer):
    """Records the lanes the dispatcher paused (to see the consumer's pausing is used)."""

    paused_lanes: list[Hashable]

    def pause(self, lane: Hashable) -> None:
        self.__dict__.setdefault("paused_lanes", []).append(lane)
        super().pause(lane)


async def test_a_slow_partition_with_a_backlog_does_not_stall_a_fast_one(
    kafka_bootstrap: str, topic: str
) -> None:
    """The issue's measurement: 2 partitions, default dispatcher settings; 2,000 records on
    A whose handler takes 50 ms, 300 on B whose handler is instant. B is handled completely
    while A has handled under a quarter of its backlog; order is kept in both."""
    await create_topic(kafka_bootstrap, topic, 2)
    await emit(kafka_bootstrap, topic, 0, 2000)
    await emit(kafka_bootstrap, topic, 1, 300)
    handled: dict[int, list[int]] = {0: [], 1: []}
    a_when_b_done: list[int] = []
    b_done = asyncio.Event()
    consumer = Watched.from_url(f"kafka://{kafka_bootstrap}", group_id=group(), **FAST_GROUP)
    dispatcher = EventDispatcher(consumer, stop_timeout=2.0)

    @dispatcher.handler(KafkaEventSubscription(topic=topic))
    async def on_rec(event: Event[Rec]) -> None:
        if event.body.part == 0:
            await asyncio.sleep(0.05)
        handled[event.body.part].append(event.body.n)
        if event.body.part == 1 and len(handled[1]) == 300:
            a_when_b_done.append(len(handled[0]))
            b_done.set()

    async with dispatcher:
        await asyncio.wait_for(b_done.wait(), 60)
    assert handled[1] == list(range(300))
    assert a_when_b_done[0] < 500, f"A handled {a_when_b_done[0]} of 2000 before B finished"
    assert handled[0] == list(range(len(handled[0])))
    assert (topic, 0) in consumer.paused_lanes  # the full lane was paused in aiokafka


async def test_manual_ack_is_bounded_and_settling_later_resumes(
    kafka_bootstrap: str, new_topic: str
) -> None:
    """1,000 records whose handlers never settle them: reading pauses at the dispatcher's
    ``max_unsettled`` bound (nothing is committed meanwhile); settling them later resumes
    reading, and then everything is handled and committed."""
    await emit(kafka_bootstrap, new_topic, 0, 1000)
    gid = group()
    held: list[Acknowledger] = []
    dispatcher = EventDispatcher(
        KafkaConsumer.from_url(
            f"kafka://{kafka_bootstrap}", group_id=gid, commit_interval=0.0, **FAST_GROUP
        ),
        ack_policy=AckPolicy.MANUAL,
        max_in_flight=8,
        max_unsettled=50,
    )
    # What the dispatcher documents: at most max_unsettled - 1 + max_in_flight held.
    bound = dispatcher.max_unsettled - 1 + dispatcher.max_in_flight

    @dispatcher.handler(KafkaEventSubscription(topic=new_topic))
    async def on_rec(event: Event[Rec], ack: Acknowledger) -> None:
        held.append(ack)

    async with dispatcher:
        async with asyncio.timeout(30):
            while len(held) < dispatcher.max_unsettled:
                await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # reading would go on here if it were not bounded
        assert len(held) <= bound
        assert dispatcher.unsettled <= bound
        assert await committed(kafka_bootstrap, gid, new_topic) == [None]  # nothing settled
        settled = 0
        async with asyncio.timeout(60):
            while settled < 1000:
                while settled < len(held):
                    await held[settled].ack()
                    settled += 1
                await asyncio.sleep(0.005)
                assert len(held) - settled <= bound
        assert len(held) == 1000  # each record once: nothing redelivered, nothing lost
        async with asyncio.timeout(30):
            while (await committed(kafka_bootstrap, gid, new_topic)) != [1000]:
                await asyncio.sleep(0.2)
