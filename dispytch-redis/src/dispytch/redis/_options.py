"""The options of the Redis transports: one pydantic model per transport.

:class:`RedisOptions` (``redis://``) and :class:`RedisStreamOptions` (``redis+streams://``)
are read alike from a URL's query string and from keyword arguments
(:meth:`~dispytch.options.TransportOptions.parse`): one boolean vocabulary, unknown names
an error naming the closest known one. Each model holds the options of both sides of its
transport (producer and consumer), so that one URL can configure an emitter and a
dispatcher; each class takes its own fields from it (:func:`fields_of`). Query parameters
that are no Dispytch option go to redis-py (``?socket_timeout=5``), see :func:`split_url`.

This module does not import ``redis``: ``TransportSpec.options_model`` publishes these
models to ``dispytch plugins`` without loading the client library.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dispytch.errors import ConfigError
from dispytch.options import TransportOptions
from pydantic import Field

__all__ = [
    "PRODUCER_FIELDS",
    "PUBSUB_CONSUMER_FIELDS",
    "STREAM_CONSUMER_FIELDS",
    "RedisOptions",
    "RedisStreamOptions",
    "fields_of",
    "split_url",
]

#: URL schemes Dispytch serves, mapped to the scheme redis-py understands.
SCHEMES = {
    "redis": "redis",
    "rediss": "rediss",
    "redis+streams": "redis",
    "rediss+streams": "rediss",
}


class _RedisCommonOptions(TransportOptions):
    """What both Redis transports take: the producer's options and a few consumer ones."""

    warn_no_receivers: bool = Field(
        True, description="Producer: log a WARNING when a Pub/Sub message reached nobody."
    )
    delivery_timeout: float | None = Field(
        10.0,
        gt=0,
        description="Producer: seconds to wait for Redis to answer one send or one "
        "pipeline round trip; none relies on the client's socket_timeout.",
    )
    ordered: bool = Field(
        False, description="Consumer: handle one channel's (or stream's) messages in order."
    )
    close_timeout: float = Field(
        0.75,
        gt=0,
        description="Consumer: seconds close() spends settling with Redis (unsubscribe, "
        "hand back, flush acks) before giving up on an unreachable server.",
    )


class RedisOptions(_RedisCommonOptions):
    """Options of the Redis Pub/Sub transport (``redis://``), producer and consumer."""

    max_buffered: int = Field(
        2000,
        ge=1,
        description="Pub/Sub consumer: messages read ahead of the handlers; beyond that "
        "Redis buffers (up to its client-output-buffer-limit).",
    )
    subscribe_timeout: float = Field(
        10.0, gt=0, description="Pub/Sub consumer: seconds start() waits for confirmations."
    )


class RedisStreamOptions(_RedisCommonOptions):
    """Options of the Redis Streams transport (``redis+streams://``), producer and consumer."""

    group: str = Field("dispytch", min_length=1, description="Consumer group.")
    consumer: str | None = Field(
        None, description="Member name; default unique per process (host-pid-random)."
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="COUNT of each XREADGROUP; default follows the dispatcher's "
        "max_in_flight (at most 100).",
    )
    max_unsettled: int | None = Field(
        None,
        ge=1,
        description="Entries taken from Redis and not yet acknowledged, at most; default "
        "the dispatcher's max_in_flight.",
    )
    block_ms: int = Field(500, ge=1, description="BLOCK of each XREADGROUP, milliseconds.")
    min_idle_time: float = Field(
        30.0, gt=0, description="Seconds pending and untouched before another member takes over."
    )
    claim_interval: float | None = Field(
        None, gt=0, description="Seconds between recovery passes (default min_idle_time / 4)."
    )
    max_deliveries: int | None = Field(
        None, ge=1, description="Deliveries after which a reclaimed entry is given up."
    )
    dead_letter_stream: str | None = Field(
        None, min_length=1, description="Stream receiving given-up and malformed entries."
    )
    start_id: str = Field("$", min_length=1, description="Where a new group starts: $ or 0.")
    discover_interval: float = Field(
        5.0, gt=0, description="Seconds between SCANs for streams matching patterns."
    )


#: The fields each class takes from its transport's model.
PRODUCER_FIELDS = ("warn_no_receivers", "delivery_timeout")
PUBSUB_CONSUMER_FIELDS = ("ordered", "max_buffered", "subscribe_timeout", "close_timeout")
STREAM_CONSUMER_FIELDS = (
    "group",
    "consumer",
    "batch_size",
    "max_unsettled",
    "block_ms",
    "min_idle_time",
    "claim_interval",
    "max_deliveries",
    "dead_letter_stream",
    "start_id",
    "ordered",
    "discover_interval",
    "close_timeout",
)


def fields_of(options: TransportOptions, names: Collection[str]) -> dict[str, Any]:
    """The options among ``names`` that were given (defaults stay the class's own)."""
    return {name: getattr(options, name) for name in names if name in options.model_fields_set}


def split_url(
    url: str, model: type[TransportOptions], kwargs: Mapping[str, Any]
) -> tuple[str, TransportOptions]:
    """Turn a Dispytch Redis URL into a redis-py URL plus the transport's options.

    ``redis+streams://`` becomes ``redis://``; query parameters that are options of
    ``model`` are validated with the keyword arguments (which win), the others stay in
    the URL for redis-py.

    Raises:
        ConfigError: For a scheme that is not a Redis one, or an invalid option.
    """
    parts = urlsplit(url)
    scheme = SCHEMES.get(parts.scheme)
    if scheme is None:
        raise ConfigError(
            f"Not a Redis URL: {url!r}.\n"
            "Use redis://host:port/db (Pub/Sub), redis+streams://host:port/db (Streams), "
            "or rediss:// for TLS."
        )
    known = set(model.names())
    streams_only = set(RedisStreamOptions.names()) - known
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in known:
            ours[name] = value
        elif name in streams_only:
            raise ConfigError(
                f"?{name}= in {url!r} is a Redis Streams option, but {parts.scheme}:// is "
                "Pub/Sub.\nUse redis+streams:// (or rediss+streams://) to read streams."
            )
        else:
            rest.append((name, value))
    options = model.parse(ours, **kwargs)
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), "")), options
