"""Crash test on Redis Streams: a consumer process is SIGKILLed mid-run; another member
of the group reclaims what it left pending and finishes. Every event is handled at least
once and none is missing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import redis.asyncio as aredis
from dispytch import Event
from dispytch.dispatcher import EventDispatcher
from dispytch.redis import RedisStreamConsumer, RedisStreamSubscription
from pydantic import BaseModel

from tests.redis.redis_support import REDIS_URL, Names

pytestmark = [pytest.mark.broker, pytest.mark.slow]

N = 400
CHILD = Path(__file__).with_name("crash_consumer.py")


class Order(BaseModel):
    order_id: int


async def poll(check, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    async def loop() -> None:
        while not await check():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def test_sigkilled_consumer_loses_nothing(client: aredis.Redis, names: Names) -> None:
    stream = names.stream("crash")
    done_key = names.stream("crash-done")  # a set; deleted with the streams
    group = "workers"
    await client.xgroup_create(stream, group, id="$", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd(stream, {"payload": Order(order_id=i).model_dump_json()})
    await pipe.execute()

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), REDIS_URL, stream, group, done_key,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.strip() == b"ready"

        async def child_got_going() -> bool:
            # Mid-work: a quarter done, and entries taken but not acknowledged (the read-ahead
            # bound lets the pending count touch 0 between two reads).
            if int(await client.scard(done_key)) < N // 4:
                return False
            return int((await client.xpending(stream, group))["pending"]) > 0

        await poll(child_got_going, "the child to handle a quarter of the events", 60)
    finally:
        child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 30)
    assert child.returncode == -signal.SIGKILL

    left_pending = int((await client.xpending(stream, group))["pending"])
    done_by_child = {int(x) for x in await client.smembers(done_key)}
    assert len(done_by_child) < N, "the child finished before it was killed"
    assert left_pending > 0, "the child was killed with nothing pending"

    survivor: list[tuple[int, int]] = []
    dispatcher = EventDispatcher(
        RedisStreamConsumer(
            client, group=group, min_idle_time=1.0, claim_interval=0.2, block_ms=100
        )
    )

    @dispatcher.handler(RedisStreamSubscription(stream=stream, group=group))
    async def on_order(event: Event[Order]) -> None:
        survivor.append((event.body.order_id, event.attempt))

    async with dispatcher:

        async def all_handled() -> bool:
            return done_by_child | {i for i, _ in survivor} == set(range(N))

        await poll(all_handled, "every event handled by one of the two", 60)

        async def all_acked() -> bool:
            return int((await client.xpending(stream, group))["pending"]) == 0

        await poll(all_acked, "every entry acknowledged", 30)

    handled = done_by_child | {i for i, _ in survivor}
    assert handled == set(range(N))  # none missing
    # What the dead child held was reclaimed, with the delivery counter showing it.
    assert any(attempt >= 2 for _, attempt in survivor)
