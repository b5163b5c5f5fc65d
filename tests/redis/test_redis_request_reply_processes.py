"""Request/reply across processes: the caller here, the handlers in a child process
(``tests/request_reply_child.py``), over a real Redis (Pub/Sub and Streams; replies on one
reply channel per producer)."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aredis
from dispytch import EventEmitter
from dispytch.cqrs import NoRouteError
from dispytch.redis import RedisEventRoute, RedisProducer, RedisStreamProducer, RedisStreamRoute
from dispytch.routes import EventRoute

from tests.redis.redis_support import REDIS_URL, STREAMS_URL
from tests.request_reply_child import Lookup, check_round_trips, responder, with_options

pytestmark = [pytest.mark.broker, pytest.mark.slow]


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
    group = f"{name}.svc"
    child = (
        (with_options(url, group=group), "dispytch.redis:RedisStreamSubscription")
        if streams
        else (url, "dispytch.redis:RedisEventSubscription")
    )
    fields = [f"stream={name}", f"group={group}"] if streams else [f"channel={name}"]
    producer_type = RedisStreamProducer if streams else RedisProducer
    try:
        async with (
            responder(*child, *fields) as proc,
            EventEmitter(producer_type.from_url(url)) as emitter,
        ):
            producer = emitter.producer
            assert isinstance(producer, RedisProducer)
            await check_round_trips(emitter, route, proc.pid, lambda: producer.reply_channel)
            # One reply channel for all of them, subscribed once.
            channel = producer.reply_channel
            assert await producer.redis.pubsub_numsub(channel) == [(channel.encode(), 1)]

            with pytest.raises(NoRouteError):
                await emitter.request(Lookup(n=1), route=elsewhere, timeout=60)
    finally:
        admin = aredis.Redis.from_url(REDIS_URL)
        try:
            await admin.delete(name, f"{name}.none")
        finally:
            await admin.aclose()
