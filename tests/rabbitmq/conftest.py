"""Fixtures for the RabbitMQ transport tests (real broker on 127.0.0.1:5672)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

AMQP_URL = os.environ.get("DISPYTCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class Names:
    """Unique queue/exchange names for one test, deleted afterwards."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, prefix: str = "q") -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        self.queues.append(name)
        return name

    def exchange(self, prefix: str = "ex") -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        self.exchanges.append(name)
        return name

    async def cleanup(self) -> None:
        conn = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 10)
        try:
            for q in self.queues:
                ch = await conn.channel()
                await ch.queue_delete(q, if_unused=False, if_empty=False)
                await ch.close()
            for ex in self.exchanges:
                ch = await conn.channel()
                await ch.exchange_delete(ex)
                await ch.close()
        finally:
            await conn.close()


@pytest.fixture
async def names() -> AsyncIterator[Names]:
    n = Names()
    yield n
    await n.cleanup()


@pytest.fixture
async def amqp() -> AsyncIterator[AbstractRobustConnection]:
    """A robust aio-pika connection for the test's own setup (as a user would open it)."""
    conn = await asyncio.wait_for(aio_pika.connect_robust(AMQP_URL), 10)
    yield conn
    await conn.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition (every 10 ms) for at most ``timeout`` seconds."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def ready_count(conn: AbstractRobustConnection, queue: str) -> int:
    """Messages ready (not delivered) in ``queue``, as the broker reports them."""
    ch = await conn.channel()
    try:
        raw = await ch.get_underlay_channel()  # aio-pika caches declarations: ask directly
        ok = await raw.queue_declare(queue, passive=True)
        assert ok.message_count is not None
        return ok.message_count
    finally:
        await ch.close()
