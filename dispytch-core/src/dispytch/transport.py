"""The contract between Dispytch and a transport.

A transport knows bytes and its broker, nothing of pydantic or handlers. It supplies a
:class:`Producer` that sends :class:`OutgoingMessage` records and a :class:`Consumer`
that yields :class:`Message` objects and acknowledges them when the dispatcher says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload, runtime_checkable

if TYPE_CHECKING:
    from dispytch.routes import EventRoute, EventSubscription

#: Header names Dispytch itself writes. Transports carry them like any other header.
HEADER_EVENT_TYPE = "dispytch-event-type"
HEADER_CONTENT_TYPE = "dispytch-content-type"
HEADER_EVENT_ID = "dispytch-event-id"
HEADER_TIMESTAMP = "dispytch-timestamp"
HEADER_ERROR_TYPE = "dispytch-error-type"
HEADER_ERROR_MESSAGE = "dispytch-error-message"
HEADER_ERROR_ATTEMPTS = "dispytch-error-attempts"
HEADER_ORIGINAL_ROUTE = "dispytch-original-route"
HEADER_DEAD_LETTERED_AT = "dispytch-dead-lettered-at"

_D = TypeVar("_D")


class EncodedHeaders(Mapping[str, str]):
    """Message headers as a broker hands them over: ``(name, bytes)`` pairs, decoded as
    UTF-8 (invalid bytes replaced, ``None`` read as ``""``) only when read.

    Most messages are read for one or two headers (the content type, maybe the event
    type): a lookup scans the pairs and decodes only the value asked for, instead of
    decoding every header of every message into a dict up front. Where a name repeats
    (Kafka allows it), the last value wins. Anything that walks the mapping (``dict()``,
    iteration, ``len``) decodes it all once.
    """

    __slots__ = ("_decoded", "_pairs")

    def __init__(self, pairs: Sequence[tuple[str, bytes | None]]) -> None:
        self._pairs = pairs
        self._decoded: dict[str, str] | None = None

    def _all(self) -> dict[str, str]:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = {
                k: v.decode("utf-8", "replace") if v is not None else "" for k, v in self._pairs
            }
        return decoded

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, /, default: str | _D) -> str | _D: ...
    def get(self, key: str, /, default: object = None) -> object:
        decoded = self._decoded
        if decoded is not None:
            return decoded.get(key, default)
        seen = False
        found: bytes | None = None
        for k, v in self._pairs:  # forward and to the end: the last of a repeated name wins
            if k == key:
                seen, found = True, v
        if not seen:
            return default
        return found.decode("utf-8", "replace") if found is not None else ""

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self._pairs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"EncodedHeaders({self._all()!r})"


class Message:
    """One delivery received from a broker.

    Attributes:
        payload: The raw bytes, exactly as published.
        headers: Message headers as text (transports decode broker headers to ``str``).
        route: The concrete address the message arrived on: a Kafka topic, a RabbitMQ
            routing key, a Redis channel or stream. Subscriptions are matched against it.
        key: The partitioning key, when the transport has one.
        attempt: Delivery attempt, 1 for the first delivery (from the broker's redelivery
            flag or delivery counter where it keeps one).
        metadata: Transport details users may read (partition, offset, delivery tag, ...).
        lane: Messages with the same non-``None`` lane are handled one after another, in
            order (Kafka uses the partition). ``None`` lets the dispatcher run the message
            concurrently with any other.
        token: Whatever the transport needs to acknowledge this delivery. Opaque to core.
    """

    __slots__ = ("attempt", "headers", "key", "lane", "metadata", "payload", "route", "token")

    def __init__(
        self,
        payload: bytes,
        *,
        route: str,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
        attempt: int = 1,
        metadata: Mapping[str, Any] | None = None,
        lane: Hashable | None = None,
        token: Any = None,
    ) -> None:
        self.payload = payload
        self.route = route
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.key = key
        self.attempt = attempt
        self.metadata: Mapping[str, Any] = metadata if metadata is not None else {}
        self.lane = lane
        self.token = token

    def __repr__(self) -> str:
        return (
            f"Message(route={self.route!r}, {len(self.payload)} bytes, "
            f"attempt={self.attempt}, metadata={dict(self.metadata)!r})"
        )


class OutgoingMessage:
    """One event, serialised, on its way to a producer.

    Attributes:
        route: The event's route with every placeholder filled in (a transport's own route
            type, or the transport-neutral :class:`~dispytch.routes.TopicRoute`).
        payload: The encoded event.
        headers: Headers to publish with it, Dispytch's own included.
        key: Partitioning key as bytes, or ``None``.
    """

    __slots__ = ("headers", "key", "payload", "route")

    def __init__(
        self,
        route: EventRoute,
        payload: bytes,
        headers: dict[str, str],
        key: bytes | None = None,
    ) -> None:
        self.route = route
        self.payload = payload
        self.headers = headers
        self.key = key

    def __repr__(self) -> str:
        return f"OutgoingMessage(route={self.route!r}, {len(self.payload)} bytes)"


@runtime_checkable
class Producer(Protocol):
    """Sends serialised events to a broker.

    ``send`` on a producer that is not started (or already stopped) must raise
    :class:`~dispytch.errors.NotStartedError`; a delivery the broker did not confirm in
    time raises :class:`~dispytch.errors.EmitTimeoutError`.
    """

    async def start(self) -> None:
        """Connect (a no-op when the user passed a client they manage themselves)."""

    async def stop(self) -> None:
        """Flush what is pending and disconnect (only what this producer owns)."""

    async def send(self, message: OutgoingMessage) -> None:
        """Publish one message and return once the broker has it (confirm, ack)."""

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish many without waiting for each in turn; return once all are confirmed.

        Raises the first delivery error after every message was attempted.
        """


@runtime_checkable
class Consumer(Protocol):
    """Receives messages from a broker and settles them when told to.

    Lifecycle, as driven by the dispatcher: ``subscribe`` (before ``start``), ``start``,
    iterate ``listen()``, ``ack``/``nack`` each message once its handling is over,
    ``stop`` (stop fetching: ``listen`` ends soon after), then ``close`` once in-flight
    work has been settled (commit what is due, disconnect what this consumer owns).
    """

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        """Learn what to consume. A consumer built over a client the user already
        subscribed may check these against it or ignore them."""

    async def start(self) -> None:
        """Connect and begin consuming."""

    def listen(self) -> AsyncIterator[Message]:
        """Yield messages until ``stop`` is called."""

    async def ack(self, message: Message) -> None:
        """The message is done with (handled, filtered or dead-lettered)."""

    async def nack(self, message: Message, *, requeue: bool) -> None:
        """The message was not handled.

        ``requeue=True``: give it back for redelivery. ``requeue=False``: the failure
        policy gave up on it; reject it (a broker dead-letter exchange receives it where
        one is configured), or acknowledge it where the broker cannot reject. Each
        transport documents which.

        A consumer that declares ``Capabilities.delayed_requeue`` also accepts
        ``nack(message, requeue=True, delay=seconds)``: the message comes back no sooner
        than ``delay`` seconds later, and nothing in this process waits meanwhile.
        """

    async def stop(self) -> None:
        """Stop fetching new messages; ``listen`` returns once it notices."""

    async def close(self) -> None:
        """Release the connection after in-flight messages were settled."""


@dataclass(frozen=True)
class Capabilities:
    """What a transport's consumer can do, declared up front.

    A feature that needs a capability checks for it when it starts and names what is
    missing, instead of failing on the first message. A consumer exposes its own as a
    ``capabilities`` attribute (the dispatcher reads ``getattr(consumer, "capabilities",
    Capabilities())``); the transport's ``TransportSpec.capabilities`` says the same for
    ``dispytch plugins``.

    Attributes:
        delivery: ``"at-least-once"`` (a message not acknowledged is delivered again) or
            ``"at-most-once"`` (Redis Pub/Sub: what is lost in a crash stays lost).
        ordered_lanes: Messages carry a :attr:`Message.lane` and arrive in order in it.
        requeue: ``nack(requeue=True)`` hands the message back for redelivery (when it
            is false such a nack is a no-op and the dispatcher does not wait before it).
        delayed_requeue: ``nack(message, requeue=True, delay=seconds)`` redelivers no
            sooner than ``delay`` seconds later, without holding a slot meanwhile.
        pause_lanes: The consumer implements :class:`LanePausing`: ``pause(lane)`` stops
            it yielding that lane's messages until ``resume(lane)``.
        lease_extension: The consumer implements :class:`LeaseExtension`: ``extend``
            keeps a message that is still being handled from being redelivered to
            another consumer (Redis Streams XCLAIM; Kafka keeps polling).
        request_reply: The transport can carry a reply back to a per-process reply
            address (commands and queries over a broker).
    """

    delivery: Literal["at-least-once", "at-most-once"] = "at-least-once"
    ordered_lanes: bool = False
    requeue: bool = True
    delayed_requeue: bool = False
    pause_lanes: bool = False
    lease_extension: bool = False
    request_reply: bool = False

    def missing(self, *names: str) -> list[str]:
        """The capabilities among ``names`` this transport lacks.

        Example::

            missing = consumer_caps.missing("delayed_requeue", "lease_extension")
            if missing:
                raise RuntimeError(f"Durable workers need {', '.join(missing)}")
        """
        out = []
        for name in names:
            value = getattr(self, name)
            if name == "delivery":
                if value != "at-least-once":
                    out.append(name)
            elif not value:
                out.append(name)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``dispytch plugins --json``)."""
        return {
            "delivery": self.delivery,
            "ordered_lanes": self.ordered_lanes,
            "requeue": self.requeue,
            "delayed_requeue": self.delayed_requeue,
            "pause_lanes": self.pause_lanes,
            "lease_extension": self.lease_extension,
            "request_reply": self.request_reply,
        }


#: What a consumer that declares nothing is taken to offer.
DEFAULT_CAPABILITIES = Capabilities()


def capabilities_of(consumer: object) -> Capabilities:
    """The capabilities a consumer declares (its ``capabilities`` attribute), or the
    defaults: at-least-once with requeue, nothing else."""
    caps = getattr(consumer, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else DEFAULT_CAPABILITIES


@runtime_checkable
class LanePausing(Protocol):
    """A consumer that can stop yielding one lane's messages while others go on.

    The dispatcher pauses a lane when it holds as many of that lane's messages as its
    per-lane cap allows, and resumes it when the lane has drained to half of that. Kafka
    maps this to ``AIOKafkaConsumer.pause``/``resume`` of the partition; a queue or a stream
    simply is not read meanwhile. Messages the consumer had already taken for a paused lane
    may still be yielded (the dispatcher queues them), or handed back to the broker.
    """

    def pause(self, lane: Hashable) -> None:
        """Stop yielding messages of ``lane`` until :meth:`resume` (idempotent)."""

    def resume(self, lane: Hashable) -> None:
        """Yield messages of ``lane`` again (idempotent; a lane no longer held is fine)."""


@runtime_checkable
class LeaseExtension(Protocol):
    """A consumer whose broker redelivers a message held too long, and that can say "still
    working on it" (Redis Streams: XCLAIM to reset the idle time)."""

    async def extend(self, message: Message) -> None:
        """Keep ``message`` from being redelivered elsewhere for another lease period."""


@runtime_checkable
class ReadAhead(Protocol):
    """A consumer that sizes what it takes from the broker ahead of handling.

    The dispatcher calls :meth:`configure` (when the consumer has it) once, after
    ``subscribe`` and before ``start``, so that what the consumer buffers follows the
    dispatcher's ``max_in_flight`` (RabbitMQ prefetch, Redis Streams ``COUNT``, Kafka
    ``max_records``) unless the user set it explicitly; a disagreeing explicit setting is
    logged once.
    """

    def configure(self, *, max_in_flight: int) -> None:
        """Take ahead no more than about ``max_in_flight`` messages."""


class Acknowledger:
    """Given to handlers under the manual acknowledgement policy.

    Declare a handler parameter annotated ``Acknowledger`` and call :meth:`ack` or
    :meth:`nack` yourself; Dispytch will not settle the message for you.
    """

    __slots__ = ("_consumer", "_message", "_on_settled", "settled")

    def __init__(
        self,
        consumer: Consumer,
        message: Message,
        on_settled: Callable[[Message], object] | None = None,
    ) -> None:
        self._consumer = consumer
        self._message = message
        self._on_settled = on_settled
        self.settled = False

    def _settle(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        if self._on_settled is not None:
            # The dispatcher forgets the message, so a stop that cancels the handler
            # afterwards does not settle it a second time (RabbitMQ closes the channel on
            # a second ack/nack of one delivery).
            self._on_settled(self._message)
        return True

    async def ack(self) -> None:
        """Acknowledge the message (it will not be delivered again)."""
        if self._settle():
            await self._consumer.ack(self._message)

    async def nack(self, *, requeue: bool = True) -> None:
        """Hand the message back (``requeue=True``) or reject it (``requeue=False``)."""
        if self._settle():
            await self._consumer.nack(self._message, requeue=requeue)
