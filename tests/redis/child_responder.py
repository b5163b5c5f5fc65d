"""A responder process for the two-process request/reply test (not a test module).

    python child_responder.py --url URL --name NAME

Serves the query :class:`Lookup` and the command :class:`Forbid` from channel ``NAME``
(``redis://``: Pub/Sub) or stream ``NAME`` in group ``NAME.svc`` (``redis+streams://``),
over ``EventDispatcher.from_url``-style consumers. Prints ``ready`` once consuming; stops
on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from dispytch import CommandBase, QueryBase
from dispytch.dispatcher import EventDispatcher
from dispytch.redis import (
    RedisConsumer,
    RedisEventSubscription,
    RedisStreamConsumer,
    RedisStreamSubscription,
)
from dispytch.routes import EventSubscription
from dispytch.transport import Consumer
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


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--name", required=True)
    args = p.parse_args()

    consumer: Consumer
    sub: EventSubscription
    if "+streams" in args.url:
        group = f"{args.name}.svc"
        consumer = RedisStreamConsumer.from_url(args.url, group=group)
        sub = RedisStreamSubscription(stream=args.name, group=group)
    else:
        consumer = RedisConsumer.from_url(args.url)
        sub = RedisEventSubscription(channel=args.name)
    dispatcher = EventDispatcher(consumer, max_in_flight=128)
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
    asyncio.run(main())
