"""Fixtures for the Redis transport tests (real server on 127.0.0.1:6379)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis

REDIS_URL = os.environ.get("DISPYTCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STREAMS_URL = REDIS_URL.replace("redis://", "redis+streams://", 1)


class Names:
    """Unique channel/stream names for one test; the streams are deleted afterwards."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def channel(self, prefix: str = "ch") -> str:
        return f"test.{prefix}.{uuid.uuid4().hex[:10]}"

    def stream(self, prefix: str = "st") -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        self.keys.append(name)
        return name

    async def cleanup(self) -> None:
        if not self.keys:
            return
        client = aredis.Redis.from_url(REDIS_URL)
        try:
            await client.delete(*self.keys)
        finally:
            await client.aclose()


@pytest.fixture
async def names() -> AsyncIterator[Names]:
    n = Names()
    yield n
    await n.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aredis.Redis]:
    """A redis.asyncio client the test owns (checked reachable)."""
    c = aredis.Redis.from_url(REDIS_URL)
    try:
        await c.ping()
    except Exception as exc:  # pragma: no cover - environment
        await c.aclose()
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield c
    await c.aclose()
