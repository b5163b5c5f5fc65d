"""The RabbitMQ wire format of Dispytch messages, both ways (one module for producer and
consumer, so the two cannot drift apart).

Dispytch's own headers travel as the standard AMQP properties they are (``content_type``,
``message_id``, ``type``): other AMQP clients read them there, and the header table, which
the client encodes and decodes in Python, shrinks. ``app_id = "dispytch"`` marks such a
message so the consumer restores exactly these headers. A message key travels in the
``dispytch-key`` header as an AMQP byte array (any bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiormq.abc import DeliveredMessage
from dispytch.rabbitmq.routes import RabbitMQEventRoute
from dispytch.transport import (
    HEADER_CONTENT_TYPE,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_ORIGINAL_ROUTE,
    Message,
    OutgoingMessage,
)
from pamqp.commands import Basic

#: Header carrying ``OutgoingMessage.key`` (RabbitMQ has no partitioning key of its own).
HEADER_KEY = "dispytch-key"
#: Header of a delayed requeue's copy: the delivery attempt its next delivery is (a copy
#: is a new message to the broker, which counts its deliveries from the start again).
HEADER_ATTEMPT = "dispytch-attempt"
#: Headers of a delayed requeue's copy: the exchange and routing key it was first
#: delivered with (dead-lettering back replaces them with ``""`` and the queue's name).
HEADER_REQUEUED_EXCHANGE = "dispytch-requeued-exchange"
HEADER_REQUEUED_ROUTING_KEY = "dispytch-requeued-routing-key"
_REQUEUE_HEADERS = (HEADER_ATTEMPT, HEADER_REQUEUED_EXCHANGE, HEADER_REQUEUED_ROUTING_KEY)
#: ``app_id`` of messages whose Dispytch headers travel as AMQP properties.
APP_ID = "dispytch"

PERSISTENT = 2
TRANSIENT = 1


def properties(
    message: OutgoingMessage, route: RabbitMQEventRoute | None, *, persistent: bool
) -> Basic.Properties:
    """The AMQP properties (and header table) of an outgoing message."""
    headers: dict[str, Any] = dict(message.headers)
    content_type = headers.get(HEADER_CONTENT_TYPE)
    event_id = headers.get(HEADER_EVENT_ID)
    event_type = headers.get(HEADER_EVENT_TYPE)
    app_id = None
    if content_type is not None and event_id is not None and event_type is not None:
        del headers[HEADER_CONTENT_TYPE], headers[HEADER_EVENT_ID], headers[HEADER_EVENT_TYPE]
        app_id = APP_ID
    if message.key is not None:
        headers[HEADER_KEY] = bytearray(message.key)  # AMQP byte array: any bytes travel
    priority = expiration = None
    if route is not None:
        if route.persistent is not None:
            persistent = route.persistent
        priority = route.priority
        if route.expiration_ms is not None:
            expiration = str(route.expiration_ms)
    return Basic.Properties(
        content_type=content_type,
        headers=headers,
        delivery_mode=PERSISTENT if persistent else TRANSIENT,
        message_id=event_id,
        message_type=event_type,
        app_id=app_id,
        priority=priority,
        expiration=expiration,
    )


#: The longest error message a dead letter carries (AMQP headers are not for essays).
ERROR_MESSAGE_LIMIT = 1000


def dead_letter_properties(
    original: Basic.Properties,
    error: BaseException,
    *,
    route: str,
    queue: str,
    exchange: str,
) -> Basic.Properties:
    """The properties of a rejected delivery's dead letter: the original's, with the
    error the failure policy gave up on, where it came from and when.

    As RabbitMQ's own dead-lettering does, ``expiration`` is dropped (a dead letter must
    not expire in the dead-letter queue) and ``x-first-death-reason`` / ``-queue`` /
    ``-exchange`` are set (when not already there); the broker's ``x-death`` array is
    not imitated. ``user_id`` is dropped, since the broker checks it against the
    publishing connection's user.
    """
    headers: dict[str, Any] = _encodable(dict(original.headers or {}))
    headers.setdefault("x-first-death-reason", "rejected")
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-exchange", exchange)
    headers[HEADER_ERROR_TYPE] = f"{type(error).__module__}.{type(error).__qualname__}"
    headers[HEADER_ERROR_MESSAGE] = str(error)[:ERROR_MESSAGE_LIMIT]
    headers[HEADER_ORIGINAL_ROUTE] = route
    headers[HEADER_DEAD_LETTERED_AT] = datetime.now(UTC).isoformat()
    return _copy(original, headers, original.delivery_mode or PERSISTENT)


def delayed_properties(
    original: Basic.Properties, *, attempt: int, exchange: str, routing_key: str
) -> Basic.Properties:
    """The properties of a delayed requeue's copy: the original's, with the attempt its
    next delivery is in ``dispytch-attempt`` and where it was first delivered from (kept
    from an earlier copy's headers) in ``dispytch-requeued-exchange`` /
    ``-routing-key``.

    ``expiration`` is dropped: it would shorten the delay (and a per-message TTL expires
    only at the head of a queue); ``user_id`` too, since the broker checks it against the
    publishing connection's user.
    """
    headers: dict[str, Any] = _encodable(dict(original.headers or {}))
    headers[HEADER_ATTEMPT] = attempt
    headers.setdefault(HEADER_REQUEUED_EXCHANGE, exchange)
    headers.setdefault(HEADER_REQUEUED_ROUTING_KEY, routing_key)
    return _copy(original, headers, original.delivery_mode)


def _copy(
    original: Basic.Properties, headers: dict[str, Any], delivery_mode: int | None
) -> Basic.Properties:
    """``original``'s properties for a copy this consumer publishes, with ``headers`` and
    ``delivery_mode``; ``expiration`` and ``user_id`` are not carried over."""
    return Basic.Properties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=delivery_mode,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        message_type=original.message_type,
        app_id=original.app_id,
    )


def _encodable(value: Any) -> Any:
    """``value`` with every ``bytes`` (a long string that is not UTF-8, as pamqp decodes
    it) turned into a ``bytearray`` (an AMQP byte array), in nested tables and arrays too,
    so that pamqp can encode it again."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {k: _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    return value


def _text(value: Any, default: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return default


def text_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """AMQP header tables hold numbers, bytes, lists and tables; Dispytch wants text.

    Bytes that are not valid UTF-8 are decoded with replacement characters: a header
    never makes a message unreadable.
    """
    if not raw:
        return {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, (bytes, bytearray)):
            out[k] = bytes(v).decode("utf-8", "replace")
        else:
            out[k] = str(v)
    return out


def message(
    delivered: DeliveredMessage, queue: str, *, token: Any, ordered: bool, delivery_tag: int
) -> Message:
    """The :class:`~dispytch.transport.Message` of one delivery."""
    delivery: Any = delivered.delivery
    props = delivered.header.properties
    raw = props.headers
    headers = text_headers(raw)
    key = None
    first: Any = None  # the attempt a delayed requeue's copy arrives as
    if raw:
        if HEADER_KEY in raw:
            k = raw[HEADER_KEY]
            key = bytes(k) if isinstance(k, (bytes, bytearray)) else str(k).encode()
            del headers[HEADER_KEY]
        if HEADER_ATTEMPT in raw:
            first = raw[HEADER_ATTEMPT]
            for name in _REQUEUE_HEADERS:
                headers.pop(name, None)
    if props.app_id == APP_ID:  # see properties(): these travel as AMQP properties
        for name, value in (
            (HEADER_CONTENT_TYPE, props.content_type),
            (HEADER_EVENT_ID, props.message_id),
            (HEADER_EVENT_TYPE, props.message_type),
        ):
            if value is not None:
                headers[name] = value
    elif HEADER_CONTENT_TYPE not in headers and props.content_type:
        headers[HEADER_CONTENT_TYPE] = props.content_type
    count = raw.get("x-delivery-count") if raw else None
    redelivered = bool(delivery.redelivered)
    # Quorum queues count earlier deliveries; classic queues only flag a redelivery.
    attempt = int(count) + 1 if isinstance(count, int) else 2 if redelivered else 1
    routing_key = delivery.routing_key or ""
    exchange = delivery.exchange
    if isinstance(first, int) and first > 1:
        attempt += first - 1
        if exchange == "" and routing_key == queue:
            # Back from a delay queue: delivered as it was before it was parked.
            assert raw is not None
            exchange = _text(raw.get(HEADER_REQUEUED_EXCHANGE), exchange)
            routing_key = _text(raw.get(HEADER_REQUEUED_ROUTING_KEY), routing_key)
    return Message(
        delivered.body,
        route=routing_key,
        headers=headers,
        key=key,
        attempt=attempt,
        metadata={
            "exchange": exchange,
            "queue": queue,
            "routing_key": routing_key,
            "delivery_tag": delivery_tag,
            "redelivered": redelivered,
            "message_id": props.message_id,
            "consumer_tag": delivery.consumer_tag,
        },
        lane=queue if ordered else None,
        token=token,
    )
