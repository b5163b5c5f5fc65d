"""The transport conformance suite against Kafka (Tansu on loopback), in both ways a user
builds clients: from a URL (Dispytch owns them) and around the user's own started
``AIOKafkaProducer``/``AIOKafkaConsumer`` (the seed documents' way)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispytch.testing.conformance import TransportConformance
from dispytch.testing.harness import Mode

from .harness import KafkaHarness

pytestmark = pytest.mark.broker


class TestKafkaTransport(TransportConformance):
    timeout = 30.0

    @pytest.fixture(params=["url", "client"])
    async def harness(
        self, kafka_bootstrap: str, request: pytest.FixtureRequest
    ) -> AsyncIterator[KafkaHarness]:
        mode: Mode = request.param
        h = KafkaHarness(kafka_bootstrap, mode=mode)
        await h.setup()
        try:
            yield h
        finally:
            await h.cleanup()
