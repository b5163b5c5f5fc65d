"""Request/reply conformance on the memory transport (both construction modes)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispytch.testing import MemoryHarness
from dispytch.testing.request_reply import RequestReplyConformance
from dispytch.transport import Capabilities


class _Harness(MemoryHarness):
    capabilities = Capabilities(request_reply=True)


class TestMemoryRequestReply(RequestReplyConformance):
    @pytest.fixture(params=["url", "client"])
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[MemoryHarness]:
        h = _Harness(mode=request.param)
        yield h
        await h.cleanup()
