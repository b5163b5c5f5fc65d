"""Redis going away under a producer or a consumer (a proxy between them is killed):
what an emit says it knows, that nothing is re-sent behind the caller's back, that a
fatal consumer error ends the dispatcher, and that stop is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis
from dispytch import Event, EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.errors import ConsumerClosedError, EmitError
from dispytch.redis import (
    RedisConsumer,
    RedisEventSubscription,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamRoute,
    RedisStreamSubscription,
)
from dispytch.redis.producer import RedisBatchError
from dispytch.transport import OutgoingMessage

from tests.redis.redis_support import Names, Proxy

pytestmark = pytest.mark.broker

TIMEOUT = 20.0


class Ping(EventBase):
    n: int


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = await Proxy().start()
    yield p
    await p.kill()


def proxied(proxy: Proxy) -> aredis.Redis:
    # No retries: the test wants the failure the client sees, not redis-py's recovery.
    return aredis.Redis.from_url(proxy.url, socket_connect_timeout=1, retry=None)


async def until(check: Any, what: str) -> None:
    async def loop() -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(loop(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def test_a_batch_cut_part_way_says_what_is_known_and_resends_nothing(
    client: aredis.Redis, names: Names, proxy: Proxy
) -> None:
    stream = names.stream("cut")
    pub = proxied(proxy)
    try:
        producer = RedisProducer(pub)
        await producer.start()
        messages = [
            OutgoingMessage(RedisStreamRoute(stream=stream), b'{"n": %d}' % i, {})
            for i in range(20_000)
        ]
        proxy.cut_at = proxy.upstream_bytes + 300_000  # part-way through the batch
        with pytest.raises(RedisBatchError) as caught:
            await producer.send_batch(messages)
        error = caught.value
        assert error.confirmed + error.unknown + error.unsent == 20_000
        assert 0 < error.confirmed < 20_000
        assert error.unsent > 0
        text = str(error)
        assert f"{error.confirmed} confirmed" in text
        assert f"{error.unknown} may or may not have been stored" in text
        assert f"{error.unsent} not sent" in text
        assert "does not re-send" in text
        # Redis may still be executing what reached it before the cut: let it settle.
        stored, previous = -1, int(await client.xlen(stream))
        for _ in range(50):
            await asyncio.sleep(0.1)
            stored = int(await client.xlen(stream))
            if stored == previous:
                break
            previous = stored
        # Everything confirmed is there; nothing beyond what may have been written (a
        # re-sent round trip would add up to 1,000 more).
        assert error.confirmed <= stored <= error.confirmed + error.unknown
    finally:
        await pub.aclose()


async def test_a_send_whose_reply_is_lost_is_not_sent_again(
    client: aredis.Redis, names: Names, proxy: Proxy
) -> None:
    stream = names.stream("lost")
    pub = proxied(proxy)
    try:
        producer = RedisProducer(pub)
        await producer.start()
        message = OutgoingMessage(RedisStreamRoute(stream=stream), b'{"n": 1}', {})
        proxy.cut_at = proxy.upstream_bytes + 1  # the command goes up, the reply never back
        with pytest.raises(EmitError, match="may or may not have been stored") as caught:
            await producer.send(message)
        assert "emit again only if a duplicate is acceptable" in str(caught.value)
        await asyncio.sleep(0.2)
        assert int(await client.xlen(stream)) <= 1  # executed at most once, never re-sent
    finally:
        await pub.aclose()


async def test_a_send_while_redis_is_unreachable_says_it_was_not_sent(
    names: Names, proxy: Proxy
) -> None:
    pub = proxied(proxy)
    try:
        producer = RedisProducer(pub)
        await proxy.kill()
        message = OutgoingMessage(RedisStreamRoute(stream=names.stream()), b"{}", {})
        with pytest.raises(RedisBatchError, match="it was not sent") as caught:
            await producer.send(message)
        assert (caught.value.unsent, caught.value.unknown) == (1, 0)
    finally:
        await pub.aclose()


@pytest.mark.parametrize("kind", ["pubsub", "streams"])
async def test_stop_is_bounded_when_redis_is_unreachable(
    client: aredis.Redis, names: Names, proxy: Proxy, kind: str
) -> None:
    sub = proxied(proxy)
    got: list[int] = []
    if kind == "pubsub":
        name = names.channel()
        consumer: Any = RedisConsumer(sub)
        subscription: Any = RedisEventSubscription(channel=name)
    else:
        name = names.stream()
        consumer = RedisStreamConsumer(sub, group="g", block_ms=200)
        subscription = RedisStreamSubscription(stream=name)
    dispatcher = EventDispatcher(consumer)

    @dispatcher.handler(subscription)
    async def on_ping(event: Event[Ping]) -> None:
        got.append(event.body.n)

    emitter = EventEmitter(RedisProducer(client))
    try:
        await dispatcher.start()
        route = RedisStreamRoute(stream=name) if kind == "streams" else None
        n = 0
        while not got:  # Pub/Sub: publish until the subscription is live
            await emitter.emit(Ping(n=n), route=route or _channel(name))
            n += 1
            await asyncio.sleep(0.05)
            assert n < 200, "nothing was received"
        await proxy.kill()
        await asyncio.sleep(0.3)  # the consumer is now reconnecting to nothing
        # Within timeout + 1 s although every command to Redis fails.
        await asyncio.wait_for(dispatcher.stop(timeout=5), 6)
        assert not dispatcher.running
    finally:
        await sub.aclose()


def _channel(name: str) -> Any:
    from dispytch.redis import RedisEventRoute

    return RedisEventRoute(channel=name)


async def test_a_fatal_streams_error_ends_listen_with_consumer_closed_error(
    client: aredis.Redis, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the dispatcher turns into "stopped, wait() raises, dispytch run exits
    non-zero" (ConsumerClosedError is not retried)."""
    consumer = RedisStreamConsumer(client, group="g", block_ms=50, claim_interval=0.05)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug in recovery")

    monkeypatch.setattr(consumer._keeper, "refresh", broken)
    consumer.subscribe([RedisStreamSubscription(stream=names.stream())])
    await consumer.start()

    async def drain() -> None:
        async for _ in consumer.listen():
            pass

    try:
        with pytest.raises(ConsumerClosedError, match="ZeroDivisionError: a bug in recovery"):
            await asyncio.wait_for(drain(), TIMEOUT)
        # And again for a listen() called after the failure.
        with pytest.raises(ConsumerClosedError):
            await asyncio.wait_for(drain(), TIMEOUT)
    finally:
        await consumer.close()


async def test_a_fatal_streams_error_ends_the_dispatcher(
    client: aredis.Redis, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = RedisStreamConsumer(client, group="g", block_ms=50, claim_interval=0.05)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug in recovery")

    monkeypatch.setattr(consumer._keeper, "refresh", broken)
    dispatcher = EventDispatcher(consumer)

    @dispatcher.handler(RedisStreamSubscription(stream=names.stream()))
    async def on_ping(event: Event[Ping]) -> None:
        pass

    await dispatcher.start()
    with pytest.raises(ConsumerClosedError, match="ZeroDivisionError: a bug in recovery"):
        await asyncio.wait_for(dispatcher.wait(), TIMEOUT)
    assert not dispatcher.running
