"""Per-function concurrency limit: at most N runs of a function execute at once, across
every worker of the store; runs over the limit wait (status ``limited``) without being
lost and without taking the slots other functions need."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dispytch.durable import Durable


async def test_at_most_n_runs_at_once_across_workers(make_durable: Any) -> None:
    # max_in_flight=3: if the waiting runs held worker slots, the free function's run
    # could not start while six limited runs are queued.
    workers: list[Durable] = [make_durable(max_in_flight=3) for _ in range(2)]
    release = asyncio.Event()
    active = {"now": 0, "max": 0, "done": 0}

    def register(durable: Durable) -> tuple[Any, Any]:
        @durable.function(name="limit.slow", concurrency=2)
        async def slow(i: int) -> int:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            try:
                await release.wait()
            finally:
                active["now"] -= 1
            active["done"] += 1
            return i

        @durable.function(name="limit.free")
        async def free(i: int) -> int:
            return i + 1

        return slow, free

    pairs = [register(w) for w in workers]
    slow, free = pairs[0]
    try:
        for w in workers:
            await w.start()
        handles = [await slow.dispatch(i) for i in range(6)]
        async with asyncio.timeout(10):
            while active["now"] < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # time for a third run to start if the limit leaked
        assert active["now"] == 2
        statuses = [(await h.status()).status for h in handles]
        assert statuses.count("running") == 2 and statuses.count("limited") >= 1
        assert set(statuses) <= {"running", "limited", "pending"}
        # another function is not blocked by the waiting runs
        assert await (await free.dispatch(41)).result(timeout=10) == 42
        assert active["now"] == 2 and active["done"] == 0
        release.set()
        results = [await h.result(timeout=20) for h in handles]
    finally:
        for w in workers:
            await w.stop()
    assert results == list(range(6))
    assert active["max"] == 2 and active["done"] == 6


async def test_the_limit_is_validated(durable: Durable) -> None:
    with pytest.raises(ValueError, match="concurrency=0"):

        @durable.function(concurrency=0)
        async def never() -> None: ...
