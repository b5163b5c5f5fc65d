"""Dispytch plugin: registers the Redis Pub/Sub and Redis Streams transports.

The URL scheme chooses the delivery model:

* ``redis://`` / ``rediss://`` -> Pub/Sub (at-most-once). ``TopicRoute`` -> channel.
* ``redis+streams://`` / ``rediss+streams://`` -> Streams with consumer groups
  (at-least-once). ``TopicRoute`` -> stream.

The ``redis://`` / ``rediss://`` journal store for durable functions
(:class:`~dispytch.redis.journal.RedisJournalStore`) is registered here too.

Both producers publish ``RedisEventRoute`` to channels and ``RedisStreamRoute`` to
streams, whatever the scheme. This module does not import ``redis``: the factories do,
when called.
"""

from __future__ import annotations

from typing import Any

from dispytch.plugins.hookspecs import hookimpl
from dispytch.plugins.records import JournalStoreSpec, TransportSpec
from dispytch.transport import Capabilities

#: What the Pub/Sub consumer offers: nothing is kept, so nothing can be redelivered.
PUBSUB_CAPABILITIES = Capabilities(
    delivery="at-most-once", ordered_lanes=True, requeue=False, request_reply=True
)
#: What the Streams consumer offers (ordered lanes when ``ordered=true``; lane = stream).
STREAMS_CAPABILITIES = Capabilities(
    delivery="at-least-once",
    ordered_lanes=True,
    requeue=True,
    delayed_requeue=True,
    pause_lanes=True,
    lease_extension=True,
    request_reply=True,
)


def pubsub_producer(url: str, **options: Any) -> Any:
    """``RedisProducer.from_url`` (imports redis)."""
    from dispytch.redis.producer import RedisProducer

    return RedisProducer.from_url(url, **options)


def pubsub_consumer(url: str, **options: Any) -> Any:
    """``RedisConsumer.from_url`` (imports redis)."""
    from dispytch.redis.pubsub import RedisConsumer

    return RedisConsumer.from_url(url, **options)


def streams_producer(url: str, **options: Any) -> Any:
    """``RedisStreamProducer.from_url`` (imports redis)."""
    from dispytch.redis.producer import RedisStreamProducer

    return RedisStreamProducer.from_url(url, **options)


def streams_consumer(url: str, **options: Any) -> Any:
    """``RedisStreamConsumer.from_url`` (imports redis)."""
    from dispytch.redis.streams import RedisStreamConsumer

    return RedisStreamConsumer.from_url(url, **options)


@hookimpl
def dispytch_transports() -> list[TransportSpec]:
    from dispytch.redis._options import RedisOptions, RedisStreamOptions
    from dispytch.redis.routes import (
        RedisEventRoute,
        RedisEventSubscription,
        RedisStreamRoute,
        RedisStreamSubscription,
    )

    return [
        TransportSpec(
            name="redis",
            schemes=("redis", "rediss"),
            producer_factory=pubsub_producer,
            consumer_factory=pubsub_consumer,
            description=(
                "Redis Pub/Sub: at-most-once (no acks, no redelivery; a failed or unheard "
                "message is logged and gone); redis+streams:// for at-least-once"
            ),
            route_types=(RedisEventRoute, RedisStreamRoute),
            subscription_types=(RedisEventSubscription,),
            capabilities=PUBSUB_CAPABILITIES,
            options_model=RedisOptions,
        ),
        TransportSpec(
            name="redis-streams",
            schemes=("redis+streams", "rediss+streams"),
            producer_factory=streams_producer,
            consumer_factory=streams_consumer,
            description=(
                "Redis Streams with consumer groups: at-least-once (XACK after handling, "
                "XAUTOCLAIM recovery, max_deliveries to a dead-letter stream)"
            ),
            route_types=(RedisStreamRoute, RedisEventRoute),
            subscription_types=(RedisStreamSubscription,),
            capabilities=STREAMS_CAPABILITIES,
            options_model=RedisStreamOptions,
        ),
    ]


def journal_store(url: str) -> Any:
    """``RedisJournalStore.from_url`` (imports redis; does not connect)."""
    from dispytch.redis.journal import RedisJournalStore

    return RedisJournalStore.from_url(url)


@hookimpl
def dispytch_journal_stores() -> list[JournalStoreSpec]:
    return [
        JournalStoreSpec(
            name="redis",
            schemes=("redis", "rediss"),
            factory=journal_store,
            description=(
                "Redis journal for durable functions (Lua-scripted conditional writes; "
                "refuses a server without AOF unless allow_volatile=true)"
            ),
        )
    ]
