"""The RabbitMQ transport's options: one model for URL query strings and keyword arguments.

This module never imports aio-pika (``dispytch plugins`` lists the options cheaply).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dispytch.errors import ConfigError
from dispytch.options import TransportOptions
from dispytch.rabbitmq.routes import DEFAULT_TOPIC_EXCHANGE
from pydantic import Field

#: Query parameters of the URL that aio-pika and aiormq read themselves (connection
#: settings, TLS files). Dispytch passes them through untouched.
CLIENT_URL_OPTIONS = (
    "heartbeat",
    "name",
    "auth",
    "cafile",
    "capath",
    "cadata",
    "keyfile",
    "certfile",
    "no_verify_ssl",
    "reconnect_interval",
    "fail_fast",
    "interleave",
    "happy_eyeballs_delay",
)

#: The producer's and the consumer's options (one URL may configure both sides).
PRODUCER_OPTIONS = ("topic_exchange", "timeout", "persistent", "mandatory", "connect_timeout")
CONSUMER_OPTIONS = (
    "queue",
    "group",
    "prefetch_count",
    "topic_exchange",
    "ordered",
    "delayed_requeue",
    "connect_timeout",
)

_SCHEMES = ("amqp", "amqps")


class RabbitMQOptions(TransportOptions):
    """Options of :class:`~dispytch.rabbitmq.RabbitMQProducer` and
    :class:`~dispytch.rabbitmq.RabbitMQConsumer`, alike in a URL's query string
    (``amqp://host/?queue=billing&prefetch_count=50``) and as keyword arguments.
    """

    queue: str | None = Field(
        None,
        description=(
            "Consumer: the queue of subscriptions that name none (the consumer group: "
            "consumers of one queue share its messages)."
        ),
    )
    group: str | None = Field(None, description="Consumer: another name for queue.")
    prefetch_count: int | None = Field(
        None,
        ge=1,
        description=(
            "Consumer: unacknowledged deliveries the broker sends ahead (basic.qos). "
            "Default: the dispatcher's max_in_flight (64 before a dispatcher says)."
        ),
    )
    topic_exchange: str = Field(
        DEFAULT_TOPIC_EXCHANGE,
        description="Where TopicRoute events go and TopicSubscription queues bind.",
    )
    ordered: bool = Field(
        False, description="Consumer: hand one queue's messages over in order (lane = queue)."
    )
    delayed_requeue: bool = Field(
        True,
        description=(
            "Consumer: nack(requeue=True, delay=s) parks the delivery in an auto-expiring "
            "delay queue (x-message-ttl, dead-lettered back through the default exchange) "
            "instead of holding it in the process."
        ),
    )
    timeout: float = Field(
        30.0,
        gt=0,
        description="Producer: seconds a send may take in all (reconnection included).",
    )
    persistent: bool = Field(True, description="Producer: delivery mode 2 (written to disk).")
    mandatory: bool = Field(
        True,
        description=(
            "Producer: a message no queue is bound for is returned and raises EmitError "
            "instead of vanishing."
        ),
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for the first connection (URL/factory)."
    )

    def queue_name(self) -> str | None:
        """``queue``, or ``group`` when only that was given.

        Raises:
            ConfigError: Both given, and different.
        """
        if self.queue is not None and self.group is not None and self.queue != self.group:
            raise ConfigError(
                f"queue={self.queue!r} and group={self.group!r} name two queues.\n"
                "Give one of them (group is another name for queue)."
            )
        return self.queue if self.queue is not None else self.group


def split_url(
    url: str, own: tuple[str, ...], *, other_side: tuple[str, ...] = ()
) -> tuple[str, dict[str, str]]:
    """Separate Dispytch's query parameters from aio-pika's.

    Returns the URL without ``own`` and ``other_side`` keys, and ``own``'s values.

    Raises:
        ConfigError: A scheme that is not ``amqp``/``amqps``, or a query parameter that
            neither Dispytch nor aio-pika knows (naming the closest known one).
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES:
        raise ConfigError(
            f"{url!r} is not a RabbitMQ URL.\n"
            "Write it as amqp://user:password@host:5672/vhost (or amqps:// for TLS)."
        )
    known = (*own, *other_side, *CLIENT_URL_OPTIONS)
    mine: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in own:
            mine[key] = value
        elif key in other_side:
            continue
        elif key in CLIENT_URL_OPTIONS:
            rest.append((key, value))
        else:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown RabbitMQ URL option {key!r}.{hint}\n"
                f"Known options: {', '.join(sorted(set(known)))}."
            )
    return urlunsplit(parts._replace(query=urlencode(rest))), mine


def parse(
    url: str | None, side: tuple[str, ...], other: tuple[str, ...], kwargs: Mapping[str, Any]
) -> tuple[str | None, RabbitMQOptions]:
    """The URL for aio-pika and the validated options of one side (producer/consumer).

    Raises:
        ConfigError: Unknown or invalid options, or options of the other side given as
            keyword arguments.
    """
    wrong = [k for k in kwargs if k in RabbitMQOptions.names() and k not in side]
    if wrong:
        raise ConfigError(
            f"{', '.join(wrong)} {'is not an option' if len(wrong) == 1 else 'are not options'}"
            f" of this side.\nThis side takes: {', '.join(side)}."
        )
    clean = None
    query: dict[str, str] = {}
    if url is not None:
        clean, query = split_url(url, side, other_side=tuple(o for o in other if o not in side))
    return clean, RabbitMQOptions.parse(query, **kwargs)
