"""Request/reply conformance against Kafka (Tansu on loopback), in both construction modes:
replies on one partition of ``dispytch.replies`` per requester, read without a group."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispytch.testing.harness import Mode
from dispytch.testing.request_reply import RequestReplyConformance

from .harness import KafkaHarness

pytestmark = pytest.mark.broker


class TestKafkaRequestReply(RequestReplyConformance):
    timeout = 30.0

    @pytest.fixture(params=["url", "client"])
    async def harness(
        self, kafka_bootstrap: str, request: pytest.FixtureRequest
    ) -> AsyncIterator[KafkaHarness]:
        mode: Mode = request.param
        # Requests on one partition are independent: the responder runs them side by side
        # (ordered=False), as a service answering queries would; with ordered=True one
        # partition's requests run one after another, in offset order.
        h = KafkaHarness(kafka_bootstrap, mode=mode, ordered=False)
        await h.setup()
        try:
            yield h
        finally:
            await h.cleanup()
