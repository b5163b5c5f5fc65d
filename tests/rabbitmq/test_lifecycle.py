"""Dead consumers end the dispatcher, prefetch follows max_in_flight, stop is bounded
with the broker unreachable (a loopback TCP proxy stands between client and broker), and
pausing a lane stops the broker sending that queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from dispytch import Event, EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.errors import ConsumerClosedError, NotStartedError
from dispytch.rabbitmq import (
    RabbitMQConsumer,
    RabbitMQEventRoute,
    RabbitMQEventSubscription,
    RabbitMQProducer,
)
from dispytch.transport import LanePausing, OutgoingMessage, ReadAhead
from yarl import URL

from .conftest import AMQP_URL, Names, ready_count, wait_until
from .proxy import Proxy

pytestmark = pytest.mark.broker


class Item(EventBase):
    __event_type__ = "item"
    i: int


def test_the_consumer_implements_the_core_protocols() -> None:
    consumer = RabbitMQConsumer.from_url(AMQP_URL, queue="q")
    assert isinstance(consumer, LanePausing)
    assert isinstance(consumer, ReadAhead)


async def publish(queue: str, n: int) -> None:
    async with RabbitMQProducer.from_url(AMQP_URL) as producer:
        route = RabbitMQEventRoute(routing_key=queue)
        await producer.send_batch(
            [OutgoingMessage(route, f'{{"i": {i}}}'.encode(), {}) for i in range(n)]
        )


# --------------------------------------------------------------- dead consumers
@pytest.mark.parametrize("how", ["channel closed", "queue deleted"])
async def test_a_dead_consumer_stops_the_dispatcher(names: Names, how: str) -> None:
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        queue = await ch.declare_queue(names.queue("dead"), durable=True)
        dispatcher = EventDispatcher(RabbitMQConsumer(queue))

        @dispatcher.handler(RabbitMQEventSubscription(queue=queue.name))
        async def on_item(event: Event[Item]) -> None: ...

        await dispatcher.start()
        assert dispatcher.running
        if how == "channel closed":
            await ch.close()
        else:
            other = await conn.channel()
            await other.queue_delete(queue.name, if_unused=False, if_empty=False)
            await other.close()
        with pytest.raises(ConsumerClosedError):
            await asyncio.wait_for(dispatcher.wait(), 15)
        assert not dispatcher.running
        await dispatcher.stop()
    finally:
        await conn.close()


async def test_a_robust_channel_closed_by_its_user_ends_listen(names: Names) -> None:
    """A robust channel reopens after an outage, but not after its user closed it."""
    conn = await aio_pika.connect_robust(AMQP_URL)
    try:
        ch = await conn.channel()
        queue = await ch.declare_queue(names.queue("robustclose"), durable=True)
        consumer = RabbitMQConsumer(queue)
        await consumer.start()
        listening = asyncio.ensure_future(anext(consumer.listen()))
        await asyncio.sleep(0)
        await ch.close()
        with pytest.raises(ConsumerClosedError, match="nothing reopens it"):
            await asyncio.wait_for(listening, 10)
        await consumer.close()
    finally:
        await conn.close()


# --------------------------------------------------------------- back-pressure
async def test_taken_but_unhandled_stays_bounded_by_the_prefetch(names: Names) -> None:
    """max_in_flight=8, 1 s handlers, 200 queued: the broker never has more than the
    prefetch (8) delivered and unacknowledged, so nothing piles up in the process."""
    q_name = names.queue("bound")
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()  # a plain channel, no QoS: the consumer sets it
        queue = await ch.declare_queue(q_name, durable=True)
        await publish(q_name, 200)
        consumer = RabbitMQConsumer(queue)
        dispatcher = EventDispatcher(consumer, max_in_flight=8)
        done: list[int] = []

        @dispatcher.handler(RabbitMQEventSubscription(queue=q_name))
        async def slow(event: Event[Item]) -> None:
            await asyncio.sleep(1)
            done.append(event.body.i)

        worst = 0
        async with dispatcher:
            assert consumer.prefetch_count == 8
            for _ in range(6):  # bounded: about 3 s of sampling
                await asyncio.sleep(0.5)
                taken = 200 - await ready_count(conn, q_name) - len(done)
                worst = max(worst, taken)
        assert done, "nothing was handled"
        assert worst <= 8, f"{worst} messages taken and not handled (prefetch 8)"
    finally:
        await conn.close()


async def test_the_dispatcher_sizes_the_prefetch(names: Names) -> None:
    q_name = names.queue("sized")
    consumer = RabbitMQConsumer.from_url(AMQP_URL, queue=q_name)
    dispatcher = EventDispatcher(consumer, max_in_flight=8)

    @dispatcher.handler(RabbitMQEventSubscription(queue=q_name))
    async def on_item(event: Event[Item]) -> None: ...

    async with dispatcher:
        assert consumer.prefetch_count == 8


# --------------------------------------------------------------- bounded stop
@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    async with Proxy() as p:
        yield p


@pytest.mark.parametrize("outage", ["frozen", "killed"])
async def test_stop_is_bounded_with_the_broker_unreachable(
    names: Names, proxy: Proxy, outage: str
) -> None:
    q_name = names.queue("unreachable")
    await publish_direct(q_name, 5)
    consumer = RabbitMQConsumer.from_url(proxy.url, queue=q_name)
    dispatcher = EventDispatcher(consumer, max_in_flight=4)
    started = asyncio.Event()

    @dispatcher.handler(RabbitMQEventSubscription(queue=q_name))
    async def stuck(event: Event[Item]) -> None:
        started.set()
        await asyncio.sleep(60)

    await dispatcher.start()
    await asyncio.wait_for(started.wait(), 10)
    if outage == "frozen":
        proxy.frozen.set()
    else:
        await proxy.kill()
    # The stop deadline is a deadline: timeout + 1 s at most, broker or no broker.
    await asyncio.wait_for(dispatcher.stop(timeout=5), 6)
    assert not dispatcher.running
    await proxy.kill()
    conn = await aio_pika.connect(AMQP_URL)
    try:  # nothing lost: the broker requeues what the lost connection held
        ready = 0
        for _ in range(100):  # at most 10 s
            ready = await ready_count(conn, q_name)
            if ready == 5:
                break
            await asyncio.sleep(0.1)
        assert ready == 5
    finally:
        await conn.close()


async def publish_direct(queue: str, n: int) -> None:
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True)
    finally:
        await conn.close()
    await publish(queue, n)


# --------------------------------------------------------------- pausing a lane
async def test_pausing_a_lane_stops_the_broker_sending_that_queue(names: Names) -> None:
    a, b = names.queue("lane-a"), names.queue("lane-b")
    await publish_direct(a, 0)
    await publish_direct(b, 0)
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        qa, qb = await ch.get_queue(a), await ch.get_queue(b)
        consumer = RabbitMQConsumer(qa, qb, prefetch_count=10, ordered=True)
        async with consumer, EventEmitter(RabbitMQProducer([ch.default_exchange])) as emitter:
            consumer.pause(a)
            consumer.pause(a)  # idempotent
            await wait_until(lambda: a not in consumer._consuming)
            for i in range(3):
                await emitter.emit(Item(i=i), route=RabbitMQEventRoute(routing_key=a))
                await emitter.emit(Item(i=i), route=RabbitMQEventRoute(routing_key=b))
            got = []
            async for msg in consumer.listen():
                got.append(msg)
                await consumer.ack(msg)
                if len(got) == 3:
                    break
            assert {m.lane for m in got} == {b}
            assert await ready_count(conn, a) == 3  # held by the broker, not by us
            consumer.resume(a)
            async for msg in consumer.listen():
                got.append(msg)
                await consumer.ack(msg)
                if len(got) == 6:
                    break
            assert [m.lane for m in got[3:]] == [a, a, a]
    finally:
        await conn.close()


@pytest.mark.parametrize("robust", [False, True], ids=["plain", "robust"])
async def test_a_connection_never_opened_is_not_started(robust: bool) -> None:
    cls = aio_pika.RobustConnection if robust else aio_pika.Connection
    connection = cls(URL(AMQP_URL))  # made, never connected
    emitter = EventEmitter(RabbitMQProducer(connection))
    with pytest.raises(NotStartedError, match=r"cannot open a channel(?s:.*)connect\(\)"):
        await emitter.emit(Item(i=1), route=RabbitMQEventRoute(routing_key="never.delivered"))


# --------------------------------------------------------------- robust channel restore
async def _channel_error(ch: aio_pika.abc.AbstractChannel, names: Names) -> None:
    """A channel error, as a user's own code on that channel may cause one: a passive
    declaration of a queue that does not exist (the broker closes the channel, the
    connection stays up and the robust channel restores itself)."""
    missing = f"test.missing.{names.queue('never')[-10:]}"
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await ch.declare_queue(missing, passive=True)


async def test_a_robust_channel_restored_after_a_channel_error_consumes_again(
    amqp: aio_pika.abc.AbstractRobustConnection, names: Names
) -> None:
    ch = await amqp.channel()
    queue = await ch.declare_queue(names.queue("restored"), durable=True)
    handled: list[int] = []
    dispatcher = EventDispatcher(RabbitMQConsumer(queue))

    @dispatcher.handler(RabbitMQEventSubscription(queue=queue.name))
    async def on_item(event: Event[Item]) -> None:
        handled.append(event.body.i)

    await dispatcher.start()
    try:
        await publish(queue.name, 1)
        await wait_until(lambda: handled == [0])
        await _channel_error(ch, names)
        await publish(queue.name, 3)
        await wait_until(lambda: sorted(handled) == [0, 0, 1, 2], 15)
        assert dispatcher.running
    finally:
        await dispatcher.stop(timeout=5)


async def test_a_robust_channel_that_cannot_be_restored_ends_the_dispatcher(
    amqp: aio_pika.abc.AbstractRobustConnection, names: Names
) -> None:
    """The channel closes (a channel error) after another service re-created the exchange
    this channel declared with another type: every re-declaration the restore makes is
    refused (PRECONDITION_FAILED) while the connection stays up. The consumer retries,
    then ends: the dispatcher stops, ``wait()`` raises, ``running`` is false."""
    ch = await amqp.channel()
    exchange = await ch.declare_exchange(names.exchange("orders"), aio_pika.ExchangeType.TOPIC)
    queue = await ch.declare_queue(names.queue("unrestorable"), durable=True)
    await queue.bind(exchange, routing_key="#")
    dispatcher = EventDispatcher(RabbitMQConsumer(queue))

    @dispatcher.handler(RabbitMQEventSubscription(queue=queue.name))
    async def on_item(event: Event[Item]) -> None: ...

    await dispatcher.start()
    try:
        other = await aio_pika.connect(AMQP_URL)  # another service
        try:
            och = await other.channel()
            await och.exchange_delete(exchange.name)
            await och.declare_exchange(exchange.name, aio_pika.ExchangeType.FANOUT)
        finally:
            await other.close()
        await _channel_error(ch, names)
        with pytest.raises(ConsumerClosedError, match="could not be restored.*PRECONDITION"):
            await asyncio.wait_for(dispatcher.wait(), 40)
        assert not dispatcher.running
        assert not amqp.is_closed  # the connection was up throughout
    finally:
        await dispatcher.stop(timeout=5)


async def test_a_long_outage_of_the_connection_is_not_a_failed_restore(names: Names) -> None:
    """The connection is lost and stays lost longer than the restore retries last (about
    13 s): a reconnecting robust connection is not "up", so no restore attempt counts and
    the consumer stays alive, waiting for the reconnection."""
    setup = await aio_pika.connect(AMQP_URL)
    try:
        await (await setup.channel()).declare_queue(names.queue("outage"), durable=True)
    finally:
        await setup.close()
    async with Proxy() as proxy:
        conn = await aio_pika.connect_robust(proxy.url)
        try:
            ch = await conn.channel()
            queue = await ch.declare_queue(names.queues[-1], durable=True)
            dispatcher = EventDispatcher(RabbitMQConsumer(queue))

            @dispatcher.handler(RabbitMQEventSubscription(queue=queue.name))
            async def on_item(event: Event[Item]) -> None: ...

            await dispatcher.start()
            waiting = asyncio.ensure_future(dispatcher.wait())
            await proxy.kill()  # the broker is unreachable from now on
            await asyncio.sleep(16)
            assert dispatcher.running
            assert not waiting.done()
            await dispatcher.stop(timeout=2)
            await asyncio.wait_for(waiting, 10)
        finally:
            await asyncio.wait_for(conn.close(), 10)
