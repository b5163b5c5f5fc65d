"""RabbitMQ routes, subscriptions and exchange declarations.

This module never imports aio-pika: event classes name their routes at import time, and
plugin discovery must stay cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dispytch.routes import EventRoute, EventSubscription

if TYPE_CHECKING:
    from dispytch.transport import Message

#: The exchange a transport-neutral :class:`~dispytch.routes.TopicRoute` publishes to and a
#: :class:`~dispytch.routes.TopicSubscription` binds to, unless configured otherwise. Every
#: RabbitMQ broker has it (durable, type ``topic``), so topics work without declaring
#: anything, ``*``/``#``/``{name}`` patterns work, and every queue bound to a topic gets
#: its own copy (consumer groups), as on the other transports.
DEFAULT_TOPIC_EXCHANGE = "amq.topic"

ExchangeType = Literal["direct", "topic", "fanout", "headers"]


@dataclass(frozen=True, kw_only=True)
class RabbitMQEventRoute(EventRoute):
    """Where an event is published on RabbitMQ: an exchange and a routing key.

    Both may hold ``{field}`` placeholders filled from the event when it is emitted
    (``routing_key="user.{user_id}.created"``), so one event class can fan out over many
    routing keys that topic subscriptions then match.

    Attributes:
        exchange: The exchange name. ``""`` is the broker's default exchange, which routes
            to the queue named by the routing key.
        routing_key: The routing key (ignored by fanout and headers exchanges).
        persistent: Override the producer's delivery mode for this route (``None``: the
            producer's default, persistent unless configured otherwise).
        priority: AMQP message priority, for queues declared with ``x-max-priority``.
        expiration_ms: Per-message TTL in milliseconds.
    """

    exchange: str = ""
    routing_key: str = ""
    persistent: bool | None = None
    priority: int | None = None
    expiration_ms: int | None = None

    address_fields: ClassVar[tuple[str, ...]] = ("exchange", "routing_key")

    @property
    def address(self) -> str:
        """``exchange/routing_key`` (``(default)`` for the default exchange)."""
        return f"{self.exchange or '(default)'}/{self.routing_key}"


@dataclass(frozen=True, kw_only=True)
class RabbitMQEventSubscription(EventSubscription):
    """Which RabbitMQ deliveries a handler receives.

    ``routing_key`` is matched against each delivery's routing key (``Message.route``):
    literal keys, AMQP wildcards ``*`` (one word) and ``#`` (zero or more words), and
    named segments such as ``"user.{user_id}.created"`` whose values are injected into
    the handler. ``exchange`` and ``queue`` narrow further: a delivery must have been
    published to that exchange and consumed from that queue.

    A consumer built from a URL also *creates* what the subscription describes: it
    declares the queue (durable) and binds it to the exchange with the routing key (named
    segments become ``*``). A consumer over aio-pika queues you declared and bound
    yourself binds nothing and only filters.

    Attributes:
        exchange: Only deliveries published to this exchange (``None``: any).
        queue: Only deliveries from this queue. ``None``: deliveries of any queue the
            consumer reads (a URL-built consumer declares and binds its own ``queue`` for
            it); name the queue when one consumer reads several.
        routing_key: The routing-key pattern (default ``"#"``: any key, also the empty
            key that fanout and headers exchanges often carry).
        binding_arguments: Arguments of the binding a URL-built consumer creates: for a
            headers exchange, e.g. ``{"x-match": "all", "region": "eu"}``.
    """

    exchange: str | None = None
    queue: str | None = None
    routing_key: str = "#"
    binding_arguments: Mapping[str, Any] | None = field(default=None, hash=False)

    filters_messages: ClassVar[bool] = True

    @property
    def route_pattern(self) -> str:
        return self.routing_key

    def accepts(self, message: Message) -> bool:
        """True when the delivery came through this subscription's exchange and queue."""
        meta = message.metadata
        if self.exchange is not None and meta.get("exchange") != self.exchange:
            return False
        return self.queue is None or meta.get("queue") == self.queue


@dataclass(frozen=True, kw_only=True)
class RabbitMQExchange:
    """An exchange for a producer or a URL-built consumer to declare at start.

    Dispytch never declares an exchange you did not describe: a route or subscription
    naming an exchange that is not declared here must name one that already exists
    (it is checked passively, and the error says so). Declaring an exchange that exists
    with other settings fails with the broker's ``PRECONDITION_FAILED``, reported as is.

    Attributes:
        name: The exchange name (dots allowed: ``"user.events"``).
        type: ``"direct"``, ``"topic"``, ``"fanout"`` or ``"headers"`` (no default: the
            type decides how keys route, so say it).
        durable: Survive a broker restart (default ``True``).
        auto_delete: Delete when the last binding goes.
        internal: Only reachable through exchange-to-exchange bindings.
        arguments: Extra declaration arguments (``alternate-exchange``, ...).
    """

    name: str
    type: ExchangeType
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.type not in ("direct", "topic", "fanout", "headers"):
            raise ValueError(
                f"RabbitMQExchange {self.name!r} has type {self.type!r}; use one of "
                "'direct', 'topic', 'fanout', 'headers'."
            )
        if not self.name or self.name.startswith("amq."):
            raise ValueError(
                f"Cannot declare the exchange {self.name!r}: the default exchange and "
                "'amq.*' exchanges belong to the broker. Use them without declaring."
            )
