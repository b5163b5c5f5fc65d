"""The transport conformance suite on Redis Streams (full) and Redis Pub/Sub (the cases
at-most-once allows; the suite skips the redelivery ones), each in both construction
modes: clients built from a URL, and the user's own ``redis.asyncio.Redis`` wrapped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispytch.testing.conformance import TransportConformance
from dispytch.testing.harness import Mode

from tests.redis.redis_support import RedisPubSubHarness, RedisStreamsHarness

pytestmark = pytest.mark.broker

MODES: list[Mode] = ["url", "client"]


class TestRedisStreamsConformance(TransportConformance):
    @pytest.fixture(params=MODES)
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[RedisStreamsHarness]:
        h = RedisStreamsHarness(request.param)
        yield h
        await h.cleanup()


class TestRedisPubSubConformance(TransportConformance):
    @pytest.fixture(params=MODES)
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[RedisPubSubHarness]:
        h = RedisPubSubHarness(request.param)
        yield h
        await h.cleanup()
