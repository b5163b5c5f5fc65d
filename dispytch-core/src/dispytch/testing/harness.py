"""What a transport supplies to the conformance suite."""

from __future__ import annotations

import uuid

from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryEventRoute, MemoryProducer
from dispytch.routes import EventRoute, EventSubscription, TopicSubscription
from dispytch.transport import Consumer, Producer


class TransportHarness:
    """Builds fresh clients and routes of one transport for the conformance cases.

    Every case calls :meth:`unique_name` for its own topic/queue/stream, builds a producer
    and consumers itself (unstarted), and stops them. Override what your transport needs.

    Attributes:
        name: Shown in test ids.
        at_least_once: ``False`` for transports that cannot redeliver (Redis Pub/Sub):
            the redelivery cases are skipped for them.
        supports_keys: Whether message keys travel (Kafka: yes; Redis Pub/Sub: no).
        supports_patterns: Whether subscriptions may hold ``{name}``/wildcard patterns.
        redelivery_timeout: How long a case waits for a redelivery (Redis Streams
            reclaims after an idle time, so its harness raises this).
    """

    name = "transport"
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

    async def cleanup(self) -> None:
        """Called once after each case."""


class MemoryHarness(TransportHarness):
    """The in-memory transport, each case on its own broker."""

    name = "memory"

    def __init__(self) -> None:
        self.broker = MemoryBroker(uuid.uuid4().hex)

    def route(self, name: str) -> EventRoute:
        return MemoryEventRoute(topic=name)

    def producer(self) -> Producer:
        return MemoryProducer(self.broker)

    def consumer(self, *, group: str) -> Consumer:
        return MemoryConsumer(self.broker, group=group)
