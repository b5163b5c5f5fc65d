"""The kit of the serializer tests (tests/avro, tests/protobuf): a private memory broker,
emitters (one per serializer) and dispatchers on it, always stopped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from dispytch import EventDispatcher, EventEmitter
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryProducer

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
    """A private memory broker; emitters (one per serializer) and dispatchers on it.

    Args:
        serializer: What :meth:`emitter` uses unless told otherwise.
    """

    def __init__(self, serializer: Any) -> None:
        self.serializer = serializer
        self.broker = MemoryBroker(uuid.uuid4().hex)
        self.emitters: list[EventEmitter] = []
        self.dispatchers: list[EventDispatcher] = []

    until = staticmethod(until)

    async def emitter(self, serializer: Any = None) -> EventEmitter:
        e = EventEmitter(
            MemoryProducer(self.broker),
            serializer=self.serializer if serializer is None else serializer,
        )
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
