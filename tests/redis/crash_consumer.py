"""Child process of the Streams crash test: an EventDispatcher that is SIGKILLed mid-run.

    python crash_consumer.py REDIS_URL STREAM GROUP DONE_KEY

Handles each entry slowly and records its order id in the set DONE_KEY (then the entry
is acknowledged). Prints "ready" once consuming. Runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aredis
from dispytch import Event
from dispytch.dispatcher import EventDispatcher
from dispytch.redis import RedisStreamConsumer, RedisStreamSubscription
from pydantic import BaseModel


class Order(BaseModel):
    order_id: int


async def main(url: str, stream: str, group: str, done_key: str) -> None:
    client = aredis.Redis.from_url(url)
    consumer = RedisStreamConsumer(client, group=group, batch_size=20, block_ms=100)
    dispatcher = EventDispatcher(consumer, max_in_flight=16)

    @dispatcher.handler(RedisStreamSubscription(stream=stream, group=group))
    async def on_order(event: Event[Order]) -> None:
        await asyncio.sleep(0.01)
        await client.sadd(done_key, event.body.order_id)

    async with dispatcher:
        print("ready", flush=True)
        await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
