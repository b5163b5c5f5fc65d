"""The RabbitMQ transport against the real broker: exchange types, settling, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika import ExchangeType
from aio_pika.abc import AbstractRobustConnection
from dispytch import EmitError, Event, EventBase, EventEmitter, NotStartedError, TopicRoute
from dispytch.dispatcher import EventDispatcher
from dispytch.errors import ConsumerClosedError
from dispytch.rabbitmq import (
    RabbitMQConsumer,
    RabbitMQEventRoute,
    RabbitMQEventSubscription,
    RabbitMQExchange,
    RabbitMQProducer,
    _compat,
)
from dispytch.routes import TopicSubscription
from dispytch.transport import Message, OutgoingMessage

from .conftest import AMQP_URL, Names, ready_count, wait_until

pytestmark = pytest.mark.broker


class UserEvent(EventBase):
    __event_type__ = "user_event"
    user_id: str
    value: int


class OrderEvent(EventBase):
    region: str
    user_id: int


class Alert(EventBase):
    level: str


def outgoing(
    route: Any, payload: bytes = b'{"user_id": "u", "value": 1}', **headers: str
) -> OutgoingMessage:
    return OutgoingMessage(route, payload, dict(headers))


async def collect(
    consumer: RabbitMQConsumer, count: int, timeout: float = 10.0, *, ack: bool = False
) -> list[Message]:
    """Take ``count`` messages from ``listen()`` (unsettled unless ``ack``)."""
    got: list[Message] = []

    async def take() -> None:
        async for msg in consumer.listen():
            got.append(msg)
            if ack:
                await consumer.ack(msg)
            if len(got) >= count:
                return

    await asyncio.wait_for(take(), timeout)
    return got


@pytest.fixture
async def channel(amqp: AbstractRobustConnection) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    ch = await amqp.channel()
    yield ch
    await ch.close()


# --------------------------------------------------------------- exchange types
async def test_direct_exchange_round_trip_over_user_objects(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    """The seed's way: RabbitMQProducer([exchange]) and RabbitMQConsumer(queue)."""
    ex_name, q_name = names.exchange("user.events"), names.queue()
    exchange = await channel.declare_exchange(ex_name, ExchangeType.DIRECT, durable=True)
    queue = await channel.declare_queue(q_name, durable=True)
    await queue.bind(exchange, routing_key="user.email-changed")

    route = RabbitMQEventRoute(exchange=ex_name, routing_key="user.email-changed")
    got: list[tuple[str, int]] = []
    dispatcher = EventDispatcher(RabbitMQConsumer(queue, prefetch_count=10))

    @dispatcher.handler(
        RabbitMQEventSubscription(exchange=ex_name, routing_key="user.email-changed")
    )
    async def on_user(event: Event[UserEvent]) -> None:
        got.append((event.body.user_id, event.body.value))

    async with dispatcher, EventEmitter(RabbitMQProducer([exchange])) as emitter:
        for i in range(3):
            await emitter.emit(UserEvent(user_id=f"u{i}", value=i), route=route)
        await wait_until(lambda: len(got) == 3)
    assert sorted(got) == [("u0", 0), ("u1", 1), ("u2", 2)]
    assert dispatcher.stats["handled"] == 3
    assert await ready_count_on(channel, q_name) == 0


async def ready_count_on(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """Ready messages in ``queue`` (aio-pika caches declarations: ask the broker directly)."""
    raw = await channel.get_underlay_channel()
    ok = await raw.queue_declare(queue, passive=True)
    assert ok.message_count is not None
    return ok.message_count


async def test_topic_exchange_named_segments_and_wildcards(names: Names) -> None:
    """Dynamic routing keys out, ``{param}``/``*``/``#`` patterns in, params injected."""
    ex_name = names.exchange("orders")
    q_name = names.queue("orders")

    route = RabbitMQEventRoute(exchange=ex_name, routing_key="orders.{region}.{user_id}")

    by_param: list[tuple[str, int]] = []
    wildcard: list[str] = []
    hashed: list[str] = []
    consumer = RabbitMQConsumer.from_url(
        AMQP_URL, queue=q_name, declare=[RabbitMQExchange(name=ex_name, type="topic")]
    )
    dispatcher = EventDispatcher(consumer)

    @dispatcher.handler(
        RabbitMQEventSubscription(exchange=ex_name, routing_key="orders.{region}.{user_id}")
    )
    async def on_order(event: Event[OrderEvent], region: str, user_id: int) -> None:
        by_param.append((region, user_id))

    @dispatcher.handler(RabbitMQEventSubscription(exchange=ex_name, routing_key="orders.eu.*"))
    async def on_eu(event: Event[OrderEvent]) -> None:
        wildcard.append(event.route)

    @dispatcher.handler(RabbitMQEventSubscription(exchange=ex_name, routing_key="audit.#"))
    async def on_audit(message: Message) -> None:
        hashed.append(message.route)

    async with dispatcher, EventEmitter(RabbitMQProducer.from_url(AMQP_URL)) as emitter:
        await emitter.emit(OrderEvent(region="eu", user_id=7), route=route)
        await emitter.emit(OrderEvent(region="us", user_id=8), route=route)
        audit = RabbitMQEventRoute(exchange=ex_name, routing_key="audit.a.b.c")
        await emitter.producer.send(outgoing(audit))
        await wait_until(lambda: len(by_param) == 2 and len(wildcard) == 1 and len(hashed) == 1)
    assert sorted(by_param) == [("eu", 7), ("us", 8)]
    assert wildcard == ["orders.eu.7"]
    assert hashed == ["audit.a.b.c"]


async def test_fanout_exchange_every_queue_gets_a_copy(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    ex_name = names.exchange("fan")
    exchange = await channel.declare_exchange(ex_name, ExchangeType.FANOUT, durable=True)
    queues = []
    for _ in range(2):
        q = await channel.declare_queue(names.queue("fan"), durable=True)
        await q.bind(exchange)
        queues.append(q)
    consumer = RabbitMQConsumer(*queues, prefetch_count=5)
    consumer.subscribe([RabbitMQEventSubscription(exchange=ex_name)])
    async with RabbitMQProducer([exchange]) as producer, consumer:
        await producer.send(outgoing(RabbitMQEventRoute(exchange=ex_name, routing_key="ignored")))
        msgs = await collect(consumer, 2)
        for m in msgs:
            await consumer.ack(m)
    assert sorted(m.metadata["queue"] for m in msgs) == sorted(q.name for q in queues)
    assert {m.metadata["exchange"] for m in msgs} == {ex_name}
    assert {m.route for m in msgs} == {"ignored"}


async def test_headers_exchange_routes_on_route_headers(names: Names) -> None:
    ex_name = names.exchange("hdr")
    eu, us = names.queue("eu"), names.queue("us")

    route = RabbitMQEventRoute(exchange=ex_name, headers={"region": "eu"})

    eu_got: list[str] = []
    consumer = RabbitMQConsumer.from_url(
        AMQP_URL, queue=us, declare=[RabbitMQExchange(name=ex_name, type="headers")]
    )
    dispatcher = EventDispatcher(consumer)

    @dispatcher.handler(
        RabbitMQEventSubscription(
            exchange=ex_name, queue=eu, binding_arguments={"x-match": "all", "region": "eu"}
        )
    )
    async def on_eu(event: Event[Alert]) -> None:
        eu_got.append(event.body.level)

    @dispatcher.handler(
        RabbitMQEventSubscription(
            exchange=ex_name, queue=us, binding_arguments={"x-match": "all", "region": "us"}
        )
    )
    async def on_us(event: Event[Alert]) -> None:
        raise AssertionError("an eu alert reached the us queue")

    async with dispatcher, EventEmitter(RabbitMQProducer.from_url(AMQP_URL)) as emitter:
        await emitter.emit(Alert(level="critical"), route=route)
        await wait_until(lambda: bool(eu_got))
    assert eu_got == ["critical"]
    assert dispatcher.stats["failed_handlers"] == 0


async def test_topic_route_and_subscription_use_amq_topic(names: Names) -> None:
    """Transport-neutral routes work on RabbitMQ: topic = routing key on amq.topic."""
    q_name = names.queue("neutral")
    topic = f"{q_name}.created"
    got: list[str] = []
    dispatcher = EventDispatcher(RabbitMQConsumer.from_url(AMQP_URL, queue=q_name))

    @dispatcher.handler(topic=f"{q_name}.{{action}}")
    async def on_any(event: Event[UserEvent], action: str) -> None:
        got.append(action)

    async with dispatcher, EventEmitter(RabbitMQProducer.from_url(AMQP_URL)) as emitter:
        await emitter.emit(UserEvent(user_id="a", value=1), route=TopicRoute(topic=topic))
        await wait_until(lambda: bool(got))
    assert got == ["created"]


async def test_dotted_exchange_names_and_default_exchange(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    ex_name = names.exchange("a.b.c.events")
    exchange = await channel.declare_exchange(ex_name, ExchangeType.TOPIC, durable=True)
    q1 = await channel.declare_queue(names.queue("dotted"), durable=True)
    await q1.bind(exchange, routing_key="#")
    q2 = await channel.declare_queue(names.queue("direct.by.name"), durable=True)
    consumer = RabbitMQConsumer(q1, q2, prefetch_count=5)
    producer = RabbitMQProducer([exchange, channel.default_exchange])
    async with producer, consumer:
        await producer.send(outgoing(RabbitMQEventRoute(exchange=ex_name, routing_key="x.y")))
        await producer.send(outgoing(RabbitMQEventRoute(exchange="", routing_key=q2.name)))
        msgs = await collect(consumer, 2)
        for m in msgs:
            await consumer.ack(m)
    by_queue = {m.metadata["queue"]: m for m in msgs}
    assert by_queue[q1.name].metadata["exchange"] == ex_name
    assert by_queue[q1.name].route == "x.y"
    assert by_queue[q2.name].metadata["exchange"] == ""
    assert by_queue[q2.name].route == q2.name


# --------------------------------------------------------------- message details
async def test_headers_key_persistence_and_metadata(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    q = await channel.declare_queue(names.queue("props"), durable=True)
    consumer = RabbitMQConsumer(q, prefetch_count=5)
    producer = RabbitMQProducer([channel.default_exchange])
    message = OutgoingMessage(
        RabbitMQEventRoute(routing_key=q.name, priority=3),
        b"{}",
        {"dispytch-content-type": "application/json", "dispytch-event-id": "e1", "a": "b"},
        key=b"\x00\xffkey",
    )
    async with producer, consumer:
        await producer.send(message)
        (msg,) = await collect(consumer, 1)
        delivered = msg.token.delivered
        await consumer.ack(msg)
    assert msg.key == b"\x00\xffkey"
    assert msg.headers == {
        "dispytch-content-type": "application/json",
        "dispytch-event-id": "e1",
        "a": "b",
    }
    assert msg.attempt == 1
    assert msg.lane is None
    assert msg.metadata["message_id"] == "e1"
    assert msg.metadata["redelivered"] is False
    props = delivered.header.properties
    assert props.delivery_mode == 2  # persistent by default
    assert props.content_type == "application/json"
    assert props.priority == 3


async def test_transient_delivery_when_asked(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    q = await channel.declare_queue(names.queue("transient"), durable=True)
    consumer = RabbitMQConsumer(q, prefetch_count=5)
    producer = RabbitMQProducer([channel.default_exchange], persistent=False)
    async with producer, consumer:
        await producer.send(outgoing(RabbitMQEventRoute(routing_key=q.name)))
        await producer.send(outgoing(RabbitMQEventRoute(routing_key=q.name, persistent=True)))
        msgs = await collect(consumer, 2)
        modes = [m.token.delivered.header.properties.delivery_mode for m in msgs]
        for m in msgs:
            await consumer.ack(m)
    assert sorted(modes) == [1, 2]


async def test_ordered_consumer_sets_the_queue_as_lane(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    q = await channel.declare_queue(names.queue("lane"), durable=True)
    consumer = RabbitMQConsumer(q, prefetch_count=5, ordered=True)
    async with RabbitMQProducer([channel.default_exchange]) as producer, consumer:
        await producer.send(outgoing(RabbitMQEventRoute(routing_key=q.name)))
        (msg,) = await collect(consumer, 1)
        await consumer.ack(msg)
    assert msg.lane == q.name


# --------------------------------------------------------------- settling
async def test_nack_requeue_redelivers_with_attempt_2(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    q = await channel.declare_queue(names.queue("requeue"), durable=True)
    consumer = RabbitMQConsumer(q, prefetch_count=5)
    async with RabbitMQProducer([channel.default_exchange]) as producer, consumer:
        await producer.send(outgoing(RabbitMQEventRoute(routing_key=q.name)))
        (first,) = await collect(consumer, 1)
        await consumer.nack(first, requeue=True)
        (second,) = await collect(consumer, 1)
        await consumer.ack(second)
        await consumer.ack(second)  # settling twice is harmless (no channel error)
    assert first.attempt == 1
    assert second.attempt == 2
    assert second.metadata["redelivered"] is True
    assert second.payload == first.payload
    assert await ready_count_on(channel, q.name) == 0


async def test_quorum_queue_attempt_from_delivery_count(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    q = await channel.declare_queue(
        names.queue("quorum"), durable=True, arguments={"x-queue-type": "quorum"}
    )
    consumer = RabbitMQConsumer(q, prefetch_count=5)
    async with RabbitMQProducer([channel.default_exchange]) as producer, consumer:
        await producer.send(outgoing(RabbitMQEventRoute(routing_key=q.name)))
        attempts = []
        for _ in range(3):
            (msg,) = await collect(consumer, 1)
            attempts.append(msg.attempt)
            await consumer.nack(msg, requeue=True)
        (msg,) = await collect(consumer, 1)
        await consumer.ack(msg)
    assert attempts == [1, 2, 3]
    assert msg.attempt == 4
    assert "x-delivery-count" in msg.headers


async def test_reject_goes_to_the_queue_dead_letter_exchange(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    """nack(requeue=False) of a failed delivery: the queue's DLX gets it, with the error
    (published by the consumer, confirmed, then the original acknowledged)."""
    dlx_name = names.exchange("dlx")
    dlx = await channel.declare_exchange(dlx_name, ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(names.queue("dlq"), durable=True)
    await dlq.bind(dlx)
    work = await channel.declare_queue(
        names.queue("work"), durable=True, arguments={"x-dead-letter-exchange": dlx_name}
    )
    dispatcher = EventDispatcher(RabbitMQConsumer(work, prefetch_count=5))

    @dispatcher.handler(RabbitMQEventSubscription(queue=work.name))
    async def always_fails(event: Event[UserEvent]) -> None:
        raise ValueError("bad user")

    dead = RabbitMQConsumer(dlq, prefetch_count=5)
    producer = RabbitMQProducer([channel.default_exchange])
    async with dispatcher, producer, dead:
        await EventEmitter(producer).emit(
            UserEvent(user_id="x", value=1), route=RabbitMQEventRoute(routing_key=work.name)
        )
        (msg,) = await collect(dead, 1)
        await dead.ack(msg)
    assert dispatcher.stats["rejected"] == 1
    assert msg.metadata["queue"] == dlq.name
    assert msg.route == work.name
    assert msg.headers["dispytch-error-type"] == "builtins.ValueError"
    assert msg.headers["dispytch-error-message"] == "bad user"
    assert msg.headers["x-first-death-reason"] == "rejected"
    assert msg.headers["x-first-death-queue"] == work.name
    assert b'"user_id":"x"' in msg.payload


async def test_prefetch_bounds_what_is_delivered(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    """With prefetch 5 and nothing acknowledged, 5 are handed over and 45 stay queued."""
    q_name = names.queue("prefetch")
    consumer = RabbitMQConsumer.from_url(AMQP_URL, queue=q_name, prefetch_count=5)
    consumer.subscribe([RabbitMQEventSubscription(queue=q_name)])
    async with RabbitMQProducer.from_url(AMQP_URL) as producer, consumer:
        await producer.send_batch(
            [outgoing(RabbitMQEventRoute(routing_key=q_name)) for _ in range(50)]
        )
        held = await collect(consumer, 5)
        # Let the broker show what it holds back: ready = 50 - prefetch.
        await wait_until(lambda: consumer._handoff.qsize() == 0)
        assert await ready_count(amqp, q_name) == 45
        for m in held:
            await consumer.ack(m)
        rest = await collect(consumer, 45, ack=True)
    assert len({m.token.delivery_tag for m in held + rest}) == 50


async def test_close_hands_unsettled_deliveries_back(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    q_name = names.queue("close")
    sub = RabbitMQEventSubscription(queue=q_name)
    first = RabbitMQConsumer.from_url(AMQP_URL, queue=q_name, prefetch_count=10)
    first.subscribe([sub])
    async with RabbitMQProducer.from_url(AMQP_URL) as producer:
        await first.start()
        await producer.send_batch(
            [outgoing(RabbitMQEventRoute(routing_key=q_name)) for _ in range(3)]
        )
        taken = await collect(first, 1)
        await first.close()  # one taken and unsettled, two in the handoff or unsent
    second = RabbitMQConsumer.from_url(AMQP_URL, queue=q_name, prefetch_count=10)
    second.subscribe([sub])
    async with second:
        again = await collect(second, 3)
        for m in again:
            await second.ack(m)
    assert taken[0].attempt == 1
    assert any(m.attempt == 2 for m in again)
    assert await ready_count(amqp, q_name) == 0


async def test_stop_ends_a_blocked_listen(names: Names) -> None:
    q_name = names.queue("idle")
    consumer = RabbitMQConsumer.from_url(AMQP_URL, queue=q_name)
    consumer.subscribe([RabbitMQEventSubscription(queue=q_name)])
    await consumer.start()
    seen: list[Message] = []

    async def run() -> None:
        async for m in consumer.listen():
            seen.append(m)

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    await consumer.stop()
    await asyncio.wait_for(task, 5)
    await consumer.close()
    assert seen == []


# --------------------------------------------------------------- errors
async def test_user_producer_needs_no_start_and_refuses_when_closed_or_stopped(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    """Over the user's open channel the producer is usable at once (the seed's way); a
    stopped producer, a closed channel and an unstarted URL producer raise."""
    ch = await amqp.channel()
    q = await ch.declare_queue(names.queue("nostart"), durable=True)
    producer = RabbitMQProducer([ch.default_exchange])
    route = RabbitMQEventRoute(routing_key=q.name)
    await producer.send(outgoing(route))  # no start()
    assert await ready_count_on(ch, q.name) == 1
    await producer.stop()
    with pytest.raises(NotStartedError, match="(?s)was stopped.*producer.start"):
        await producer.send(outgoing(route))
    await producer.start()
    await producer.send(outgoing(route))
    await ch.close()
    with pytest.raises(NotStartedError, match="(?s)channel .* is closed.*new RabbitMQProducer"):
        await producer.send(outgoing(route))
    fresh = RabbitMQProducer([ch.default_exchange])
    with pytest.raises(NotStartedError, match="is closed"):
        await EventEmitter(fresh).emit(UserEvent(user_id="a", value=1), route=route)
    url_producer = RabbitMQProducer.from_url(AMQP_URL)
    with pytest.raises(NotStartedError, match="(?s)not started.*emitter.start"):
        await url_producer.send_batch([outgoing(route)])
    emitter = EventEmitter(url_producer)
    with pytest.raises(NotStartedError, match="not started"):
        await emitter.emit(UserEvent(user_id="a", value=1), route=route)


async def test_producer_over_a_user_connection_opens_and_closes_its_own_channel(
    names: Names,
) -> None:
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(names.queue("overconn"), durable=True)
        producer = RabbitMQProducer(conn)
        await producer.send(outgoing(RabbitMQEventRoute(routing_key=q.name)))  # no start()
        await producer.stop()
        assert not conn.is_closed  # not its connection
        assert await ready_count_on(ch, q.name) == 1
    finally:
        await conn.close()
    with pytest.raises(NotStartedError, match="connection .* is closed"):
        await RabbitMQProducer(conn).send(outgoing(RabbitMQEventRoute(routing_key="x")))


async def test_listen_before_start_raises() -> None:
    consumer = RabbitMQConsumer.from_url(AMQP_URL, queue="never-started")
    with pytest.raises(NotStartedError, match="not started"):
        await anext(consumer.listen())


async def test_unknown_exchange_is_a_clear_error(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    exchange = await channel.declare_exchange(names.exchange("known"), ExchangeType.DIRECT)
    async with RabbitMQProducer([exchange]) as producer:
        with pytest.raises(EmitError, match="does not know the exchange 'other'.*known"):
            await producer.send(outgoing(RabbitMQEventRoute(exchange="other", routing_key="k")))
        with pytest.raises(EmitError, match="default_exchange"):
            await producer.send(outgoing(RabbitMQEventRoute(routing_key="k")))
        with pytest.raises(EmitError, match="does not know the exchange 'amq.topic'"):
            await producer.send(outgoing(TopicRoute(topic="t")))
    async with RabbitMQProducer.from_url(AMQP_URL) as producer:
        missing = names.exchange("missing")
        with pytest.raises(EmitError, match=f"(?s)exchange '{missing}' does not exist.*declare="):
            await producer.send(outgoing(RabbitMQEventRoute(exchange=missing, routing_key="k")))
        # The producer still works afterwards.
        ok_q = await channel.declare_queue(names.queue("after"), durable=True)
        await producer.send(outgoing(RabbitMQEventRoute(routing_key=ok_q.name)))
        assert await ready_count_on(channel, ok_q.name) == 1


async def test_unroutable_message_is_an_error(names: Names) -> None:
    ex_name = names.exchange("unbound")
    async with RabbitMQProducer.from_url(
        AMQP_URL, declare=[RabbitMQExchange(name=ex_name, type="direct")]
    ) as producer:
        with pytest.raises(EmitError, match="could not route.*no queue is bound"):
            await producer.send(outgoing(RabbitMQEventRoute(exchange=ex_name, routing_key="k")))
        with pytest.raises(EmitError, match="could not route"):
            await producer.send_batch(
                [outgoing(RabbitMQEventRoute(exchange=ex_name, routing_key="k"))] * 3
            )


async def test_unroutable_on_a_user_channel_without_on_return_raises(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    exchange = await channel.declare_exchange(names.exchange("ret"), ExchangeType.DIRECT)
    async with RabbitMQProducer([exchange]) as producer:
        with pytest.raises(EmitError, match="could not route"):
            await producer.send(outgoing(RabbitMQEventRoute(exchange=exchange.name)))


async def test_unconfirmed_channel_is_refused(amqp: AbstractRobustConnection, names: Names) -> None:
    ch = await amqp.channel(publisher_confirms=False)
    producer = RabbitMQProducer([ch.default_exchange])
    with pytest.raises(ValueError, match="(?s)publisher confirms off.*publisher_confirms=True"):
        await producer.start()
    await ch.close()


async def test_declaring_an_existing_exchange_differently_fails_clearly(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    ex_name = names.exchange("clash")
    await channel.declare_exchange(ex_name, ExchangeType.FANOUT, durable=True)
    producer = RabbitMQProducer.from_url(
        AMQP_URL, declare=[RabbitMQExchange(name=ex_name, type="topic")]
    )
    with pytest.raises(ValueError, match="already exists with other settings"):
        await producer.start()


async def test_consumer_errors_are_clear(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    q = await channel.declare_queue(names.queue("mine"), durable=True)
    consumer = RabbitMQConsumer(q)
    with pytest.raises(ValueError, match="(?s)consumes the queue 'other'.*Pass that queue"):
        consumer.subscribe([RabbitMQEventSubscription(queue="other")])
    with pytest.raises(TypeError, match="(?s)cannot consume.*RabbitMQEventSubscription"):
        consumer.subscribe([object()])  # type: ignore[list-item]
    no_queue = RabbitMQConsumer.from_url(AMQP_URL)
    with pytest.raises(ValueError, match="(?s)names no queue.*queue='my-service'"):
        no_queue.subscribe([TopicSubscription(topic="t")])
    missing = names.exchange("nope")
    bad = RabbitMQConsumer.from_url(AMQP_URL, queue=names.queue("bad"))
    bad.subscribe([RabbitMQEventSubscription(exchange=missing)])
    with pytest.raises(ValueError, match=f"(?s)exchange '{missing}' does not exist.*declare="):
        await bad.start()
    clash_q = names.queue("clash")
    await channel.declare_queue(clash_q, durable=True, arguments={"x-max-length": 5})
    clash = RabbitMQConsumer.from_url(AMQP_URL, queue=clash_q)
    clash.subscribe([RabbitMQEventSubscription()])
    with pytest.raises(ValueError, match="(?s)exists with other settings.*queue_arguments"):
        await clash.start()


async def test_unreachable_broker_is_a_clear_error() -> None:
    producer = RabbitMQProducer.from_url("amqp://guest:secret@127.0.0.1:1/", connect_timeout=2)
    with pytest.raises(
        ConnectionError, match=r"Cannot connect to RabbitMQ at amqp://guest:\*\*\*@"
    ):
        await producer.start()


async def test_dispytch_headers_travel_as_amqp_properties(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    """Other AMQP clients see content_type, message_id and type; Dispytch gets its
    headers back. A foreign message's properties do not turn into Dispytch headers."""
    q = await channel.declare_queue(names.queue("props"), durable=True)
    consumer = RabbitMQConsumer(q, prefetch_count=5)
    async with EventEmitter(RabbitMQProducer([channel.default_exchange])) as emitter, consumer:
        sent = emitter.build(
            UserEvent(user_id="a", value=1), route=RabbitMQEventRoute(routing_key=q.name)
        )
        await emitter.producer.send(sent)
        await channel.default_exchange.publish(
            aio_pika.Message(
                b"{}", type="foreign.type", message_id="m-1", content_type="text/plain"
            ),
            routing_key=q.name,
        )
        ours, foreign = await collect(consumer, 2, ack=True)
    props = ours.token.delivered.header.properties
    assert props.message_type == "user_event"
    assert props.message_id == sent.headers["dispytch-event-id"]
    assert props.app_id == "dispytch"
    assert ours.headers == sent.headers
    assert "dispytch-event-type" not in props.headers
    assert foreign.headers == {"dispytch-content-type": "text/plain"}


async def test_a_plain_channel_closing_fails_listen_loudly(names: Names) -> None:
    """Over a non-robust channel nothing resumes consuming: listen() says so."""
    conn = await aio_pika.connect(AMQP_URL)
    ch = await conn.channel()
    q = await ch.declare_queue(names.queue("plain"), durable=True)
    consumer = RabbitMQConsumer(q, prefetch_count=5)
    await consumer.start()
    listening = asyncio.ensure_future(anext(consumer.listen()))
    await asyncio.sleep(0)
    await conn.close()
    with pytest.raises(
        ConsumerClosedError, match="(?s)closed and nothing reopens it.*connect_robust"
    ):
        await asyncio.wait_for(listening, 10)
    with pytest.raises(ConsumerClosedError):  # and again: the dispatcher must not wait on it
        await anext(consumer.listen())
    await consumer.close()


async def test_stop_lets_sends_in_progress_be_confirmed(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    q_name = names.queue("drain")
    ch = await amqp.channel()
    await ch.declare_queue(q_name, durable=True)
    await ch.close()
    producer = RabbitMQProducer.from_url(AMQP_URL)
    await producer.start()
    batch = asyncio.create_task(
        producer.send_batch([outgoing(RabbitMQEventRoute(routing_key=q_name))] * 50)
    )

    async def begun() -> None:
        while producer._in_flight < 50:
            await asyncio.sleep(0)  # one loop turn at a time: no confirm can be back yet

    await asyncio.wait_for(begun(), 10)
    await producer.stop()
    await asyncio.wait_for(batch, 10)  # all confirmed, none failed
    assert await ready_count(amqp, q_name) == 50
    with pytest.raises(NotStartedError, match="was stopped"):
        await producer.send(outgoing(RabbitMQEventRoute(routing_key=q_name)))


async def test_from_url_everywhere(names: Names) -> None:
    """EventEmitter.from_url / EventDispatcher.from_url find the plugin by scheme."""
    q_name = names.queue("fromurl")
    got: list[int] = []
    dispatcher = EventDispatcher.from_url(f"{AMQP_URL}?queue={q_name}&prefetch_count=5")

    @dispatcher.handler(topic=f"{q_name}.events")
    async def on_event(event: Event[UserEvent]) -> None:
        got.append(event.body.value)

    async with dispatcher, EventEmitter.from_url(AMQP_URL) as emitter:
        await emitter.emit(
            UserEvent(user_id="a", value=5), route=TopicRoute(topic=f"{q_name}.events")
        )
        await wait_until(lambda: got == [5])
    assert isinstance(dispatcher.consumer, RabbitMQConsumer)
    assert dispatcher.consumer.prefetch_count == 5
    assert isinstance(emitter.producer, RabbitMQProducer)


async def test_a_user_channel_without_qos_gets_the_prefetch(
    channel: aio_pika.abc.AbstractChannel, names: Names
) -> None:
    """No unbounded buffer: a channel without QoS gets prefetch = max_in_flight."""
    q = await channel.declare_queue(names.queue("noqos"), durable=True)
    consumer = RabbitMQConsumer(q)
    consumer.configure(max_in_flight=8)
    async with consumer:
        assert _compat.prefetch_of(channel) == 8


async def test_a_user_channel_prefetch_is_kept_and_a_mismatch_logged(
    channel: aio_pika.abc.AbstractChannel, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    await channel.set_qos(prefetch_count=100)
    q = await channel.declare_queue(names.queue("qos"), durable=True)
    consumer = RabbitMQConsumer(q)
    consumer.configure(max_in_flight=8)
    async with consumer:
        assert _compat.prefetch_of(channel) == 100
    assert "prefetch_count=100 and the dispatcher max_in_flight=8" in caplog.text


async def test_a_deleted_queue_fails_listen_loudly(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    q_name = names.queue("deleted")
    consumer = RabbitMQConsumer.from_url(AMQP_URL, queue=q_name, prefetch_count=5)
    consumer.subscribe([RabbitMQEventSubscription(queue=q_name)])
    async with consumer:
        listening = asyncio.ensure_future(anext(consumer.listen()))
        ch = await amqp.channel()
        await ch.queue_delete(q_name, if_unused=False, if_empty=False)
        await ch.close()
        with pytest.raises(
            ConsumerClosedError, match=f"cancelled the consumer of queue '{q_name}'"
        ):
            await asyncio.wait_for(listening, 10)
