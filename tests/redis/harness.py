"""Conformance harnesses for Redis Pub/Sub and Redis Streams."""

from __future__ import annotations

import redis.asyncio as aredis
from dispytch.redis import (
    RedisConsumer,
    RedisEventRoute,
    RedisEventSubscription,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamProducer,
    RedisStreamRoute,
    RedisStreamSubscription,
)
from dispytch.routes import EventRoute, EventSubscription
from dispytch.testing.harness import TransportHarness
from dispytch.transport import Consumer, Producer
from redis.exceptions import ResponseError

from tests.redis.conftest import REDIS_URL, STREAMS_URL


class RedisPubSubHarness(TransportHarness):
    """Pub/Sub: at-most-once, keys travel in the envelope, channel patterns."""

    name = "redis-pubsub"
    at_least_once = False
    supports_keys = True
    supports_patterns = True

    def route(self, name: str) -> EventRoute:
        return RedisEventRoute(channel=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        return RedisEventSubscription(channel=name)

    def producer(self) -> Producer:
        return RedisProducer.from_url(REDIS_URL)

    def consumer(self, *, group: str) -> Consumer:
        return RedisConsumer.from_url(REDIS_URL)


class RedisStreamsHarness(TransportHarness):
    """Streams: consumer groups, XAUTOCLAIM redelivery, stream patterns found by SCAN."""

    name = "redis-streams"
    at_least_once = True
    supports_keys = True
    supports_patterns = True
    redelivery_timeout = 10.0

    def __init__(self) -> None:
        self.streams: set[str] = set()

    async def prepare(self, name: str, *, group: str) -> None:
        self.streams.add(name)
        client = aredis.Redis.from_url(REDIS_URL)
        try:
            await client.xgroup_create(name, group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        finally:
            await client.aclose()

    def route(self, name: str) -> EventRoute:
        self.streams.add(name)
        return RedisStreamRoute(stream=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        self.streams.add(name)
        return RedisStreamSubscription(stream=name, group=group)

    def producer(self) -> Producer:
        return RedisStreamProducer.from_url(STREAMS_URL)

    def consumer(self, *, group: str) -> Consumer:
        return RedisStreamConsumer.from_url(
            STREAMS_URL,
            group=group,
            min_idle_time=2.0,
            claim_interval=0.2,
            block_ms=100,
            discover_interval=0.2,
        )

    async def cleanup(self) -> None:
        if not self.streams:
            return
        client = aredis.Redis.from_url(REDIS_URL)
        try:
            await client.delete(*self.streams)
        finally:
            await client.aclose()
