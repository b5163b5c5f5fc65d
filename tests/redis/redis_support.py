"""Shared pieces of the Redis tests: URLs, unique names, conformance harnesses.

Imported by bare name (pytest puts this folder on ``sys.path``), so the tests run the
same under ``pytest`` and ``python -m pytest``.
"""

from __future__ import annotations

import os
import uuid

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

REDIS_URL = os.environ.get("DISPYTCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STREAMS_URL = REDIS_URL.replace("redis://", "redis+streams://", 1)


class Names:
    """Unique channel/stream names for one test; the streams are deleted afterwards."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def channel(self, prefix: str = "ch") -> str:
        return f"test.{prefix}.{uuid.uuid4().hex[:10]}"

    def stream(self, prefix: str = "st") -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        self.keys.append(name)
        return name

    async def cleanup(self) -> None:
        if not self.keys:
            return
        client = aredis.Redis.from_url(REDIS_URL)
        try:
            await client.delete(*self.keys)
        finally:
            await client.aclose()


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
