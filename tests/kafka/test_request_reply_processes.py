"""Request/reply across processes: the caller here, the handlers in a child process,
over Kafka (Tansu): the reply comes back on this process's partition of the reply topic."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from dispytch import EventEmitter, RemoteError
from dispytch.cqrs import NoRouteError
from dispytch.kafka import KafkaEventRoute, KafkaProducer

from ._child_responder import Answer, Forbid, Lookup
from .helpers import create_topic

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHILD = Path(__file__).with_name("_child_responder.py")


async def test_caller_and_handler_in_two_processes(kafka_bootstrap: str) -> None:
    topic = f"rr-proc-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_bootstrap, topic, 1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), kafka_bootstrap, topic, f"g-{topic}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    route = KafkaEventRoute(topic=topic)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"ready", f"the responder did not start: {line!r}"
        producer = KafkaProducer.from_url(f"kafka://{kafka_bootstrap}")
        async with EventEmitter(producer) as emitter:
            answer = await emitter.request(Lookup(n=7), route=route, timeout=60)
            assert isinstance(answer, Answer)
            assert (answer.n, answer.square) == (7, 49)
            assert answer.pid == proc.pid != os.getpid()

            with pytest.raises(RemoteError) as info:
                await emitter.request(Forbid(what="x"), route=route, timeout=60)
            assert (info.value.type, info.value.message) == ("PermissionError", "not allowed: x")
            emitter.register_error(PermissionError)
            with pytest.raises(PermissionError, match="not allowed: y"):
                await emitter.request(Forbid(what="y"), route=route, timeout=60)

            address = producer._replies.address if producer._replies else None
            answers = await asyncio.gather(
                *(
                    emitter.request(Lookup(n=i, delay=0.2), route=route, timeout=60)
                    for i in range(100)
                )
            )
            assert [a.square for a in answers] == [i * i for i in range(100)]
            # Handled side by side in the other process, over one reply partition here.
            assert max(a.peak for a in answers) > 50
            assert address is not None and address.startswith("dispytch.replies:")
            assert producer._replies is not None and producer._replies.address == address

            with pytest.raises(NoRouteError):
                await emitter.request(
                    Lookup(n=1), route=KafkaEventRoute(topic=f"{topic}-none"), timeout=60
                )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
