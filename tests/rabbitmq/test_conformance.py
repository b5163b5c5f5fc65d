"""The transport conformance suite against a real RabbitMQ broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from dispytch.patterns import RoutePattern
from dispytch.rabbitmq import (
    RabbitMQConsumer,
    RabbitMQEventRoute,
    RabbitMQEventSubscription,
    RabbitMQProducer,
)
from dispytch.routes import EventRoute, EventSubscription
from dispytch.testing import TransportHarness
from dispytch.testing.conformance import TransportConformance
from dispytch.transport import Consumer, Producer

from .conftest import AMQP_URL

pytestmark = pytest.mark.broker


class RabbitMQHarness(TransportHarness):
    """Each case publishes to its own topic exchange; a consumer group is a queue."""

    name = "rabbitmq"
    redelivery_timeout = 10.0

    def __init__(self) -> None:
        self.exchange = f"conf.{uuid.uuid4().hex[:10]}"
        self._queues: set[str] = set()
        self._conn: aio_pika.abc.AbstractRobustConnection | None = None

    def queue_name(self, group: str) -> str:
        name = f"conf.{group}.{self.exchange[-10:]}"
        self._queues.add(name)
        return name

    async def _connection(self) -> aio_pika.abc.AbstractRobustConnection:
        if self._conn is None:
            self._conn = await aio_pika.connect_robust(AMQP_URL)
            ch = await self._conn.channel()
            await ch.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            await ch.close()
        return self._conn

    async def prepare(self, name: str, *, group: str) -> None:
        conn = await self._connection()
        ch = await conn.channel()
        q = await ch.declare_queue(self.queue_name(group), durable=True)
        await q.bind(self.exchange, routing_key=RoutePattern(name).amqp)
        await ch.close()

    def route(self, name: str) -> EventRoute:
        return RabbitMQEventRoute(exchange=self.exchange, routing_key=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        return RabbitMQEventSubscription(exchange=self.exchange, routing_key=name)

    def producer(self) -> Producer:
        return RabbitMQProducer.from_url(AMQP_URL, timeout=10)

    def consumer(self, *, group: str) -> Consumer:
        return RabbitMQConsumer.from_url(AMQP_URL, queue=self.queue_name(group), prefetch_count=50)

    async def cleanup(self) -> None:
        conn = await self._connection()
        for q in self._queues:
            ch = await conn.channel()
            await ch.queue_delete(q, if_unused=False, if_empty=False)
            await ch.close()
        ch = await conn.channel()
        await ch.exchange_delete(self.exchange)
        await ch.close()
        await conn.close()


class TestRabbitMQTransport(TransportConformance):
    timeout = 15.0

    @pytest.fixture
    async def harness(self) -> AsyncIterator[RabbitMQHarness]:
        h = RabbitMQHarness()
        yield h
        await h.cleanup()
