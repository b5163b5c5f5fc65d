"""Request/reply across processes: the caller here, the handlers in a child process
(``tests/request_reply_child.py``), over a real RabbitMQ (direct reply-to)."""

from __future__ import annotations

import uuid

import aio_pika
import pytest
from dispytch import EventEmitter
from dispytch.cqrs import NoRouteError
from dispytch.rabbitmq import RabbitMQEventRoute, RabbitMQProducer

from tests.request_reply_child import Lookup, check_round_trips, responder, with_options

from .conftest import AMQP_URL

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_caller_and_handler_in_two_processes() -> None:
    queue = f"rr.proc.{uuid.uuid4().hex[:10]}"
    route = RabbitMQEventRoute(routing_key=queue)  # the default exchange: the queue by name
    try:
        async with (
            responder(
                with_options(AMQP_URL, queue=queue),
                "dispytch.rabbitmq:RabbitMQEventSubscription",
                f"queue={queue}",
            ) as proc,
            EventEmitter(RabbitMQProducer.from_url(AMQP_URL)) as emitter,
        ):
            producer = emitter.producer
            assert isinstance(producer, RabbitMQProducer)
            # One reply address for all of them: direct reply-to consumed on one channel.
            await check_round_trips(
                emitter, route, proc.pid, lambda: tuple(producer._reply_consumers) or None
            )
            assert len(producer._reply_consumers) == 1

            with pytest.raises(NoRouteError):
                await emitter.request(
                    Lookup(n=1), route=RabbitMQEventRoute(routing_key=f"{queue}.none"), timeout=60
                )
    finally:
        conn = await aio_pika.connect(AMQP_URL)
        try:
            ch = await conn.channel()
            await ch.queue_delete(queue, if_unused=False, if_empty=False)
        finally:
            await conn.close()
