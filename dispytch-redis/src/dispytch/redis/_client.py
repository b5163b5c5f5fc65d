"""Client checks and URL handling shared by the Redis producers and consumers."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.client import PubSub as AsyncPubSub

#: URL schemes Dispytch serves, mapped to the scheme redis-py understands.
SCHEMES = {
    "redis": "redis",
    "rediss": "rediss",
    "redis+streams": "redis",
    "rediss+streams": "rediss",
}


def check_async_client(client: object, owner: str) -> aredis.Redis:
    """Return ``client`` if it is a usable ``redis.asyncio.Redis``, else raise at once.

    The synchronous client would block the event loop (or fail much later with an
    obscure error), so it is refused when the producer or consumer is built.

    Raises:
        TypeError: For the synchronous client or anything else that is not the asyncio
            client.
        ValueError: For a client that decodes responses to ``str`` (payloads are bytes).
    """
    if isinstance(client, redis.Redis | redis.client.PubSub):
        raise TypeError(
            f"{owner} needs the asyncio Redis client, but got the synchronous "
            f"{type(client).__module__}.{type(client).__qualname__}. Use "
            "`from redis.asyncio import Redis` (redis.asyncio.Redis), not redis.Redis."
        )
    if not isinstance(client, aredis.Redis):
        raise TypeError(
            f"{owner} needs a redis.asyncio.Redis client, got {type(client).__qualname__}. "
            f"Create one with `redis.asyncio.Redis(...)` or use {owner}.from_url(url)."
        )
    check_client_options(client, owner)
    return client


def check_client_options(client: aredis.Redis, owner: str) -> None:
    """Refuse client options the transport cannot work with.

    Raises:
        ValueError: For ``decode_responses=True`` (payloads are bytes).
    """
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise ValueError(
            f"{owner} reads raw bytes, but this Redis client was created with "
            "decode_responses=True. Create the client with decode_responses=False (the "
            "default)."
        )


def check_async_pubsub(pubsub: object, owner: str) -> AsyncPubSub:
    """Return ``pubsub`` if it is the asyncio PubSub, else raise (see above).

    Raises:
        TypeError: For the synchronous PubSub or anything else.
    """
    if isinstance(pubsub, redis.client.PubSub | redis.Redis):
        raise TypeError(
            f"{owner} needs the asyncio PubSub, but got the synchronous "
            f"{type(pubsub).__module__}.{type(pubsub).__qualname__}. Use "
            "`redis.asyncio.Redis(...).pubsub()`, not redis.Redis(...).pubsub()."
        )
    if not isinstance(pubsub, AsyncPubSub):
        raise TypeError(
            f"{owner} needs a redis.asyncio PubSub (`client.pubsub()`) or a "
            f"redis.asyncio.Redis client, got {type(pubsub).__qualname__}."
        )
    kwargs = pubsub.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise ValueError(
            f"{owner} reads raw bytes, but this PubSub's client was created with "
            "decode_responses=True. Create the client with decode_responses=False."
        )
    return pubsub


def split_url(
    url: str,
    options: dict[str, Any],
    known: dict[str, Callable[[str], Any]],
    other_side: Collection[str] = (),
) -> tuple[str, dict[str, Any]]:
    """Turn a Dispytch Redis URL into a redis-py URL plus Dispytch options.

    ``redis+streams://`` becomes ``redis://``; query parameters named in ``known`` are
    taken out (converted with their callable) unless already given in ``options``, the
    rest stay for redis-py (``?socket_timeout=5``), but for those in ``other_side``: the
    options of the consumer when building a producer and the other way round, dropped so
    that one URL can configure both an emitter and a dispatcher.

    Raises:
        ValueError: For a scheme that is not a Redis one.
    """
    parts = urlsplit(url)
    scheme = SCHEMES.get(parts.scheme)
    if scheme is None:
        raise ValueError(
            f"Not a Redis URL: {url!r}. Use redis://host:port/db (Pub/Sub), "
            "redis+streams://host:port/db (Streams), or rediss:// for TLS."
        )
    rest = []
    merged = dict(options)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in other_side and name not in known:
            continue
        if name in known:
            if name not in merged:
                try:
                    merged[name] = known[name](value)
                except ValueError as exc:
                    raise ValueError(
                        f"Bad value {value!r} for ?{name}= in {url!r}: {exc}"
                    ) from None
        else:
            rest.append((name, value))
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(rest), "")), merged


def client_from_url(url: str) -> aredis.Redis:
    """A new asyncio client for a redis-py URL (responses as bytes)."""
    return aredis.Redis.from_url(url, decode_responses=False)


def to_bool(value: str) -> bool:
    """Query-string booleans: 1/0, true/false, yes/no, on/off."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def to_optional_int(value: str) -> int | None:
    """Query-string integers, ``none`` for ``None``."""
    return None if value.strip().lower() in ("", "none") else int(value)
