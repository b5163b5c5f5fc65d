"""Fixtures for the Redis transport tests (real server on 127.0.0.1:6379)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis

from tests.redis.redis_support import REDIS_URL, Names


@pytest.fixture
async def names() -> AsyncIterator[Names]:
    n = Names()
    yield n
    await n.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aredis.Redis]:
    """A redis.asyncio client the test owns. Redis must be reachable: CI starts it, and a
    missing server fails the tests rather than skipping them."""
    c = aredis.Redis.from_url(REDIS_URL)
    try:
        await c.ping()
    except Exception as exc:  # pragma: no cover - environment
        await c.aclose()
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL}: {exc}.\n"
            "Start it (CI does) or set DISPYTCH_REDIS_URL.",
            pytrace=False,
        )
    yield c
    await c.aclose()
