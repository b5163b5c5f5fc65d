"""Shared fixtures of the core unit tests: a private memory broker per test and a kit
that builds emitters and dispatchers on it and always stops them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from dispytch import EventDispatcher, EventEmitter
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryProducer

#: The longest any test waits for something to happen.
WAIT = 5.0


async def until(pred: Callable[[], Any], what: str = "a condition", timeout: float = WAIT) -> None:
    """Wait (bounded) until ``pred()`` is true; fail the test with ``what`` otherwise."""
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


class Kit:
    """A private memory broker, a started emitter on it, and dispatchers built on demand."""

    def __init__(self) -> None:
        self.broker = MemoryBroker(uuid.uuid4().hex)
        self.producer = MemoryProducer(self.broker)
        self.emitter = EventEmitter(self.producer)
        self.dispatchers: list[EventDispatcher] = []

    until = staticmethod(until)

    def consumer(self, group: str = "g", *, ordered: bool = False) -> MemoryConsumer:
        return MemoryConsumer(self.broker, group=group, ordered=ordered)

    def dispatcher(
        self, group: str = "g", *, ordered: bool = False, **options: Any
    ) -> EventDispatcher:
        """A new (unstarted) dispatcher over a fresh consumer of ``group``."""
        options.setdefault("stop_timeout", 2.0)
        d = EventDispatcher(self.consumer(group, ordered=ordered), **options)
        self.dispatchers.append(d)
        return d

    def queued(self, group: str = "g") -> int:
        """Messages still waiting in the broker for ``group`` (not yet delivered)."""
        return self.broker.group(group).queue.qsize()

    def unacked(self, group: str = "g") -> int:
        """Messages delivered to ``group`` and not yet settled."""
        return len(self.broker.group(group).unacked)

    async def aclose(self) -> None:
        for d in self.dispatchers:
            if d._reader is not None:  # started at some point
                await asyncio.wait_for(d.stop(timeout=1.0), WAIT)
        await self.emitter.stop()


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    k = Kit()
    await k.emitter.start()
    yield k
    await k.aclose()
