"""Request/reply conformance over Redis Pub/Sub and Redis Streams, in both construction
modes, on the transport suite's harnesses (replies by PUBLISH to one reply channel per
producer)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from dispytch import EventEmitter
from dispytch.cqrs import NoRouteError
from dispytch.cqrs.wire import HEADER_REPLY_TO
from dispytch.message import Message
from dispytch.redis import (
    RedisConsumer,
    RedisEventRoute,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamProducer,
    RedisStreamRoute,
)
from dispytch.testing.harness import Mode
from dispytch.testing.request_reply import RequestReplyConformance
from dispytch.transport import Consumer, OutgoingMessage

from tests.redis.redis_support import (
    REDIS_URL,
    STREAMS_URL,
    RedisPubSubHarness,
    RedisStreamsHarness,
)

pytestmark = pytest.mark.broker

MODES: list[Mode] = ["url", "client"]


class PubSubRequestHarness(RedisPubSubHarness):
    """The suite's Pub/Sub harness with unordered consumers: requests on one channel are
    handled side by side (an ordered consumer runs one channel's messages in turn)."""

    def consumer(self, *, group: str) -> Consumer:
        if self.mode == "client":
            return RedisConsumer(self.client().pubsub())
        return RedisConsumer.from_url(REDIS_URL)


class StreamsRequestHarness(RedisStreamsHarness):
    """The suite's Streams harness with unordered consumers (see above)."""

    def _options(self, group: str) -> dict[str, object]:
        return {**super()._options(group), "ordered": False}

    def consumer(self, *, group: str) -> Consumer:
        if self.mode == "client":
            return RedisStreamConsumer(self.client(), **self._options(group))  # type: ignore[arg-type]
        return RedisStreamConsumer.from_url(STREAMS_URL, **self._options(group))


class TestRedisPubSubRequestReply(RequestReplyConformance):
    timeout = 15.0

    @pytest.fixture(params=MODES)
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[PubSubRequestHarness]:
        h = PubSubRequestHarness(request.param)
        yield h
        await h.cleanup()


class TestRedisStreamsRequestReply(RequestReplyConformance):
    timeout = 15.0

    @pytest.fixture(params=MODES)
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[StreamsRequestHarness]:
        h = StreamsRequestHarness(request.param)
        yield h
        await h.cleanup()


def _ignore(_: Message) -> None:
    return None


async def test_stream_with_no_group_is_not_appended_to() -> None:
    """Streams: a request to a stream that exists but has no consumer group fails at once
    and appends nothing (XINFO GROUPS is checked before XADD)."""
    stream = f"rr.nogroup.{uuid.uuid4().hex[:10]}"
    producer = RedisStreamProducer.from_url(STREAMS_URL)
    await producer.start()
    admin = producer.redis
    try:
        await admin.xadd(stream, {b"payload": b"seed"})
        await producer.open_replies(_ignore)
        request = OutgoingMessage(RedisStreamRoute(stream=stream), b"{}", {"a": "b"})
        with pytest.raises(NoRouteError, match="has no consumer group"):
            await producer.send_request(request)
        assert await admin.xlen(stream) == 1
        assert HEADER_REPLY_TO not in request.headers  # the caller's headers are untouched
    finally:
        await admin.delete(stream)
        await producer.stop()


async def test_one_reply_channel_per_producer_and_reopened_after_restart() -> None:
    """One SUBSCRIBE per producer, whatever the number of requests; stop ends it and a
    request after start() subscribes again to the same channel."""
    producer = RedisProducer.from_url(REDIS_URL)
    await producer.start()
    try:
        await producer.open_replies(_ignore)
        await producer.open_replies(_ignore)  # idempotent
        channel = producer.reply_channel
        assert channel.startswith("dispytch.reply.")
        watcher = producer.redis
        assert await watcher.pubsub_numsub(channel) == [(channel.encode(), 1)]
        await producer.stop()
        await producer.start()
        watcher = producer.redis
        assert await watcher.pubsub_numsub(channel) == [(channel.encode(), 0)]
        with pytest.raises(NoRouteError, match="No client is subscribed"):
            await producer.send_request(
                OutgoingMessage(RedisEventRoute(channel=f"rr.none.{uuid.uuid4().hex}"), b"", {})
            )
        assert producer.reply_channel == channel
        assert await watcher.pubsub_numsub(channel) == [(channel.encode(), 1)]
    finally:
        await producer.stop()


async def test_emitter_request_before_start_is_refused() -> None:
    emitter = EventEmitter(RedisProducer.from_url(REDIS_URL))
    producer = emitter.producer
    assert isinstance(producer, RedisProducer)
    from dispytch.errors import NotStartedError

    with pytest.raises(NotStartedError):
        await producer.open_replies(_ignore)
