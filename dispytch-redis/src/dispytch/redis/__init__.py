"""Dispytch transports for Redis (redis.asyncio): Pub/Sub and Streams.

* **Pub/Sub** (``redis://``, ``rediss://``), at-most-once: :class:`RedisProducer`,
  :class:`RedisConsumer`, :class:`RedisEventRoute`, :class:`RedisEventSubscription`.
* **Streams** (``redis+streams://``, ``rediss+streams://``), at-least-once with consumer
  groups: :class:`RedisStreamProducer` (or any :class:`RedisProducer` given a
  :class:`RedisStreamRoute`), :class:`RedisStreamConsumer`,
  :class:`RedisStreamSubscription`.

Pass the **asyncio** client (``from redis.asyncio import Redis``), or a callable returning
one; the synchronous one is refused with a TypeError. Options: one pydantic model per
transport (:mod:`dispytch.redis._options`), for URL queries and keyword arguments alike.
The routes are importable without importing ``redis``; the producers and consumers import
it on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dispytch.redis.routes import (
    RedisEventRoute,
    RedisEventSubscription,
    RedisStreamRoute,
    RedisStreamSubscription,
)

if TYPE_CHECKING:
    from dispytch.redis.producer import RedisBatchError, RedisProducer, RedisStreamProducer
    from dispytch.redis.pubsub import RedisConsumer
    from dispytch.redis.streams import RedisStreamConsumer

__all__ = [
    "RedisBatchError",
    "RedisConsumer",
    "RedisEventRoute",
    "RedisEventSubscription",
    "RedisProducer",
    "RedisStreamConsumer",
    "RedisStreamProducer",
    "RedisStreamRoute",
    "RedisStreamSubscription",
]

_LAZY = {
    "RedisBatchError": "dispytch.redis.producer",
    "RedisProducer": "dispytch.redis.producer",
    "RedisStreamProducer": "dispytch.redis.producer",
    "RedisConsumer": "dispytch.redis.pubsub",
    "RedisStreamConsumer": "dispytch.redis.streams",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dispytch.redis' has no attribute {name!r}")
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        if exc.name != "redis":
            raise
        raise ImportError(
            f"dispytch.redis.{name} needs the redis package.\n"
            "Install it with: pip install dispytch-redis"
        ) from exc
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
