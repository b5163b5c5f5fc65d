"""The seed documents' Redis examples, run unmodified but for the server's address.

Seed 002 (EventEmitter docs): ``RedisProducer(Redis())`` + ``EventEmitter`` + ``emit``,
without ``emitter.start()``. Seed 000 (README): the handler example (``HandlerGroup``,
``handler(topic=, event=)``, ``Event[T]``, ``Dependency``) and the emitter example
(``__topic__``/``__event_type__``), over Redis Pub/Sub with the user's own clients.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from dispytch import EventBase, EventDispatcher, EventEmitter

from tests.redis.redis_support import REDIS_URL
from tests.seed_readme import SERVICE, example_emit, printed, user_events

pytestmark = pytest.mark.broker

HOST, PORT = REDIS_URL.removeprefix("redis://").split("/")[0].split(":")
TIMEOUT = 15.0


def Redis() -> Any:  # noqa: N802 - the seed's `Redis()`, with this test's address
    from redis.asyncio import Redis as _Redis

    return _Redis(host=HOST, port=int(PORT))


async def until(check: Any, what: str) -> None:
    async def loop() -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(loop(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


# -- seed 002: "Example: Setting Up Event Emitter" for Redis (verbatim) ---------------------


async def test_seed_002_redis_emitter_example(capsys: pytest.CaptureFixture[str]) -> None:
    from dispytch import EventEmitter
    from dispytch.redis import RedisEventRoute, RedisProducer

    class SystemAlert(EventBase):
        __route__ = RedisEventRoute(channel="system.alerts")

        level: str
        message: str

    listener = Redis()
    pubsub = listener.pubsub()
    await pubsub.subscribe("system.alerts")
    await pubsub.get_message(timeout=TIMEOUT)  # the subscribe confirmation

    async def main() -> None:
        redis = Redis()

        producer = RedisProducer(redis)
        emitter = EventEmitter(producer)

        await emitter.emit(SystemAlert(level="critical", message="CPU temperature high"))
        print("Alert sent!")
        await redis.aclose()  # (not in the seed: the test closes what it opened)

    try:
        await main()
        assert capsys.readouterr().out == "Alert sent!\n"
        for _ in range(50):  # others may publish on the channel too: find ours
            msg = await pubsub.get_message(timeout=TIMEOUT)
            assert msg is not None, "the alert never arrived"
            if msg["type"] == "message" and b"CPU temperature high" in msg["data"]:
                break
        else:
            pytest.fail("the alert never arrived")
    finally:
        await pubsub.aclose()
        await listener.aclose()


# -- seed 000: the README's handler and emitter examples (tests/seed_readme.py), over Redis --


async def test_seed_000_handler_and_emitter_examples_over_redis(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dispytch.redis import RedisConsumer, RedisProducer

    redis = Redis()
    user_id = str(uuid.uuid4())
    try:
        dispatcher = EventDispatcher(RedisConsumer(redis.pubsub()))
        dispatcher.add_router(user_events)
        emitter = EventEmitter(RedisProducer(redis))  # the user's client: no start()
        async with dispatcher:
            await example_emit(emitter, user_id)
            await until(lambda: user_id in SERVICE.done, "the seed handler")
        assert printed(user_id) in capsys.readouterr().out
    finally:
        await redis.aclose()
