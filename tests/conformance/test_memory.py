"""The transport conformance suite against the embedded memory transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispytch.testing import MemoryHarness
from dispytch.testing.conformance import TransportConformance


class TestMemoryTransport(TransportConformance):
    timeout = 5.0

    @pytest.fixture
    async def harness(self) -> AsyncIterator[MemoryHarness]:
        h = MemoryHarness()
        yield h
        await h.cleanup()
