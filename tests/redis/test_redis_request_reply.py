"""Request/reply conformance over Redis Pub/Sub and Redis Streams, in both construction
modes, on the transport suite's harnesses (replies by PUBLISH to one reply channel per
producer)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aredis
from dispytch import EventEmitter
from dispytch.cqrs import NoRouteError
from dispytch.cqrs.wire import HEADER_REPLY_TO
from dispytch.errors import NotStartedError
from dispytch.message import Message
from dispytch.redis import (
    RedisConsumer,
    RedisEventRoute,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamProducer,
    RedisStreamRoute,
)
from dispytch.redis.envelope import unpack
from dispytch.testing.harness import Mode
from dispytch.testing.request_reply import RequestReplyConformance
from dispytch.transport import Consumer, OutgoingMessage

from tests.redis.redis_support import (
    REDIS_URL,
    STREAMS_URL,
    RedisPubSubHarness,
    RedisStreamsHarness,
    own_redis,
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
    and appends nothing (the group is checked in the script that appends)."""
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
    with pytest.raises(NotStartedError):
        await producer.open_replies(_ignore)


async def test_reply_to_a_gone_requester_is_best_effort(caplog: pytest.LogCaptureFixture) -> None:
    """A reply to a channel nobody listens on, or to an unreachable Redis, is dropped and
    logged; send_reply never raises. A request without a reply channel gets none."""
    gone = Message(
        b"{}", route="x", headers={HEADER_REPLY_TO: f"dispytch.reply.{uuid.uuid4().hex}"}
    )
    consumer = RedisConsumer.from_url(REDIS_URL)
    watcher = aredis.Redis.from_url(REDIS_URL)
    ps = watcher.pubsub()
    try:
        assert consumer.reply_address(Message(b"", route="x", headers={})) is None
        await consumer.send_reply(gone, b"1", {"dispytch-reply-status": "ok"})
        # A listener on the channel receives the reply in the Pub/Sub envelope.
        channel = gone.headers[HEADER_REPLY_TO]
        await ps.subscribe(channel)
        assert (await ps.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
        await consumer.send_reply(gone, b"42", {"dispytch-correlation-id": "c1"})
        got = None
        for _ in range(50):
            got = await ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if got is not None:
                break
        assert got is not None
        assert unpack(got["data"]) == (b"42", {"dispytch-correlation-id": "c1"}, None)
    finally:
        await ps.aclose()
        await watcher.aclose()
        await consumer.close()
    unreachable = RedisStreamConsumer(
        aredis.Redis.from_url("redis://127.0.0.1:1/0", retry=None), group="g"
    )
    with caplog.at_level("WARNING", logger="dispytch.redis"):
        await unreachable.send_reply(gone, b"1", {})
    assert "will time out" in caplog.text
    await unreachable.redis.aclose()


async def test_stream_requests_on_a_server_without_the_script_cached(tmp_path: Path) -> None:
    """A stream request is one EVALSHA; a server that has not cached the script yet (a
    new one, or after SCRIPT FLUSH) answers NOSCRIPT and the request goes once by EVAL:
    appended exactly once, and the next one by EVALSHA."""
    with own_redis(tmp_path) as url:
        stream = "rr.fresh"
        producer = RedisStreamProducer.from_url(url.replace("redis://", "redis+streams://"))
        await producer.start()
        admin = aredis.Redis.from_url(url)
        try:
            await producer.open_replies(_ignore)
            missing = OutgoingMessage(RedisStreamRoute(stream="rr.missing"), b"{}", {})
            with pytest.raises(NoRouteError, match="does not exist"):
                await producer.send_request(missing)
            await admin.script_flush()
            await admin.xgroup_create(stream, "g", id="$", mkstream=True)
            request = OutgoingMessage(RedisStreamRoute(stream=stream), b"{}", {"a": "b"})
            await producer.send_request(request)
            assert await admin.xlen(stream) == 1
            await producer.send_request(request)
            assert await admin.xlen(stream) == 2
            [(_, fields)] = await admin.xrange(stream, count=1)
            assert fields[b"payload"] == b"{}"
        finally:
            await producer.stop()
            await admin.aclose()


@pytest.mark.parametrize("yields", [1, 2, 3, 4, 6, 10])
async def test_a_cancelled_replier_does_not_lose_replies(client: aredis.Redis, yields: int) -> None:
    """The first replier flushes the queue itself; cancelled at any point once it
    started (``yields`` steps in), what it had not finished goes out from a task (perhaps
    twice: harmless), and the next reply is not held up."""
    from dispytch.redis._replies import ReplyPublisher

    channel = f"rr.replies.{uuid.uuid4().hex[:10]}"
    ps = client.pubsub()
    await ps.subscribe(channel)
    publisher = ReplyPublisher(timeout=5.0)
    request = Message(b"", route="r", headers={HEADER_REPLY_TO: channel})
    try:
        leader = asyncio.ensure_future(publisher.publish(client, request, b"first", {}))
        for _ in range(yields):
            await asyncio.sleep(0)
        leader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leader
        await asyncio.wait_for(publisher.publish(client, request, b"second", {}), 5)
        got: list[bytes] = []
        async with asyncio.timeout(5):
            while b"second" not in got:
                msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    got.append(unpack(msg["data"])[0])
        assert b"first" in got and set(got) == {b"first", b"second"}
    finally:
        await ps.aclose()
