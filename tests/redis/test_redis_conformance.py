"""The transport conformance suite on Redis Streams (full) and Redis Pub/Sub (the cases
at-most-once allows; the suite skips the redelivery ones)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispytch.testing.conformance import TransportConformance
from redis_support import RedisPubSubHarness, RedisStreamsHarness

pytestmark = pytest.mark.broker


class TestRedisStreamsConformance(TransportConformance):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[RedisStreamsHarness]:
        h = RedisStreamsHarness()
        yield h
        await h.cleanup()


class TestRedisPubSubConformance(TransportConformance):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[RedisPubSubHarness]:
        h = RedisPubSubHarness()
        yield h
        await h.cleanup()
