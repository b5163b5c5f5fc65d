"""AckPolicy.MANUAL on one queue: the prefetch window covers the messages a dispatcher
may hold unsettled, so a handler that settles in batches at ``max_unsettled`` gets there."""

from __future__ import annotations

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from dispytch import Acknowledger, Event, EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.rabbitmq import RabbitMQConsumer, RabbitMQEventRoute, RabbitMQProducer

from .conftest import Names, wait_until

pytestmark = pytest.mark.broker


class Tick(EventBase):
    __event_type__ = "tick"
    n: int


async def test_a_batch_settled_at_max_unsettled_is_reached_on_one_queue(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    ch = await amqp.channel()
    queue = await ch.declare_queue(names.queue("ticks"), durable=True)
    held: list[Acknowledger] = []
    seen: list[int] = []
    acked: list[int] = []
    batches: list[int] = []
    dispatcher = EventDispatcher(
        RabbitMQConsumer(queue), max_in_flight=4, max_unsettled=10, ack_policy="manual"
    )

    @dispatcher.handler(topic=queue.name)
    async def on_tick(event: Event[Tick], ack: Acknowledger) -> None:
        held.append(ack)
        seen.append(event.body.n)
        if len(held) == 10:  # settle in batches of max_unsettled
            batch = held[:]
            held.clear()  # before any await: other handlers run meanwhile
            batches.append(len(batch))
            for a in batch:
                await a.ack()
                acked.append(1)

    emitter = EventEmitter(RabbitMQProducer([ch.default_exchange]))
    route = RabbitMQEventRoute(routing_key=queue.name)
    async with dispatcher:
        for n in range(30):
            await emitter.emit(Tick(n=n), route=route)
        await wait_until(lambda: len(acked) == 30, timeout=20)
    assert batches == [10, 10, 10]
    assert sorted(seen) == list(range(30))
    declared = await ch.declare_queue(queue.name, passive=True)
    assert declared.declaration_result.message_count == 0
    assert isinstance(ch, aio_pika.abc.AbstractChannel)
