"""The transport conformance suite against the embedded memory transport, in both
construction modes: over a broker the harness made (``"client"``) and from ``memory://``
URLs through the plugin's factories (``"url"``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispytch.testing import MemoryHarness
from dispytch.testing.conformance import TransportConformance


class TestMemoryTransport(TransportConformance):
    timeout = 5.0

    @pytest.fixture(params=["client", "url"])
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[MemoryHarness]:
        h = MemoryHarness(mode=request.param)
        yield h
        await h.cleanup()
