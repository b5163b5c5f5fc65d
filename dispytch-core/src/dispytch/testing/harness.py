"""What a transport supplies to the conformance suite.

A transport's tests implement :class:`TransportHarness` (once per construction mode) and
hand it to :class:`dispytch.testing.conformance.TransportConformance`. The harness knows the
broker: how to name and create a topic, how to build clients the two ways users build
them, how to publish bytes with the broker's plain client and where rejected messages end.
The suite knows the guarantees and checks them the same way on every transport.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryEventRoute, MemoryProducer
from dispytch.patterns import RoutePattern
from dispytch.plugins import transport_for_url
from dispytch.routes import EventRoute, EventSubscription, TopicSubscription
from dispytch.transport import Capabilities, Consumer, Producer, capabilities_of

#: How a harness builds its clients: ``"url"`` through ``from_url`` (the transport owns
#: and connects them), ``"client"`` around a client the test built and connected itself,
#: the way the seed documents use Dispytch (``KafkaProducer(AIOKafkaProducer(...))``).
Mode = Literal["url", "client"]

#: How :meth:`TransportHarness.severable_consumer` cuts a consumer off its broker:
#: ``"killed"`` (every socket closed, nothing listening: the broker or a proxy died) or
#: ``"frozen"`` (sockets left open, nothing ever answers: an unreachable network).
Outage = Literal["killed", "frozen"]


@dataclass(frozen=True)
class Lane:
    """One lane of a transport, as the lane cases (order, a slow lane) publish to it.

    Attributes:
        name: What to pass to :meth:`TransportHarness.prepare` and
            :meth:`TransportHarness.subscription` to receive this lane (several lanes may
            share one name: the partitions of one Kafka topic).
        route: Where to emit this lane's events.
        key: The key to emit them with (``None``: no key), e.g. one that the harness
            knows lands on this lane's partition.
    """

    name: str
    route: EventRoute
    key: str | None = None


@dataclass(frozen=True)
class SeverableConsumer:
    """A consumer whose broker connection a case can cut, from
    :meth:`TransportHarness.severable_consumer`.

    Attributes:
        consumer: A new, unstarted consumer of the group, built the harness's way for its
            mode (from a URL, or around the user's own client), whose connection to the
            broker goes through something the harness can cut: a proxy it kills or
            freezes, or a broker of its own that it kills.
        sever: Cuts that connection the way the outage asked for, for good: from its
            return the consumer reaches no broker (nothing listening, or nothing
            answering).
        release: Called after the consumer stopped, before the case looks for what it
            took: ends what is left of the cut connection at the broker's end (e.g. kills
            a frozen proxy), so that the broker hands back what the consumer held.
            ``None``: nothing to do.
        producer: A new producer (as :meth:`TransportHarness.producer` builds them) to
            the broker the consumer reads, or ``None``: the harness's
            :meth:`~TransportHarness.producer` reaches it.
        shared: Whether the consumer reads the harness's own broker (through a proxy):
            then a new consumer of the group from :meth:`TransportHarness.consumer` sees
            what the cut one took and did not settle, and the case checks that nothing
            was lost. ``False`` for a broker of the harness's own that :attr:`sever`
            killed (and its messages with it).
    """

    consumer: Consumer
    sever: Callable[[], Awaitable[None]]
    producer: Producer | None = None
    shared: bool = True
    release: Callable[[], Awaitable[None]] | None = None


class TransportHarness:
    """Builds fresh clients and routes of one transport for the conformance cases.

    Every case calls :meth:`unique_name` for its own topic/queue/stream, builds a producer
    and consumers itself (unstarted), and stops them. Override what your transport needs.

    Every guarantee the docs write holds for both construction modes, so a transport's
    tests run the suite twice: once with ``mode="url"`` and once with ``mode="client"``
    (parametrise the ``harness`` fixture). In ``"client"`` mode :meth:`producer` and
    :meth:`consumer` wrap clients the harness built and connected itself, and
    :meth:`cleanup` closes them (the transport must not).

    Before a case asks for a consumer of a group it calls :meth:`prepare` once for every
    name that consumer will receive (so a ``"client"``-mode harness may subscribe the
    user's client there), and it does not prepare names for that consumer afterwards. The
    consumers must honour what ``subscribe()`` adds on top of those names: the suite wraps
    them in a probe that counts what was taken and not yet settled, and one case
    subscribes them to a route no handler takes (the unknown-route case).

    Attributes:
        name: Shown in test ids and skip reasons.
        mode: ``"url"`` or ``"client"`` (see :data:`Mode`).
        capabilities: What the transport's consumers declare; cases a transport cannot
            offer are skipped by these (never silently: the skip names the capability).
            The suite checks that a harness declares at least what its consumer does.
        at_least_once: ``False`` for transports that cannot redeliver (Redis Pub/Sub):
            the redelivery cases are skipped for them. A case needs this *and*
            ``capabilities.delivery == "at-least-once"``.
        supports_keys: Whether message keys travel (Kafka: yes; Redis Pub/Sub: no).
        supports_patterns: Whether subscriptions may hold ``{name}``/wildcard patterns.
        redelivery_timeout: How long a case waits for a redelivery (Redis Streams
            reclaims after an idle time, so its harness raises this).
        redelivery_window: How long a case watches for a message that must *not* come
            back (a rejected one, where :meth:`rejected` is ``None``): the time within
            which this transport would hand an unsettled message to a new consumer of the
            group (Redis Streams: its ``min_idle_time`` plus a claim interval).
        may_duplicate: ``True`` where the transport may deliver a message twice without
            any failure (an at-least-once transport that reclaims by idle time and says
            so); the suite then asks for "at least once" where it otherwise asks for
            "exactly once".
        undecodable_headers: What the transport does with a message whose header values
            are not valid UTF-8: ``"replace"`` (decoded with replacement characters and
            handled like any other; the default) or ``"reject"`` (the transport cannot
            carry them, e.g. in a JSON header block, and rejects the message as invalid:
            logged, and ending where rejected messages end). The hostile-input case
            expects one or the other accordingly.
        lease_seconds: The lease this harness's consumers are built with: how long a
            message may be held, unsettled, before the broker would hand it to another
            consumer of the group (Redis Streams: ``min_idle_time``; Kafka:
            ``max_poll_interval_ms``). ``None`` where the transport has no such lease or
            cannot keep one (the lease case is then skipped, by name). A consumer that
            declares ``lease_extension`` must keep a handler that runs several leases
            long from being redelivered: the lease case checks it with a short lease.
    """

    name = "transport"
    mode: Mode = "url"
    capabilities = Capabilities()
    at_least_once = True
    supports_keys = True
    supports_patterns = True
    redelivery_timeout = 10.0
    redelivery_window = 2.0
    may_duplicate = False
    undecodable_headers: Literal["replace", "reject"] = "replace"
    lease_seconds: float | None = None

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
        """A new producer (in ``"url"`` mode unstarted; in ``"client"`` mode around a
        client the harness connected, so usable as soon as its emitter starts)."""
        raise NotImplementedError

    def consumer(self, *, group: str) -> Consumer:
        """A new, unstarted consumer in consumer group (or queue) ``group``."""
        raise NotImplementedError

    async def lanes(self, name: str, count: int) -> list[Lane]:
        """``count`` distinct lanes for a case named ``name`` (used when
        ``capabilities.ordered_lanes``, and to spread a backlog in the bounded-memory cases).

        The default gives each lane its own route ``f"{name}.lane{i}"``, which is a lane of
        its own wherever a lane is a topic, a stream or a topic's partition (memory,
        Streams, Kafka with one partition per topic). A harness may override it, e.g. with
        one Kafka topic of ``count`` partitions and a key that lands on each.
        """
        return [Lane(n, self.route(n)) for n in (f"{name}.lane{i}" for i in range(count))]

    async def ready_producer(self) -> Producer:
        """A producer around a client that is connected and usable *now*, so that
        ``emit`` works without ``emitter.start()`` (in ``"url"`` mode: a started one)."""
        producer = self.producer()
        await producer.start()
        return producer

    async def closed_producer(self) -> Producer:
        """A producer whose client was closed: ``send`` must raise
        :class:`~dispytch.errors.NotStartedError` saying what to do.

        The default starts a producer and stops it again (``"url"`` mode: the producer
        owns its client, so that closes it); a ``"client"``-mode harness closes the
        user's client under the producer instead.
        """
        producer = self.producer()
        await producer.start()
        await producer.stop()
        return producer

    async def unstarted_producer(self) -> Producer | None:
        """A producer whose client was never connected (``"client"`` mode: a client the
        user has not started yet; ``"url"`` mode: a producer never started): ``send``
        must raise :class:`~dispytch.errors.NotStartedError`.

        The default is :meth:`producer` in ``"url"`` mode and ``None`` in ``"client"``
        mode (there :meth:`producer` wraps a connected client); the case is then skipped,
        naming this method.
        """
        return self.producer() if self.mode == "url" else None

    async def unconfirmed_producer(self) -> Producer | None:
        """A started producer whose deliveries the broker will not confirm within its
        delivery timeout (e.g. a short timeout towards a broker that accepts connections
        and never answers): ``emit`` must raise :class:`~dispytch.errors.EmitTimeoutError`
        or call the emitter's ``on_timeout`` callbacks. ``None`` (the default): the case
        is skipped, naming this method."""
        return None

    async def severable_consumer(
        self, *, group: str, outage: Outage = "killed"
    ) -> SeverableConsumer | None:
        """A new, unstarted consumer of ``group`` whose broker connection the returned
        :attr:`SeverableConsumer.sever` cuts as ``outage`` says (see :data:`Outage` and
        :class:`SeverableConsumer`): the bounded stop case checks that
        ``stop(timeout=...)`` returns within its timeout even then, for each outage.

        Called after :meth:`prepare` for every name the consumer will receive, as
        :meth:`consumer` is; :meth:`cleanup` closes whatever it made (the proxy, the
        broker, the user's client). ``None`` (the default, or for an outage the harness
        cannot stage): the case is skipped, naming this method and the outage.
        """
        return None

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
        values are bytes and need not be valid UTF-8.

        Not implemented by default: the hostile-input cases are then skipped, naming this
        method.
        """
        raise NotImplementedError

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        """Payloads of messages on ``name`` that the failure policy rejected and that
        ended where the transport's docs say rejected messages go (a dead-letter queue
        or stream), or ``None`` where rejected messages are dropped by design (after an
        ERROR log): the suite then checks that they are not delivered again.

        A view, not a consumer of them: the suite polls it, so each call returns every
        such payload seen so far (a harness that must take them off a queue to look, e.g.
        a RabbitMQ dead-letter queue, keeps what it took and returns it again).
        """
        return None

    async def cleanup(self) -> None:
        """Called once after each case."""


class MemoryHarness(TransportHarness):
    """The in-memory transport, each case on its own broker, in either mode.

    ``"client"``: a :class:`~dispytch.memory.MemoryBroker` the harness created, passed to
    ``MemoryProducer``/``MemoryConsumer`` (the broker is the memory transport's "client";
    its producer wrapper still needs ``start()``, which :meth:`ready_producer` does).
    ``"url"``: everything through ``memory://<name>`` URLs and the plugin's factories, as
    ``EventEmitter.from_url``/``EventDispatcher.from_url`` build them. With
    ``ordered=True`` consumers are ordered (one lane per topic, lanes can be paused), so
    the lane cases run too; unordered (the default) they handle a topic's messages side by
    side.
    """

    name = "memory"

    def __init__(self, mode: Mode = "url", *, ordered: bool = False) -> None:
        self.mode = mode
        self.ordered = ordered
        broker_name = f"conformance-{uuid.uuid4().hex}"
        if mode == "client":
            self.url = ""
            self.broker = MemoryBroker(broker_name)
        else:
            self.url = f"memory://{broker_name}"
            # The broker that URL names, only to look at what it rejected (the plain view
            # of the broker that publish_raw and rejected() use).
            self.broker = MemoryBroker.named(broker_name)
        probe = MemoryConsumer(self.broker, group="_capabilities", ordered=ordered)
        self.capabilities = capabilities_of(probe)

    def route(self, name: str) -> EventRoute:
        return MemoryEventRoute(topic=name)

    def producer(self) -> Producer:
        if self.mode == "client":
            return MemoryProducer(self.broker)
        producer: Producer = transport_for_url(self.url).producer_factory(self.url)
        return producer

    def consumer(self, *, group: str) -> Consumer:
        if self.mode == "client":
            return MemoryConsumer(self.broker, group=group, ordered=self.ordered)
        url = f"{self.url}?group={group}"
        consumer: Consumer = transport_for_url(url).consumer_factory(url, ordered=self.ordered)
        return consumer

    async def unstarted_producer(self) -> Producer | None:
        return self.producer()

    def consumer_again(self, consumer: Consumer, *, group: str) -> Consumer:
        if self.mode == "client":
            assert isinstance(consumer, MemoryConsumer)
            return MemoryConsumer(consumer.broker, group=group, ordered=self.ordered)
        return self.consumer(group=group)

    async def publish_raw(
        self, name: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        # The memory broker carries text headers: bytes are decoded as every transport
        # decodes broker headers (UTF-8, invalid bytes replaced; see EncodedHeaders).
        text = {k: v.decode("utf-8", "replace") for k, v in (headers or {}).items()}
        self.broker.publish(name, payload, text, None)

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        pattern = RoutePattern(name)
        return [
            m.payload
            for m in self.broker.rejected
            if pattern.match(m.route) is not None and m.metadata.get("group") == group
        ]
