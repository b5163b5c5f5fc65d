"""Request/reply across processes: the caller here, the handlers in a child process,
over a real RabbitMQ (direct reply-to)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import aio_pika
import pytest
from dispytch import EventEmitter, RemoteError
from dispytch.cqrs import NoRouteError
from dispytch.rabbitmq import RabbitMQEventRoute, RabbitMQProducer

from .child_responder import Answer, Forbid, Lookup
from .conftest import AMQP_URL

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHILD = Path(__file__).with_name("child_responder.py")


async def test_caller_and_handler_in_two_processes() -> None:
    queue = f"rr.proc.{uuid.uuid4().hex[:10]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), "--url", AMQP_URL, "--queue", queue,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    route = RabbitMQEventRoute(routing_key=queue)  # the default exchange: the queue by name
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", f"the responder did not start: {line!r}"
        async with EventEmitter(RabbitMQProducer.from_url(AMQP_URL)) as emitter:
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
            # Handled side by side in the other process, over one reply address here.
            assert max(a.peak for a in answers) > 50
            # One reply address for all of them: direct reply-to consumed on one channel.
            producer = emitter.producer
            assert isinstance(producer, RabbitMQProducer)
            assert len(producer._reply_consumers) == 1

            with pytest.raises(NoRouteError):
                await emitter.request(
                    Lookup(n=1), route=RabbitMQEventRoute(routing_key=f"{queue}.none"), timeout=60
                )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        conn = await aio_pika.connect(AMQP_URL)
        try:
            ch = await conn.channel()
            await ch.queue_delete(queue, if_unused=False, if_empty=False)
        finally:
            await conn.close()
