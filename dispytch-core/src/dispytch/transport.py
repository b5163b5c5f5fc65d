"""The contract between Dispytch and a transport.

A transport knows bytes and its broker, nothing of pydantic or handlers. It supplies a
:class:`Producer` that sends :class:`OutgoingMessage` records and a :class:`Consumer`
that yields :class:`Message` objects and acknowledges them when the dispatcher says so.

:class:`Message`, :class:`EncodedHeaders` and the ``HEADER_*`` names live on the ground
floor, :mod:`dispytch.message`, and are re-exported here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from dispytch.message import (
    HEADER_CONTENT_TYPE,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_ORIGINAL_ROUTE,
    HEADER_TIMESTAMP,
    EncodedHeaders,
    Message,
)
from dispytch.routes import EventRoute, EventSubscription

__all__ = [
    "DEFAULT_CAPABILITIES",
    "HEADER_CONTENT_TYPE",
    "HEADER_DEAD_LETTERED_AT",
    "HEADER_ERROR_ATTEMPTS",
    "HEADER_ERROR_MESSAGE",
    "HEADER_ERROR_TYPE",
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "HEADER_ORIGINAL_ROUTE",
    "HEADER_TIMESTAMP",
    "Acknowledger",
    "Capabilities",
    "Consumer",
    "EncodedHeaders",
    "LanePausing",
    "LeaseExtension",
    "Message",
    "OutgoingMessage",
    "Producer",
    "capabilities_of",
]


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
    ``subscribe`` and before ``start``, so that what the consumer buffers follows what the
    dispatcher may hold taken and unsettled (RabbitMQ prefetch, Redis Streams ``COUNT``,
    Kafka ``max_records``) unless the user set it explicitly; a disagreeing explicit
    setting is logged once. That number is the dispatcher's ``max_in_flight``, and under
    ``AckPolicy.MANUAL`` ``max_unsettled - 1 + max_in_flight``
    (:attr:`EventDispatcher.read_ahead <dispytch.EventDispatcher.read_ahead>`).
    """

    def configure(self, *, max_in_flight: int) -> None:
        """Take ahead no more than about ``max_in_flight`` messages."""


class Acknowledger:
    """Given to handlers under the manual acknowledgement policy.

    Declare a handler parameter annotated ``Acknowledger`` and call :meth:`ack` or
    :meth:`nack` yourself; Dispytch will not settle the message for you. It may outlive
    the handler (a task the handler started can settle it later): until then the message
    is held, and counts against the dispatcher's ``max_unsettled``.
    """

    __slots__ = ("_consumer", "_message", "_on_settled", "held", "settled")

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
        #: Set by :meth:`hold`: the handler keeps the message unsettled on purpose.
        self.held = False

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

    def hold(self) -> None:
        """Say that the handler returns with the message unsettled on purpose (a task it
        started settles it later): the dispatcher holds it as usual, counted in
        ``stats["held_unsettled"]`` and against ``max_unsettled``, without its one-time
        warning about a message its handlers neither acked nor nacked."""
        self.held = True

    def claim(self) -> bool:
        """Take the settling over from this acknowledger: its later :meth:`ack` and
        :meth:`nack` do nothing. ``True`` when nothing had settled the message yet (the
        dispatcher claims what is left on stop, and hands it back itself)."""
        return self._settle()

    async def ack(self) -> None:
        """Acknowledge the message (it will not be delivered again)."""
        if self._settle():
            await self._consumer.ack(self._message)

    async def nack(self, *, requeue: bool = True) -> None:
        """Hand the message back (``requeue=True``) or reject it (``requeue=False``)."""
        if self._settle():
            await self._consumer.nack(self._message, requeue=requeue)
