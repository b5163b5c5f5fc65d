"""A consumer process for the crash and competing-consumer tests (not a test module).

    python child_consumer.py --url URL --queue Q --out FILE --name NAME [--delay S]

Runs an EventDispatcher over ``RabbitMQConsumer.from_url`` and appends ``"<name> <i>"``
to ``--out`` for every handled event (one ``write`` per line, so a SIGKILL loses
nothing already written). Prints ``ready`` once consuming; stops gracefully on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from dispytch import Event, EventBase
from dispytch.dispatcher import EventDispatcher
from dispytch.rabbitmq import RabbitMQConsumer, RabbitMQEventSubscription


class Item(EventBase):
    __event_type__ = "item"
    i: int


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--prefetch", type=int, default=10)
    args = p.parse_args()

    fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    consumer = RabbitMQConsumer.from_url(args.url, queue=args.queue, prefetch_count=args.prefetch)
    dispatcher = EventDispatcher(consumer, max_in_flight=args.prefetch)

    @dispatcher.handler(RabbitMQEventSubscription(queue=args.queue))
    async def handle(event: Event[Item]) -> None:
        if args.delay:
            await asyncio.sleep(args.delay)
        os.write(fd, f"{args.name} {event.body.i}\n".encode())

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with dispatcher:
        print("ready", flush=True)
        await stop.wait()
    os.close(fd)


if __name__ == "__main__":
    asyncio.run(main())
