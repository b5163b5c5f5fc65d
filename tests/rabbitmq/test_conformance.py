"""The transport conformance suite against a real RabbitMQ broker, in both construction
modes: ``url`` (the transport owns its connections) and ``client`` (the test connects
with aio-pika itself and wraps its own exchange and queue objects, the seed's way)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from dispytch.patterns import RoutePattern
from dispytch.rabbitmq import (
    RabbitMQConsumer,
    RabbitMQEventRoute,
    RabbitMQEventSubscription,
    RabbitMQProducer,
)
from dispytch.rabbitmq.plugin import CAPABILITIES
from dispytch.routes import EventRoute, EventSubscription
from dispytch.testing import TransportHarness
from dispytch.testing.conformance import TransportConformance
from dispytch.testing.harness import Mode
from dispytch.transport import Consumer, Producer

from .conftest import AMQP_URL
from .rawamqp import RawPublisher

pytestmark = pytest.mark.broker


class RabbitMQHarness(TransportHarness):
    """Each case publishes to its own topic exchange; a consumer group is a queue whose
    rejected messages go to a dead-letter exchange and queue of its own."""

    name = "rabbitmq"
    redelivery_timeout = 10.0
    capabilities = CAPABILITIES

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.exchange = f"conf.{uuid.uuid4().hex[:10]}"
        self.dlx = f"{self.exchange}.dlx"
        self._queues: set[str] = set()
        self._conn: AbstractRobustConnection | None = None
        self._channels: list[AbstractChannel] = []
        self._user_queues: dict[str, AbstractQueue] = {}
        self._user_exchange: AbstractExchange | None = None

    def queue_name(self, group: str) -> str:
        name = f"conf.{group}.{self.exchange[-10:]}"
        self._queues.add(name)
        return name

    def _arguments(self, group: str) -> dict[str, Any]:
        return {
            "x-dead-letter-exchange": self.dlx,
            "x-dead-letter-routing-key": self.queue_name(group),
        }

    async def _connection(self) -> AbstractRobustConnection:
        if self._conn is None:
            self._conn = await aio_pika.connect_robust(AMQP_URL)
            ch = await self._conn.channel()
            await ch.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            await ch.declare_exchange(self.dlx, aio_pika.ExchangeType.DIRECT, durable=True)
            await ch.close()
        return self._conn

    async def open(self) -> None:
        """Connect, declare the case's exchanges and, in client mode, take the user's own
        exchange object (as a service would at its start)."""
        await self._connection()
        if self.mode == "client":
            self._user_exchange = await (await self._channel()).get_exchange(self.exchange)

    async def _channel(self) -> AbstractChannel:
        ch = await (await self._connection()).channel()
        self._channels.append(ch)
        return ch

    async def prepare(self, name: str, *, group: str) -> None:
        conn = await self._connection()
        ch = await conn.channel()
        q_name = self.queue_name(group)
        q = await ch.declare_queue(q_name, durable=True, arguments=self._arguments(group))
        await q.bind(self.exchange, routing_key=RoutePattern(name).amqp)
        dlq = await ch.declare_queue(f"{q_name}.dlq", durable=True)
        self._queues.add(dlq.name)
        await dlq.bind(self.dlx, routing_key=q_name)
        await ch.close()
        if self.mode == "client":
            user_ch = await self._channel()
            self._user_queues[group] = await user_ch.declare_queue(
                q_name, durable=True, arguments=self._arguments(group)
            )

    def route(self, name: str) -> EventRoute:
        return RabbitMQEventRoute(exchange=self.exchange, routing_key=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        return RabbitMQEventSubscription(exchange=self.exchange, routing_key=name)

    def producer(self) -> Producer:
        if self.mode == "url":
            return RabbitMQProducer.from_url(AMQP_URL, timeout=10)
        if self._user_exchange is None:
            raise RuntimeError("open() first: client mode wraps the exchange it declared")
        return RabbitMQProducer([self._user_exchange], timeout=10)

    def consumer(self, *, group: str) -> Consumer:
        if self.mode == "url":
            return RabbitMQConsumer.from_url(
                AMQP_URL,
                queue=self.queue_name(group),
                prefetch_count=50,
                queue_arguments=self._arguments(group),
            )
        queue = self._user_queues.get(group)
        if queue is None:
            raise RuntimeError(f"prepare(group={group!r}) first: client mode wraps its queue")
        return RabbitMQConsumer(queue)

    async def ready_producer(self) -> Producer:
        if self.mode == "url":
            return await super().ready_producer()
        ch = await self._channel()
        exchange = await ch.get_exchange(self.exchange)
        return RabbitMQProducer([exchange], timeout=10)

    async def closed_producer(self) -> Producer:
        if self.mode == "url":
            return self.producer()  # never started
        ch = await self._channel()
        exchange = await ch.get_exchange(self.exchange)
        await ch.close()
        return RabbitMQProducer([exchange], timeout=10)

    def consumer_again(self, consumer: Consumer, *, group: str) -> Consumer:
        if self.mode == "url":
            return self.consumer(group=group)
        assert isinstance(consumer, RabbitMQConsumer)
        return RabbitMQConsumer(*consumer._user_queues)

    async def publish_raw(
        self, name: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        values = dict(headers or {})
        try:
            text = {k: v.decode() for k, v in values.items()}
        except UnicodeDecodeError:
            async with RawPublisher(AMQP_URL) as raw:  # aio-pika cannot send these
                await raw.publish(name, payload, exchange=self.exchange, headers=values)
            return
        ch = await (await self._connection()).channel()
        try:
            exchange = await ch.get_exchange(self.exchange)
            await exchange.publish(aio_pika.Message(payload, headers=text), routing_key=name)
        finally:
            await ch.close()

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        """What the queue's dead-letter exchange received (the broker's DLX copy)."""
        conn = await self._connection()
        ch = await conn.channel()
        try:
            dlq = await ch.get_queue(f"{self.queue_name(group)}.dlq")
            out: list[bytes] = []
            for _ in range(1000):  # bounded
                msg = await dlq.get(fail=False, timeout=5)
                if msg is None:
                    break
                out.append(msg.body)
                await msg.ack()
            return out
        finally:
            await ch.close()

    async def cleanup(self) -> None:
        for ch in self._channels:
            if not ch.is_closed:
                await ch.close()
        conn = await self._connection()
        for q in self._queues:
            ch = await conn.channel()
            await ch.queue_delete(q, if_unused=False, if_empty=False)
            await ch.close()
        for ex in (self.exchange, self.dlx):
            ch = await conn.channel()
            await ch.exchange_delete(ex)
            await ch.close()
        await conn.close()


class TestRabbitMQTransport(TransportConformance):
    timeout = 15.0

    @pytest.fixture(params=["url", "client"])
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[RabbitMQHarness]:
        h = RabbitMQHarness(request.param)
        await h.open()
        yield h
        await h.cleanup()
        await asyncio.sleep(0)
