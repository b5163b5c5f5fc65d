"""Request/reply conformance against a real RabbitMQ broker (direct reply-to), in both
construction modes, on the same harness as the transport suite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dispytch.rabbitmq import RabbitMQConsumer
from dispytch.testing.request_reply import RequestReplyConformance
from dispytch.transport import Consumer

from .conftest import AMQP_URL
from .test_conformance import RabbitMQHarness

pytestmark = pytest.mark.broker


class RequestReplyHarness(RabbitMQHarness):
    """The suite's harness, with the prefetch left to follow the dispatcher's
    ``max_in_flight`` (the concurrency case runs 100 requests at once)."""

    def consumer(self, *, group: str) -> Consumer:
        if self.mode == "url":
            return RabbitMQConsumer.from_url(
                AMQP_URL, queue=self.queue_name(group), queue_arguments=self._arguments(group)
            )
        return super().consumer(group=group)


class TestRabbitMQRequestReply(RequestReplyConformance):
    timeout = 15.0

    @pytest.fixture(params=["url", "client"])
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[RequestReplyHarness]:
        h = RequestReplyHarness(request.param)
        await h.open()
        yield h
        await h.cleanup()
        await asyncio.sleep(0)
