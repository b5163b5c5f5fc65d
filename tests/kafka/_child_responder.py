"""A responder process for the two-process request/reply test (run as a script).

    python _child_responder.py BOOTSTRAP TOPIC GROUP

Serves the query :class:`Lookup` and the command :class:`Forbid` from ``TOPIC`` over
``KafkaConsumer.from_url`` (``ordered=False``: one partition's requests run side by side).
Prints ``ready`` once its dispatcher started; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from dispytch import CommandBase, QueryBase
from dispytch.dispatcher import EventDispatcher
from dispytch.kafka import KafkaConsumer, KafkaEventSubscription
from pydantic import BaseModel


class Answer(BaseModel):
    n: int
    square: int
    pid: int
    peak: int  # the most lookups this process ran at once, so far


class Lookup(QueryBase[Answer]):
    n: int
    delay: float = 0.0


class Forbid(CommandBase[None]):
    what: str


async def main(bootstrap: str, topic: str, group: str) -> None:
    consumer = KafkaConsumer.from_url(
        f"kafka://{bootstrap}",
        group_id=group,
        ordered=False,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    dispatcher = EventDispatcher(consumer, max_in_flight=128)
    sub = KafkaEventSubscription(topic=topic)
    running = peak = 0

    @dispatcher.query(Lookup, subscription=sub)
    async def lookup(query: Lookup) -> Answer:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(query.delay)
        finally:
            running -= 1
        return Answer(n=query.n, square=query.n * query.n, pid=os.getpid(), peak=peak)

    @dispatcher.command(Forbid, subscription=sub)
    async def forbid(cmd: Forbid) -> None:
        raise PermissionError(f"not allowed: {cmd.what}")

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with dispatcher:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
