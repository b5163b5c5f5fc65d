"""The sample third-party transport passes the same conformance suite as the built-ins.

Runs from the sample's source tree (no installation needed); the installed-wheel path is
covered by test_sample_installed.py.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dispytch.testing import TransportHarness
from dispytch.testing.conformance import TransportConformance

from .conftest import SAMPLE_SRC

if str(SAMPLE_SRC) not in sys.path:
    sys.path.insert(0, str(SAMPLE_SRC))

from dispytch_sample import SampleEventRoute, SampleEventSubscription  # noqa: E402
from dispytch_sample.transport import SpoolConsumer, SpoolProducer  # noqa: E402


class SampleHarness(TransportHarness):
    """The spool transport, each case in its own temporary directory."""

    name = "sample"
    redelivery_timeout = 5.0

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="dispytch-sample-"))

    def route(self, name: str) -> SampleEventRoute:
        return SampleEventRoute(topic=name)

    def subscription(self, name: str, *, group: str) -> SampleEventSubscription:
        return SampleEventSubscription(topic=name)

    def producer(self) -> SpoolProducer:
        return SpoolProducer(self.directory)

    def consumer(self, *, group: str) -> SpoolConsumer:
        return SpoolConsumer(self.directory, group=group, poll_interval=0.01)

    async def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class TestSampleTransport(TransportConformance):
    timeout = 10.0

    @pytest.fixture
    async def harness(self) -> AsyncIterator[SampleHarness]:
        h = SampleHarness()
        yield h
        await h.cleanup()
