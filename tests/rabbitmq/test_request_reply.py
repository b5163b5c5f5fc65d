"""Request/reply conformance against a real RabbitMQ broker (direct reply-to), in both
construction modes, on the same harness as the transport suite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dispytch.testing.request_reply import RequestReplyConformance

from .test_conformance import RabbitMQHarness

pytestmark = pytest.mark.broker


class TestRabbitMQRequestReply(RequestReplyConformance):
    timeout = 15.0

    @pytest.fixture(params=["url", "client"])
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[RabbitMQHarness]:
        # Unordered consumers (the default; the concurrency case runs 100 requests of
        # one queue at once), the prefetch following the dispatcher's max_in_flight.
        h = RabbitMQHarness(request.param, ordered=False)
        await h.open()
        yield h
        await h.cleanup()
        await asyncio.sleep(0)
