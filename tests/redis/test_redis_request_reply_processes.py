"""Request/reply across processes: the caller here, the handlers in a child process,
over a real Redis (Pub/Sub and Streams; replies on one reply channel per producer)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aredis
from dispytch import EventEmitter, RemoteError
from dispytch.cqrs import NoRouteError
from dispytch.redis import RedisEventRoute, RedisProducer, RedisStreamProducer, RedisStreamRoute
from dispytch.routes import EventRoute

from tests.redis.child_responder import Answer, Forbid, Lookup
from tests.redis.redis_support import REDIS_URL, STREAMS_URL

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHILD = Path(__file__).with_name("child_responder.py")


@pytest.mark.parametrize("url", [REDIS_URL, STREAMS_URL], ids=["pubsub", "streams"])
async def test_caller_and_handler_in_two_processes(url: str) -> None:
    name = f"rr.proc.{uuid.uuid4().hex[:10]}"
    streams = "+streams" in url
    route: EventRoute = RedisStreamRoute(stream=name) if streams else RedisEventRoute(channel=name)
    elsewhere: EventRoute = (
        RedisStreamRoute(stream=f"{name}.none")
        if streams
        else RedisEventRoute(channel=f"{name}.none")
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), "--url", url, "--name", name,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", f"the responder did not start: {line!r}"
        producer_type = RedisStreamProducer if streams else RedisProducer
        async with EventEmitter(producer_type.from_url(url)) as emitter:
            answer = await emitter.request(Lookup(n=7), route=route, timeout=30)
            assert isinstance(answer, Answer)
            assert (answer.n, answer.square) == (7, 49)
            assert answer.pid == proc.pid != os.getpid()

            with pytest.raises(RemoteError) as info:
                await emitter.request(Forbid(what="x"), route=route, timeout=60)
            assert (info.value.type, info.value.message) == ("PermissionError", "not allowed: x")
            emitter.register_error(PermissionError)
            with pytest.raises(PermissionError, match="not allowed: y"):
                await emitter.request(Forbid(what="y"), route=route, timeout=60)

            answers = await asyncio.gather(
                *(
                    emitter.request(Lookup(n=i, delay=0.2), route=route, timeout=60)
                    for i in range(100)
                )
            )
            assert [a.square for a in answers] == [i * i for i in range(100)]
            # Handled side by side in the other process, over one reply channel here.
            assert max(a.peak for a in answers) > 50
            producer = emitter.producer
            assert isinstance(producer, RedisProducer)
            channel = producer.reply_channel
            assert await producer.redis.pubsub_numsub(channel) == [(channel.encode(), 1)]

            with pytest.raises(NoRouteError):
                await emitter.request(Lookup(n=1), route=elsewhere, timeout=60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        admin = aredis.Redis.from_url(REDIS_URL)
        try:
            await admin.delete(name, f"{name}.none")
        finally:
            await admin.aclose()
