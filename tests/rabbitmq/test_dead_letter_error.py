"""A delivery the failure policy rejects reaches the queue's dead-letter exchange with the
real error in its headers (``basic.reject`` alone cannot carry it)."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from dispytch import Event, EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.rabbitmq import RabbitMQConsumer, RabbitMQEventRoute, RabbitMQProducer
from dispytch.transport import (
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_ROUTE,
)

from .conftest import AMQP_URL, Names, wait_until
from .rawamqp import RawPublisher

pytestmark = pytest.mark.broker


class Order(EventBase):
    __event_type__ = "order"
    n: int


async def _setup(
    amqp: AbstractRobustConnection, names: Names, *, dlx_exists: bool
) -> tuple[aio_pika.abc.AbstractExchange, aio_pika.abc.AbstractQueue, aio_pika.abc.AbstractQueue]:
    ch = await amqp.channel()
    exchange = await ch.declare_exchange(names.exchange("orders"), aio_pika.ExchangeType.TOPIC)
    dlx_name = names.exchange("dlx")
    dlq = await ch.declare_queue(names.queue("dlq"), durable=True)
    if dlx_exists:
        dlx = await ch.declare_exchange(dlx_name, aio_pika.ExchangeType.FANOUT)
        await dlq.bind(dlx)
    queue = await ch.declare_queue(
        names.queue("orders"), durable=True, arguments={"x-dead-letter-exchange": dlx_name}
    )
    await queue.bind(exchange, routing_key="order.#")
    return exchange, queue, dlq


async def _run(
    exchange: aio_pika.abc.AbstractExchange, queue: aio_pika.abc.AbstractQueue, ns: list[int]
) -> tuple[EventDispatcher, list[int]]:
    handled: list[int] = []
    dispatcher = EventDispatcher(RabbitMQConsumer(queue))

    @dispatcher.handler(topic="order.#")
    async def on_order(event: Event[Order]) -> None:
        if event.body.n < 0:
            raise ValueError(f"order {event.body.n} cannot be priced")
        handled.append(event.body.n)

    emitter = EventEmitter(RabbitMQProducer([exchange]))
    await dispatcher.start()
    for n in ns:
        await emitter.emit(
            Order(n=n), route=RabbitMQEventRoute(exchange=exchange.name, routing_key="order.new")
        )
    return dispatcher, handled


async def test_the_dead_letter_carries_the_handler_s_error(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    exchange, queue, dlq = await _setup(amqp, names, dlx_exists=True)
    dispatcher, handled = await _run(exchange, queue, [1, -2, 3])
    try:
        await wait_until(lambda: handled == [1, 3] and dispatcher.stats["rejected"] == 1)
    finally:
        await dispatcher.stop(timeout=5)
    dead = await dlq.get(fail=False, timeout=5)
    assert dead is not None
    await dead.ack()
    assert Order.model_validate_json(dead.body).n == -2
    headers = dead.headers
    assert headers[HEADER_ERROR_TYPE] == "builtins.ValueError"
    assert headers[HEADER_ERROR_MESSAGE] == "order -2 cannot be priced"
    assert headers[HEADER_ORIGINAL_ROUTE] == "order.new"
    assert headers[HEADER_DEAD_LETTERED_AT]
    assert dead.type == "order"  # the original's properties travel
    assert await dlq.get(fail=False, timeout=1) is None  # one dead letter, not two
    # The original was acknowledged, not left in (or rejected back to) its queue.
    declared = await queue.channel.declare_queue(queue.name, passive=True)
    assert declared.declaration_result.message_count == 0


async def test_a_missing_dead_letter_exchange_falls_back_to_basic_reject(
    amqp: AbstractRobustConnection, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    exchange, queue, dlq = await _setup(amqp, names, dlx_exists=False)
    dispatcher, handled = await _run(exchange, queue, [-1, 2, -3, 4])
    try:
        # The failed publish to a missing exchange closes only the dead-letter channel:
        # the consumer goes on handling (and keeps trying for the next rejection).
        await wait_until(
            lambda: handled == [2, 4] and dispatcher.stats["rejected"] == 2, timeout=30
        )
        assert dispatcher.running
    finally:
        await dispatcher.stop(timeout=5)
    assert "rejecting it with basic.reject" in caplog.text
    await asyncio.sleep(0)
    declared = await queue.channel.declare_queue(queue.name, passive=True)
    assert declared.declaration_result.message_count == 0  # rejected, not requeued


async def test_header_values_that_are_not_utf8_travel_to_the_dead_letter(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    """A delivery another client sent with a header value that is not UTF-8 is
    dead-lettered with its error and those very bytes (pamqp cannot re-encode them as
    the long string they came as: they go as a byte array)."""
    exchange, queue, dlq = await _setup(amqp, names, dlx_exists=True)
    bad = b"\xff\xfe-not-utf8"
    dispatcher, handled = await _run(exchange, queue, [])
    try:
        async with RawPublisher(AMQP_URL) as raw:
            await raw.publish(
                "order.new",
                Order(n=-5).model_dump_json().encode(),
                exchange=exchange.name,
                properties={"content_type": "application/json", "message_type": "order"},
                headers={"tenant": bad},
            )
        await wait_until(lambda: dispatcher.stats["rejected"] == 1)
    finally:
        await dispatcher.stop(timeout=5)
    dead = await dlq.get(fail=False, timeout=5)
    assert dead is not None
    await dead.ack()
    assert Order.model_validate_json(dead.body).n == -5
    assert bytes(dead.headers["tenant"]) == bad  # type: ignore[arg-type]
    assert dead.headers[HEADER_ERROR_TYPE] == "builtins.ValueError"
    assert dead.headers[HEADER_ERROR_MESSAGE] == "order -5 cannot be priced"
    assert await dlq.get(fail=False, timeout=1) is None  # one dead letter, not two
    assert handled == []


async def test_rejections_in_a_row_to_a_missing_dead_letter_exchange_lose_no_connection(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    """Rejections one after another, each publish to the missing exchange closing the
    dead-letter channel while the next may be on its way: the connection the deliveries
    came on survives (nothing is redelivered or counted twice), every one ends rejected."""
    exchange, queue, _ = await _setup(amqp, names, dlx_exists=False)
    ns = [-n if n % 2 else n for n in range(1, 61)]
    seen: list[tuple[int, int]] = []
    dispatcher = EventDispatcher(RabbitMQConsumer(queue))

    @dispatcher.handler(topic="order.#")
    async def on_order(event: Event[Order]) -> None:
        seen.append((event.body.n, event.attempt))
        if event.body.n < 0:
            raise ValueError(f"order {event.body.n} cannot be priced")

    emitter = EventEmitter(RabbitMQProducer([exchange]))
    route = RabbitMQEventRoute(exchange=exchange.name, routing_key="order.new")
    await dispatcher.start()
    try:
        for n in ns:
            await emitter.emit(Order(n=n), route=route)
        await wait_until(lambda: dispatcher.stats["rejected"] >= 30 and len(seen) >= 60, 30)
        await asyncio.sleep(0.5)  # what a lost connection would redeliver arrives by then
    finally:
        await dispatcher.stop(timeout=5)
    assert sorted(n for n, _ in seen) == sorted(ns)  # each handled once: nothing came back
    assert {attempt for _, attempt in seen} == {1}
    assert dispatcher.stats["rejected"] == 30
    assert not amqp.is_closed
    declared = await queue.channel.declare_queue(queue.name, passive=True)
    assert declared.declaration_result.message_count == 0
