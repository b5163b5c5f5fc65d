"""The transport conformance suite against Kafka (Tansu on loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispytch.testing.conformance import TransportConformance

from .harness import KafkaHarness

pytestmark = pytest.mark.broker


class TestKafkaTransport(TransportConformance):
    timeout = 30.0

    @pytest.fixture
    async def harness(self, kafka_bootstrap: str) -> AsyncIterator[KafkaHarness]:
        h = KafkaHarness(kafka_bootstrap)
        yield h
        await h.cleanup()
