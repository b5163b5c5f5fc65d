"""``nack(requeue=True, delay=s)`` on RabbitMQ, from standard RabbitMQ: delay queues with
``x-message-ttl`` that dead-letter back to the original queue (no plugin), in both
construction modes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection
from dispytch import Event, EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.errors import RequeueMessage
from dispytch.rabbitmq import RabbitMQConsumer, RabbitMQEventRoute, RabbitMQProducer
from dispytch.rabbitmq._delay import bucket_ms
from dispytch.rabbitmq._delay import queue_name as delay_queue_name
from dispytch.transport import Message

from .conftest import AMQP_URL, Names, ready_count, wait_until

pytestmark = pytest.mark.broker


class Job(EventBase):
    __event_type__ = "job"
    n: int


async def _queue(amqp: AbstractRobustConnection, names: Names) -> AbstractQueue:
    ch = await amqp.channel()
    return await ch.declare_queue(names.queue("jobs"), durable=True)


async def _publish(amqp: AbstractRobustConnection, queue: str, body: bytes, **kw: object) -> None:
    ch = await amqp.channel()
    try:
        await ch.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **kw),  # type: ignore[arg-type]
            routing_key=queue,
        )
    finally:
        await ch.close()


@contextlib.asynccontextmanager
async def _consuming(consumer: RabbitMQConsumer) -> AsyncIterator[asyncio.Queue[Message]]:
    """Start ``consumer`` and collect what it yields (stopped and closed afterwards)."""
    got: asyncio.Queue[Message] = asyncio.Queue()
    await consumer.start()

    async def pump() -> None:
        async for m in consumer.listen():
            got.put_nowait(m)

    task = asyncio.create_task(pump())
    try:
        yield got
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 10)
        await consumer.close()


def _cleanup_delay_queues(names: Names, queue: str, *delays: float) -> None:
    for d in delays:
        names.queues.append(delay_queue_name(queue, bucket_ms(d)))


@pytest.fixture(params=["client", "url"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _consumer(mode: str, queue: AbstractQueue) -> RabbitMQConsumer:
    if mode == "client":
        return RabbitMQConsumer(queue)
    return RabbitMQConsumer.from_url(AMQP_URL, queue=queue.name)


async def test_a_delayed_requeue_comes_back_after_its_delay_with_the_next_attempt(
    amqp: AbstractRobustConnection, names: Names, mode: str
) -> None:
    queue = await _queue(amqp, names)
    _cleanup_delay_queues(names, queue.name, 0.6)
    await _publish(amqp, queue.name, b"payload", headers={"tenant": "t1"}, message_id="m-1")
    consumer = _consumer(mode, queue)
    assert consumer.capabilities.delayed_requeue
    async with _consuming(consumer) as got:
        first = await asyncio.wait_for(got.get(), 10)
        assert first.attempt == 1
        nacked = time.monotonic()
        await consumer.nack(first, requeue=True, delay=0.6)
        # Parked in the delay queue, and the original acknowledged: nothing waits in the
        # queue, nothing is held unacknowledged by this consumer.
        assert await ready_count(amqp, queue.name) == 0
        assert await ready_count(amqp, delay_queue_name(queue.name, bucket_ms(0.6))) == 1
        second = await asyncio.wait_for(got.get(), 10)
        assert time.monotonic() - nacked >= 0.6  # never sooner than asked
        assert second.attempt == 2
        assert second.payload == b"payload"
        assert second.headers["tenant"] == "t1"
        assert "dispytch-attempt" not in second.headers
        assert second.metadata["message_id"] == "m-1"
        await consumer.nack(second, requeue=True, delay=0.6)  # a second time: attempt 3
        third = await asyncio.wait_for(got.get(), 10)
        assert third.attempt == 3
        await consumer.nack(third, requeue=True)  # plain requeue on top: attempt 4
        fourth = await asyncio.wait_for(got.get(), 10)
        assert fourth.attempt == 4
        await consumer.ack(fourth)
    assert await ready_count(amqp, queue.name) == 0


async def test_a_dispatcher_requeue_holds_no_slot_while_it_waits(
    amqp: AbstractRobustConnection, names: Names, mode: str
) -> None:
    """With ``max_in_flight=1`` a message asked to come back in 1 s does not keep the
    next one from being handled meanwhile: the broker holds it, not a handler slot."""
    ch = await amqp.channel()
    exchange = await ch.declare_exchange(names.exchange("jobs"), aio_pika.ExchangeType.TOPIC)
    queue = await _queue(amqp, names)
    await queue.bind(exchange, routing_key="job.#")
    _cleanup_delay_queues(names, queue.name, 1.0)
    handled: list[tuple[int, int, float]] = []
    dispatcher = EventDispatcher(
        _consumer(mode, queue), max_in_flight=1, requeue_delay=1.0, max_requeue_delay=1.0
    )

    @dispatcher.handler(topic="job.#")
    async def on_job(event: Event[Job]) -> None:
        handled.append((event.body.n, event.attempt, time.monotonic()))
        if event.body.n == 1 and event.attempt == 1:
            raise RequeueMessage("not yet")

    emitter = EventEmitter(RabbitMQProducer([exchange]))
    route = RabbitMQEventRoute(exchange=exchange.name, routing_key="job.new")
    await dispatcher.start()
    try:
        await emitter.emit(Job(n=1), route=route)
        await wait_until(lambda: len(handled) == 1)
        await emitter.emit(Job(n=2), route=route)
        await wait_until(lambda: len(handled) == 3, 15)
    finally:
        await dispatcher.stop(timeout=5)
    (n1, a1, t1), (n2, a2, t2), (n3, a3, t3) = handled
    assert (n1, a1) == (1, 1)
    assert (n2, a2) == (2, 1)  # handled while job 1 waited
    assert t2 - t1 < 1.0
    assert (n3, a3) == (1, 2)  # back with its route ('job.new', not the queue's name)
    assert t3 - t1 >= 1.0
    assert dispatcher.stats["requeued"] == 1


async def test_a_delay_queue_deleted_by_another_client_is_declared_again(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    queue = await _queue(amqp, names)
    _cleanup_delay_queues(names, queue.name, 0.2)
    delay_queue = delay_queue_name(queue.name, bucket_ms(0.2))
    for body in (b"a", b"b"):
        await _publish(amqp, queue.name, body)
    consumer = RabbitMQConsumer(queue)
    async with _consuming(consumer) as got:
        a = await asyncio.wait_for(got.get(), 10)
        await consumer.nack(a, requeue=True, delay=0.2)
        assert (await asyncio.wait_for(got.get(), 10)).payload == b"b"
        a_again = await asyncio.wait_for(got.get(), 10)
        assert (a_again.payload, a_again.attempt) == (b"a", 2)
        other = await amqp.channel()
        await other.queue_delete(delay_queue)  # the consumer still thinks it exists
        await other.close()
        await consumer.nack(a_again, requeue=True, delay=0.2)  # returned, declared, sent
        a_third = await asyncio.wait_for(got.get(), 10)
        assert (a_third.payload, a_third.attempt) == (b"a", 3)
        await consumer.ack(a_third)


async def test_a_copy_that_cannot_be_parked_is_requeued_after_the_delay(
    amqp: AbstractRobustConnection, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    """Another client declared the delay queue's name with other arguments, so the
    declaration fails: the delivery is requeued the plain way once the delay has passed,
    with a WARNING, and nothing is lost."""
    queue = await _queue(amqp, names)
    _cleanup_delay_queues(names, queue.name, 0.5)
    ch = await amqp.channel()
    await ch.declare_queue(delay_queue_name(queue.name, bucket_ms(0.5)), durable=True)
    await _publish(amqp, queue.name, b"x")
    consumer = RabbitMQConsumer(queue)
    async with _consuming(consumer) as got:
        first = await asyncio.wait_for(got.get(), 10)
        nacked = time.monotonic()
        await consumer.nack(first, requeue=True, delay=0.5)
        again = await asyncio.wait_for(got.get(), 10)
        assert time.monotonic() - nacked >= 0.5
        assert (again.payload, again.attempt) == (b"x", 2)
        await consumer.ack(again)
    assert "Could not park the delivery" in caplog.text
    assert "PRECONDITION_FAILED" in caplog.text
    assert not queue.channel.is_closed  # the failed declaration closed a channel of its own


async def test_delayed_requeue_off_waits_in_the_process(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    queue = await _queue(amqp, names)
    await _publish(amqp, queue.name, b"x")
    consumer = RabbitMQConsumer(queue, delayed_requeue=False)
    assert not consumer.capabilities.delayed_requeue
    async with _consuming(consumer) as got:
        first = await asyncio.wait_for(got.get(), 10)
        nacked = time.monotonic()
        await consumer.nack(first, requeue=True, delay=0.3)
        assert time.monotonic() - nacked >= 0.3
        again = await asyncio.wait_for(got.get(), 10)
        assert (again.payload, again.attempt) == (b"x", 2)
        await consumer.ack(again)
    ch = await amqp.channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await ch.declare_queue(delay_queue_name(queue.name, bucket_ms(0.3)), passive=True)
