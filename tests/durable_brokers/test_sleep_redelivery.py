"""Durable sleep on a broker that declares ``delayed_requeue`` (Redis Streams): the
sleeping run's entry is handed back with the delay, nothing parked in the worker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import dispytch.durable as durable_module
import pytest
import redis
from dispytch.durable import Durable

from ..durable.test_sleep import _until_status


@pytest.mark.broker
async def test_on_redis_streams_a_sleep_is_a_delayed_redelivery(tmp_path: Any) -> None:
    """Redis Streams declares delayed_requeue: the sleeping run's entry is nacked with
    the delay (nothing parked in the worker), and after its worker stops, another member
    of the group takes it at the wake-up time and finishes the run."""
    tag = uuid.uuid4().hex
    options = {"group": f"sleep-{tag}", "min_idle_time": 1.0, "claim_interval": 0.2}
    store = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    url = "redis+streams://127.0.0.1:6379"
    ran: list[str] = []

    def make(who: str) -> tuple[Durable, Any]:
        durable = Durable(url, store=store, topic=f"sleep-{tag}", consumer_options=options)

        @durable.function(name="sleep.redis")
        async def nap() -> str:
            ran.append(f"start@{who}")
            await durable_module.sleep(2.5)
            ran.append(f"woke@{who}")
            return who

        return durable, nap

    first, nap = make("first")
    second, _ = make("second")
    delays: list[float] = []
    try:
        await first.start()
        consumer = first.dispatcher.consumer
        real_nack = consumer.nack

        async def nack(message: Any, *, requeue: bool = True, delay: float | None = None) -> None:
            delays.append(delay or 0.0)
            await real_nack(message, requeue=requeue, delay=delay)  # type: ignore[call-arg]

        consumer.nack = nack  # type: ignore[method-assign]
        handle = await nap.dispatch()
        await _until_status(handle, "sleeping")
        for _ in range(200):  # bounded: the nack follows the status write
            if delays:
                break
            await asyncio.sleep(0.01)
        assert delays and 1.0 < delays[0] <= 2.5 and not first._parked
        await first.stop()
        await second.start()
        assert await second.handle(handle.id, nap).result(timeout=30) == "second"
    finally:
        await first.stop()
        await second.stop()
        client = redis.Redis(host="127.0.0.1", port=6379)
        client.delete(f"sleep-{tag}")  # our own stream only
        client.close()
    assert ran == ["start@first", "start@second", "woke@second"]  # plain code replays
