"""The transport conformance suite against a real RabbitMQ broker, in both construction
modes: ``url`` (the transport owns its connections) and ``client`` (the test connects
with aio-pika itself and wraps its own exchange and queue objects, the seed's way), each
with ordered consumers (``ordered=True``: a lane per queue, so the lane cases run) and
unordered ones (the default; the lane cases skip, naming ``ordered_lanes``)."""

from __future__ import annotations

import asyncio
import contextlib
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
from dispytch.rabbitmq.consumer import capabilities
from dispytch.routes import EventRoute, EventSubscription
from dispytch.testing import TransportHarness
from dispytch.testing.conformance import TransportConformance
from dispytch.testing.harness import Lane, Mode, Outage, SeverableConsumer
from dispytch.transport import HEADER_ORIGINAL_ROUTE, Consumer, Producer
from yarl import URL

from .conftest import AMQP_URL
from .proxy import Proxy
from .rawamqp import RawPublisher

pytestmark = pytest.mark.broker


class RabbitMQHarness(TransportHarness):
    """Each case publishes to its own topic exchange; a consumer group is a queue (and each
    lane of the lane cases a queue of its own in that group: with ``ordered=True`` a lane
    is a queue). Every queue of a group dead-letters to the group's dead-letter queue.

    Consumers are built as users build them: in ``"url"`` mode with ``from_url`` and no
    ``prefetch_count`` (it follows the dispatcher's ``max_in_flight``), in ``"client"``
    mode over the queues the test declared on one aio-pika channel of its own per group,
    whose QoS is left to the consumer.
    """

    name = "rabbitmq"
    redelivery_timeout = 10.0
    # A rejected delivery is dead-lettered (rejected() is not None), so the window of a
    # message that must not come back is not used; RabbitMQ hands an unsettled delivery
    # back as soon as its channel closes, well within the default.
    redelivery_window = 2.0
    may_duplicate = False  # redelivered only after a failure or a closed channel
    # The consumer decodes header values that are not UTF-8 with replacement characters.
    undecodable_headers = "replace"

    def __init__(self, mode: Mode, *, ordered: bool = True) -> None:
        self.mode = mode
        self.ordered = ordered
        self.capabilities = capabilities(ordered=ordered)
        self.exchange = f"conf.{uuid.uuid4().hex[:10]}"
        self.dlx = f"{self.exchange}.dlx"
        self._queues: set[str] = set()
        self._lanes: set[str] = set()
        self._conn: AbstractRobustConnection | None = None
        self._channels: list[AbstractChannel] = []
        self._user_channels: dict[str, AbstractChannel] = {}
        self._user_queues: dict[str, dict[str, AbstractQueue]] = {}
        self._user_exchange: AbstractExchange | None = None
        self._dead: dict[str, list[tuple[str | None, bytes]]] = {}
        self._proxy: Proxy | None = None
        self._proxied: AbstractRobustConnection | None = None
        self._severable: list[tuple[Proxy, AbstractRobustConnection | None]] = []

    def queue_name(self, group: str) -> str:
        name = f"conf.{group}.{self.exchange[-10:]}"
        self._queues.add(name)
        return name

    def queue_of(self, name: str, group: str) -> str:
        """The queue of ``group`` that receives ``name``: the group's queue, or for a lane
        a queue of its own (dead-lettering to the group's dead-letter queue all the same)."""
        if name not in self._lanes:
            return self.queue_name(group)
        queue = f"{self.queue_name(group)}.{name}"
        self._queues.add(queue)
        return queue

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

    async def lanes(self, name: str, count: int) -> list[Lane]:
        names = [f"{name}.lane{i}" for i in range(count)]
        self._lanes.update(names)
        return [Lane(n, self.route(n)) for n in names]

    async def prepare(self, name: str, *, group: str) -> None:
        conn = await self._connection()
        ch = await conn.channel()
        q_name = self.queue_of(name, group)
        q = await ch.declare_queue(q_name, durable=True, arguments=self._arguments(group))
        await q.bind(self.exchange, routing_key=RoutePattern(name).amqp)
        dlq = await ch.declare_queue(f"{self.queue_name(group)}.dlq", durable=True)
        self._queues.add(dlq.name)
        await dlq.bind(self.dlx, routing_key=self.queue_name(group))
        await ch.close()
        if self.mode == "client":
            # One channel of the user's per group, its QoS left to the consumer.
            user_ch = self._user_channels.get(group)
            if user_ch is None:
                user_ch = self._user_channels[group] = await self._channel()
            self._user_queues.setdefault(group, {})[q_name] = await user_ch.declare_queue(
                q_name, durable=True, arguments=self._arguments(group)
            )

    def route(self, name: str) -> EventRoute:
        return RabbitMQEventRoute(exchange=self.exchange, routing_key=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        queue = self.queue_of(name, group) if name in self._lanes else None
        return RabbitMQEventSubscription(exchange=self.exchange, routing_key=name, queue=queue)

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
                ordered=self.ordered,
                queue_arguments=self._arguments(group),
            )
        queues = self._user_queues.get(group)
        if not queues:
            raise RuntimeError(f"prepare(group={group!r}) first: client mode wraps its queues")
        return RabbitMQConsumer(*queues.values(), ordered=self.ordered)

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

    async def unstarted_producer(self) -> Producer | None:
        if self.mode == "url":
            return self.producer()  # never started
        # The user made a connection and never opened it.
        return RabbitMQProducer(aio_pika.RobustConnection(URL(AMQP_URL)), timeout=10)

    async def unconfirmed_producer(self) -> Producer | None:
        """A started producer (timeout 0.5 s) connected through a loopback proxy that is
        then frozen: the broker is reachable, its confirms never arrive."""
        self._proxy = proxy = Proxy()
        await proxy.__aenter__()
        producer: Producer
        if self.mode == "url":
            producer = RabbitMQProducer.from_url(proxy.url, timeout=0.5)
            await producer.start()
        else:
            self._proxied = await aio_pika.connect_robust(proxy.url)
            channel = await self._proxied.channel()
            producer = RabbitMQProducer([await channel.get_exchange(self.exchange)], timeout=0.5)
        proxy.frozen.set()
        return producer

    async def severable_consumer(
        self, *, group: str, outage: Outage = "killed"
    ) -> SeverableConsumer | None:
        """The group's consumer through a loopback proxy (reconnecting every 0.5 s) that
        ``sever`` kills (every socket closed, nothing listening) or freezes (sockets
        open, nothing forwarded; ``release`` then kills it). The broker sees the
        connection go and requeues what it held, so nothing is lost. Client mode: the
        user's robust connection through the proxy, its queues declared on a channel of
        it (as :meth:`prepare` declares them)."""
        proxy = Proxy()
        await proxy.__aenter__()
        if self.mode == "url":
            self._severable.append((proxy, None))
            consumer: Consumer = RabbitMQConsumer.from_url(
                proxy.url,
                queue=self.queue_name(group),
                ordered=self.ordered,
                queue_arguments=self._arguments(group),
            )
        else:
            conn = await aio_pika.connect_robust(proxy.url)
            self._severable.append((proxy, conn))
            channel = await conn.channel()
            queues = [
                await channel.declare_queue(q, durable=True, arguments=self._arguments(group))
                for q in self._user_queues.get(group, {})
            ]
            if not queues:
                raise RuntimeError(f"prepare(group={group!r}) first: client mode wraps its queues")
            consumer = RabbitMQConsumer(*queues, ordered=self.ordered)
        if outage == "killed":
            return SeverableConsumer(consumer, proxy.kill)

        async def freeze() -> None:
            proxy.frozen.set()

        return SeverableConsumer(consumer, freeze, release=proxy.kill)

    def consumer_again(self, consumer: Consumer, *, group: str) -> Consumer:
        if self.mode == "url":
            return self.consumer(group=group)
        assert isinstance(consumer, RabbitMQConsumer)
        return RabbitMQConsumer(*consumer._user_queues, ordered=self.ordered)

    async def publish_raw(
        self, name: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        values = dict(headers or {})
        try:
            text = {k: v.decode() for k, v in values.items()}
        except UnicodeDecodeError:
            # aio-pika cannot send header values that are not UTF-8; other clients do.
            async with RawPublisher(AMQP_URL) as raw:
                await raw.publish(name, payload, exchange=self.exchange, headers=values)
            return
        ch = await (await self._connection()).channel()
        try:
            exchange = await ch.get_exchange(self.exchange)
            await exchange.publish(aio_pika.Message(payload, headers=text), routing_key=name)
        finally:
            await ch.close()

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        """What the group's dead-letter queue received for ``name`` so far.

        Reading a queue takes messages off it, so what was taken is kept (per group) and
        returned again: a view, as the contract asks.
        """
        seen = self._dead.setdefault(group, [])
        conn = await self._connection()
        ch = await conn.channel()
        try:
            dlq = await ch.get_queue(f"{self.queue_name(group)}.dlq")
            for _ in range(1000):  # bounded
                msg = await dlq.get(fail=False, timeout=5)
                if msg is None:
                    break
                seen.append((_original_route(msg.headers), msg.body))
                await msg.ack()
        finally:
            await ch.close()
        pattern = RoutePattern(name)
        return [body for route, body in seen if route is None or pattern.match(route) is not None]

    async def cleanup(self) -> None:
        if self._proxy is not None:
            await self._proxy.kill()
        if self._proxied is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._proxied.close(), 5)
        for proxy, proxied in self._severable:
            await proxy.kill()
            if proxied is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proxied.close(), 5)
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


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _original_route(headers: Mapping[str, Any]) -> str | None:
    """The routing key a dead letter was published with: the consumer's DLX copy says it
    in ``dispytch-original-route``, the broker's own copy in ``x-death``."""
    route = _text(headers.get(HEADER_ORIGINAL_ROUTE))
    if route is not None:
        return route
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        keys = deaths[0].get("routing-keys")
        if isinstance(keys, list) and keys:
            return _text(keys[0])
    return None


class TestRabbitMQTransport(TransportConformance):
    timeout = 15.0

    @pytest.fixture(
        params=[
            pytest.param(("url", True), id="url-ordered"),
            pytest.param(("client", True), id="client-ordered"),
            pytest.param(("url", False), id="url-unordered"),
            pytest.param(("client", False), id="client-unordered"),
        ]
    )
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[RabbitMQHarness]:
        mode, ordered = request.param
        h = RabbitMQHarness(mode, ordered=ordered)
        await h.open()
        yield h
        await h.cleanup()
        await asyncio.sleep(0)
