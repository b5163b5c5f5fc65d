"""Routes and subscriptions of the Redis transports.

This module does not import ``redis``: event classes can name their route without
pulling in the client library.

* Pub/Sub (at-most-once): :class:`RedisEventRoute` publishes to a channel and
  :class:`RedisEventSubscription` subscribes to a channel or a channel pattern
  (``"user.*"``, ``"user.{user_id}.events"``, which the consumer turns into a
  ``PSUBSCRIBE`` glob; named segments are injected into handlers).
* Streams (at-least-once): :class:`RedisStreamRoute` appends to a stream with ``XADD``
  and :class:`RedisStreamSubscription` reads it in a consumer group with ``XREADGROUP``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dispytch.routes import EventRoute, EventSubscription

__all__ = [
    "RedisEventRoute",
    "RedisEventSubscription",
    "RedisStreamRoute",
    "RedisStreamSubscription",
]


@dataclass(frozen=True, kw_only=True)
class RedisEventRoute(EventRoute):
    """Publish to a Redis Pub/Sub channel (``PUBLISH``).

    Pub/Sub is at-most-once: only clients subscribed at the moment of publishing get the
    message, and nothing is redelivered. Use :class:`RedisStreamRoute` when a message
    must survive a consumer being down.

    Attributes:
        channel: The channel, ``{field}`` placeholders allowed (``"user.{user_id}"``).
    """

    channel: str
    address_fields: ClassVar[tuple[str, ...]] = ("channel",)


@dataclass(frozen=True, kw_only=True)
class RedisEventSubscription(EventSubscription):
    """Receive what is published to a channel, or to every channel matching a pattern.

    A static name becomes ``SUBSCRIBE channel``; a pattern (``"user.*"``, ``"audit.#"``,
    ``"user.{user_id}.events"``) becomes ``PSUBSCRIBE`` with its glob, and the concrete
    channel is matched again by Dispytch so ``{user_id}`` reaches the handler.

    Attributes:
        channel: A channel name or a route pattern.
    """

    channel: str

    @property
    def route_pattern(self) -> str:
        return self.channel


@dataclass(frozen=True, kw_only=True)
class RedisStreamRoute(EventRoute):
    """Append to a Redis Stream (``XADD``): at-least-once delivery to consumer groups.

    The entry has the fields ``payload`` (the encoded event), ``headers`` (a JSON object
    of text headers, omitted when empty) and ``key`` (only when the route has a key).

    Attributes:
        stream: The stream key, ``{field}`` placeholders allowed.
        maxlen: Trim the stream to about this many entries on every ``XADD``
            (``MAXLEN``); ``None`` keeps everything. Trimming drops the oldest entries
            even when a group has not read them yet: size it above your worst backlog.
        approximate: Trim with ``MAXLEN ~`` (whole radix-tree nodes, much cheaper) rather
            than to the exact count.
    """

    stream: str
    maxlen: int | None = None
    approximate: bool = True
    address_fields: ClassVar[tuple[str, ...]] = ("stream",)

    def __post_init__(self) -> None:
        if self.maxlen is not None and self.maxlen < 1:
            raise ValueError(
                f"RedisStreamRoute(maxlen={self.maxlen!r}) would trim the stream to nothing. "
                "Pass a positive maxlen, or None to keep every entry."
            )


@dataclass(frozen=True, kw_only=True)
class RedisStreamSubscription(EventSubscription):
    """Read a stream as a member of a consumer group (``XREADGROUP``).

    Members of one group share the entries; every group gets each entry. The group is
    created (with ``MKSTREAM``) when the consumer starts if it does not exist yet.

    Attributes:
        stream: The stream key, or a pattern (``"orders.*"``, ``"orders.{region}"``)
            matched against existing streams (found with ``SCAN``, see
            :class:`~dispytch.redis.RedisStreamConsumer`).
        group: The consumer group; ``None`` uses the consumer's ``group`` option.
        consumer: This member's name in the group; ``None`` uses the consumer's own
            (by default unique per process, so a restarted process is a new member and
            the entries its predecessor left pending are recovered by ``XAUTOCLAIM``).
    """

    stream: str
    group: str | None = None
    consumer: str | None = None

    @property
    def route_pattern(self) -> str:
        return self.stream
