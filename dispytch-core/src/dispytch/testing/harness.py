"""What a transport supplies to the conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Literal

from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryEventRoute, MemoryProducer
from dispytch.routes import EventRoute, EventSubscription, TopicSubscription
from dispytch.transport import Capabilities, Consumer, Producer

#: How a harness builds its clients: ``"url"`` through ``from_url`` (the transport owns
#: and connects them), ``"client"`` around a client the test built and connected itself,
#: the way the seed documents use Dispytch (``KafkaProducer(AIOKafkaProducer(...))``).
Mode = Literal["url", "client"]


class TransportHarness:
    """Builds fresh clients and routes of one transport for the conformance cases.

    Every case calls :meth:`unique_name` for its own topic/queue/stream, builds a producer
    and consumers itself (unstarted), and stops them. Override what your transport needs.

    Every guarantee the docs write holds for both construction modes, so a transport's
    tests run the suite twice: once with ``mode="url"`` and once with ``mode="client"``
    (parametrise the ``harness`` fixture). In ``"client"`` mode :meth:`producer` and
    :meth:`consumer` wrap clients the harness built and connected itself, and
    :meth:`cleanup` closes them (the transport must not).

    Attributes:
        name: Shown in test ids.
        mode: ``"url"`` or ``"client"`` (see :data:`Mode`).
        capabilities: What the transport's consumers declare; cases a transport cannot
            offer are skipped by these (never silently: the skip names the capability).
        at_least_once: ``False`` for transports that cannot redeliver (Redis Pub/Sub):
            the redelivery cases are skipped for them.
        supports_keys: Whether message keys travel (Kafka: yes; Redis Pub/Sub: no).
        supports_patterns: Whether subscriptions may hold ``{name}``/wildcard patterns.
        redelivery_timeout: How long a case waits for a redelivery (Redis Streams
            reclaims after an idle time, so its harness raises this).
    """

    name = "transport"
    mode: Mode = "url"
    capabilities = Capabilities()
    at_least_once = True
    supports_keys = True
    supports_patterns = True
    redelivery_timeout = 10.0

    def unique_name(self, prefix: str = "conf") -> str:
        """A topic/queue/stream name no other case uses (dots included on purpose)."""
        return f"{prefix}.{uuid.uuid4().hex[:10]}"

    async def prepare(self, name: str, *, group: str) -> None:
        """Create what must exist before publishing so nothing is lost (topic, queue)."""

    def route(self, name: str) -> EventRoute:
        """A route that publishes to ``name``."""
        raise NotImplementedError

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        """A subscription receiving what :meth:`route` publishes to ``name``.

        ``name`` may be a pattern when :attr:`supports_patterns` is true.
        """
        return TopicSubscription(topic=name)

    def producer(self) -> Producer:
        """A new, unstarted producer."""
        raise NotImplementedError

    def consumer(self, *, group: str) -> Consumer:
        """A new, unstarted consumer in consumer group (or queue) ``group``."""
        raise NotImplementedError

    async def ready_producer(self) -> Producer:
        """A producer around a client that is connected and usable *now*, so that
        ``emit`` works without ``emitter.start()`` (in ``"url"`` mode: a started one)."""
        producer = self.producer()
        await producer.start()
        return producer

    async def closed_producer(self) -> Producer:
        """A producer whose client was closed (or never connected): ``send`` must raise
        :class:`~dispytch.errors.NotStartedError` saying what to do."""
        return self.producer()

    def consumer_again(self, consumer: Consumer, *, group: str) -> Consumer:
        """A new consumer over the same underlying client as ``consumer`` (``"client"``
        mode: wrap the same user client again; ``"url"`` mode: a fresh one from the URL in
        the same group). Restarting over it must lose nothing."""
        return self.consumer(group=group)

    async def publish_raw(
        self, name: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """Publish ``payload`` to ``name`` with the broker's plain client, bypassing
        Dispytch: the way other services (and hostile input) reach a consumer. Header
        values are bytes and need not be valid UTF-8."""
        raise NotImplementedError

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        """Payloads of messages on ``name`` that the failure policy rejected and that
        ended where the transport's docs say rejected messages go (a dead-letter queue
        or stream), or ``None`` where rejected messages are dropped by design (after an
        ERROR log): the suite then checks that they are not delivered again."""
        return None

    async def cleanup(self) -> None:
        """Called once after each case."""


class MemoryHarness(TransportHarness):
    """The in-memory transport, each case on its own broker."""

    name = "memory"

    def __init__(self, mode: Mode = "url") -> None:
        self.mode = mode
        self.broker = MemoryBroker(uuid.uuid4().hex)

    def route(self, name: str) -> EventRoute:
        return MemoryEventRoute(topic=name)

    def producer(self) -> Producer:
        return MemoryProducer(self.broker)

    def consumer(self, *, group: str) -> Consumer:
        return MemoryConsumer(self.broker, group=group)
