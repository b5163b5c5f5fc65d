"""Redis Pub/Sub transport against the real server: at-most-once, patterns, envelope."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from dispytch import Event, EventBase, EventEmitter, NotStartedError
from dispytch.dispatcher import EventDispatcher
from dispytch.redis import (
    RedisConsumer,
    RedisEventRoute,
    RedisEventSubscription,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamRoute,
    RedisStreamSubscription,
)
from dispytch.routes import TopicRoute, TopicSubscription
from dispytch.transport import Message, OutgoingMessage

from tests.redis.redis_support import REDIS_URL, Names

pytestmark = pytest.mark.broker

TIMEOUT = 10.0


class UserEvent(EventBase):
    __event_type__ = "user_event"
    user_id: int
    action: str


async def wait_for(check: Any, what: str, timeout: float = TIMEOUT) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def outgoing(route: Any, payload: bytes = b"{}", **headers: str) -> OutgoingMessage:
    return OutgoingMessage(route, payload, dict(headers))


# ---------------------------------------------------------------------- round trips
async def test_seed_style_round_trip(client: aredis.Redis, names: Names) -> None:
    """RedisProducer(redis) / RedisConsumer(redis.pubsub()) as the seed docs show."""
    channel = names.channel()
    got: list[Event[UserEvent]] = []
    dispatcher = EventDispatcher(RedisConsumer(client.pubsub()))

    @dispatcher.handler(RedisEventSubscription(channel=channel))
    async def on_user(event: Event[UserEvent]) -> None:
        got.append(event)

    emitter = EventEmitter(RedisProducer(client))
    async with dispatcher, emitter:
        for i in range(3):
            await emitter.emit(
                UserEvent(user_id=i, action="login"), route=RedisEventRoute(channel=channel)
            )
        await wait_for(lambda: len(got) == 3, "3 events")
    assert [e.body.user_id for e in got] == [0, 1, 2]
    assert got[0].route == channel
    assert got[0].type == "user_event"
    assert got[0].attempt == 1
    assert got[0].metadata["pattern"] is None
    # The user's client is still theirs and still open.
    assert await client.ping()


async def test_patterns_inject_route_params(client: aredis.Redis, names: Names) -> None:
    base = names.channel("users")
    by_param: list[tuple[int, str]] = []
    by_star: list[str] = []
    dispatcher = EventDispatcher(RedisConsumer(client))

    @dispatcher.handler(RedisEventSubscription(channel=f"{base}.{{user_id}}.events"))
    async def on_events(event: Event[UserEvent], user_id: int) -> None:
        by_param.append((user_id, event.route))

    @dispatcher.handler(RedisEventSubscription(channel=f"{base}.*.events"))
    async def on_any(message: Message) -> None:
        by_star.append(message.metadata["pattern"])

    class Routed(UserEvent):
        __route__ = RedisEventRoute(channel=base + ".{user_id}.events")

    emitter = EventEmitter(RedisProducer(client))
    async with dispatcher, emitter:
        await emitter.emit(Routed(user_id=42, action="x"))
        await emitter.emit(Routed(user_id=7, action="y"))
        await wait_for(lambda: len(by_param) == 2 and len(by_star) == 2, "pattern deliveries")
    assert sorted(by_param) == [(7, f"{base}.7.events"), (42, f"{base}.42.events")]
    assert set(by_star) == {f"{base}.*.events"}


async def test_headers_and_key_travel_in_the_envelope(client: aredis.Redis, names: Names) -> None:
    channel = names.channel()
    got: list[Message] = []
    consumer = RedisConsumer(client)
    consumer.subscribe([RedisEventSubscription(channel=channel)])
    await consumer.start()
    producer = RedisProducer(client)
    await producer.start()
    try:
        message = OutgoingMessage(
            RedisEventRoute(channel=channel), b'{"x":1}', {"tenant": "acme", "é": "ü"}, b"k-1"
        )
        assert await producer.publish(message) == 1

        async def take() -> None:
            async for msg in consumer.listen():
                got.append(msg)
                return

        await asyncio.wait_for(take(), TIMEOUT)
    finally:
        await producer.stop()
        await consumer.close()
    assert got[0].payload == b'{"x":1}'
    assert got[0].headers == {"tenant": "acme", "é": "ü"}
    assert got[0].key == b"k-1"
    assert got[0].route == channel


async def test_plain_publish_from_another_program_is_received(
    client: aredis.Redis, names: Names
) -> None:
    channel = names.channel()
    got: list[Event[UserEvent]] = []
    dispatcher = EventDispatcher(RedisConsumer(client))

    @dispatcher.handler(TopicSubscription(topic=channel))
    async def on_user(event: Event[UserEvent]) -> None:
        got.append(event)

    async with dispatcher:
        await client.publish(channel, b'{"user_id": 5, "action": "raw"}')
        await wait_for(lambda: bool(got), "raw publish")
    assert got[0].body == UserEvent(user_id=5, action="raw")
    assert got[0].headers == {}


async def test_topic_route_goes_to_a_channel(client: aredis.Redis, names: Names) -> None:
    channel = names.channel()
    consumer = RedisConsumer(client)
    consumer.subscribe([TopicSubscription(topic=channel)])
    await consumer.start()
    producer = RedisProducer(client)
    await producer.start()
    try:
        await producer.send(outgoing(TopicRoute(topic=channel)))
        assert producer.last_receivers == 1
    finally:
        await producer.stop()
        await consumer.close()


async def test_send_batch_returns_receivers(client: aredis.Redis, names: Names) -> None:
    heard, unheard = names.channel(), names.channel()
    consumer = RedisConsumer(client)
    consumer.subscribe([RedisEventSubscription(channel=heard)])
    await consumer.start()
    producer = RedisProducer(client, warn_no_receivers=False)
    await producer.start()
    try:
        result = await producer.publish_batch(
            [
                outgoing(RedisEventRoute(channel=heard)),
                outgoing(RedisEventRoute(channel=unheard)),
                outgoing(RedisEventRoute(channel=heard)),
            ]
        )
    finally:
        await producer.stop()
        await consumer.close()
    assert result == [1, 0, 1]
    assert producer.last_batch_receivers == [1, 0, 1]
    assert producer.last_receivers == 1


async def test_pubsub_producer_also_appends_to_streams(client: aredis.Redis, names: Names) -> None:
    stream = names.stream()
    producer = RedisProducer(client)
    await producer.start()
    try:
        assert await producer.publish(outgoing(RedisStreamRoute(stream=stream), b"p")) is None
    finally:
        await producer.stop()
    entries = await client.xrange(stream)
    assert entries[0][1][b"payload"] == b"p"


# ---------------------------------------------------------------------- no receivers
async def test_no_receivers_is_counted_and_logged(
    client: aredis.Redis, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    producer = RedisProducer(client)
    await producer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="dispytch.redis"):
            receivers = await producer.publish(outgoing(RedisEventRoute(channel=names.channel())))
    finally:
        await producer.stop()
    assert receivers == 0
    assert producer.last_receivers == 0
    assert producer.unheard == 1
    warnings = [r for r in caplog.records if "no client is subscribed" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING]


async def test_no_receivers_warnings_are_rate_limited_per_channel(
    client: aredis.Redis, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    from dispytch.redis import producer as producer_module

    producer = RedisProducer(client)
    await producer.start()
    quiet, other = names.channel(), names.channel()
    try:
        with caplog.at_level(logging.WARNING, logger="dispytch.redis"):
            await producer.send_batch([outgoing(RedisEventRoute(channel=quiet))] * 5)
            await producer.send(outgoing(RedisEventRoute(channel=other)))
            producer._warned[quiet] = (
                producer._warned[quiet][0] - producer_module.WARN_INTERVAL,
                producer._warned[quiet][1],
            )
            await producer.send(outgoing(RedisEventRoute(channel=quiet)))
    finally:
        await producer.stop()
    assert producer.unheard == 7
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert quiet in messages[0] and other in messages[1]
    assert "(4 more since the last warning)" in messages[2]


async def test_no_receivers_warning_can_be_silenced_and_hooked(
    client: aredis.Redis, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[OutgoingMessage] = []

    async def remember(message: OutgoingMessage) -> None:
        seen.append(message)

    producer = RedisProducer(client, warn_no_receivers=False, on_no_receivers=remember)
    await producer.start()
    message = outgoing(RedisEventRoute(channel=names.channel()))
    try:
        with caplog.at_level(logging.WARNING, logger="dispytch.redis"):
            await producer.send(message)
            await producer.send_batch([message])
    finally:
        await producer.stop()
    assert seen == [message, message]
    assert not [r for r in caplog.records if r.name == "dispytch.redis"]

    sync_seen: list[OutgoingMessage] = []
    producer = RedisProducer(client, warn_no_receivers=False, on_no_receivers=sync_seen.append)
    await producer.start()
    try:
        await producer.send(message)
    finally:
        await producer.stop()
    assert sync_seen == [message]


# ---------------------------------------------------------------------- misuse
def test_sync_client_is_refused_at_construction() -> None:
    sync = redis.Redis.from_url(REDIS_URL)
    try:
        with pytest.raises(TypeError, match=r"asyncio Redis client.*redis\.asyncio"):
            RedisProducer(sync)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="asyncio PubSub"):
            RedisConsumer(sync.pubsub())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="asyncio PubSub"):
            RedisConsumer(sync)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"asyncio Redis client.*redis\.asyncio"):
            RedisStreamConsumer(sync)  # type: ignore[arg-type]
    finally:
        sync.close()
    with pytest.raises(TypeError, match="needs a redis.asyncio.Redis client, got str"):
        RedisProducer("redis://localhost")  # type: ignore[arg-type]


async def test_decoding_client_is_refused() -> None:
    decoding = aredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisProducer(decoding)
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisConsumer(decoding.pubsub())
    finally:
        await decoding.aclose()


async def test_a_users_client_is_usable_without_start_and_refused_after_stop(
    client: aredis.Redis, names: Names
) -> None:
    producer = RedisProducer(client, warn_no_receivers=False)
    message = outgoing(RedisEventRoute(channel=names.channel()))
    # A redis.asyncio client connects on first use: no start() needed (the seed's way).
    assert await producer.publish(message) == 0
    await producer.send_batch([message])
    await producer.stop()
    with pytest.raises(NotStartedError, match=r"was stopped: the event was not sent\.\nCall"):
        await producer.send(message)
    with pytest.raises(NotStartedError, match="was stopped"):
        await producer.send_batch([message])
    # Stopping a producer over the user's client leaves that client open...
    assert await client.ping()
    # ...and start() makes the producer usable again.
    await producer.start()
    assert await producer.publish(message) == 0


async def test_start_fails_clearly_when_redis_is_unreachable() -> None:
    from dispytch.errors import EmitError

    producer = RedisProducer.from_url("redis://127.0.0.1:1/0?socket_connect_timeout=1")
    with pytest.raises(EmitError, match=r"Cannot reach Redis at 127\.0\.0\.1:1"):
        await producer.start()
    await producer.stop()


async def test_unknown_route_type_is_refused(client: aredis.Redis) -> None:
    from dispytch.memory import MemoryEventRoute

    class Other(RedisEventRoute.__mro__[1]):  # a bare EventRoute subclass
        pass

    producer = RedisProducer(client)
    await producer.start()
    try:
        # MemoryEventRoute is a TopicRoute: accepted as a channel name.
        assert await producer.publish(outgoing(MemoryEventRoute(topic="t.none"))) == 0
        with pytest.raises(TypeError, match="cannot publish to"):
            await producer.send(outgoing(Other()))
    finally:
        await producer.stop()


async def test_consumer_refuses_streams_and_foreign_subscriptions(client: aredis.Redis) -> None:
    consumer = RedisConsumer(client)
    with pytest.raises(TypeError, match="reads a Redis Stream.*RedisStreamConsumer"):
        consumer.subscribe([RedisStreamSubscription(stream="s", group="g")])
    with pytest.raises(ValueError, match="nothing to subscribe to"):
        await consumer.start()
    await consumer.close()


async def test_listen_before_start_raises(client: aredis.Redis) -> None:
    consumer = RedisConsumer(client)
    with pytest.raises(NotStartedError, match="not started"):
        async for _ in consumer.listen():
            pass
    await consumer.close()


# ---------------------------------------------------------------------- lifecycle
async def test_stop_ends_a_blocked_listen_promptly(client: aredis.Redis, names: Names) -> None:
    consumer = RedisConsumer(client)
    consumer.subscribe([RedisEventSubscription(channel=names.channel())])
    await consumer.start()

    async def drain() -> None:
        async for _ in consumer.listen():
            pass

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.05)  # let it block on an empty channel
    await consumer.stop()
    await asyncio.wait_for(task, TIMEOUT)
    await consumer.close()


async def test_close_unsubscribes_but_keeps_the_users_pubsub(
    client: aredis.Redis, names: Names
) -> None:
    channel = names.channel()
    pubsub = client.pubsub()
    consumer = RedisConsumer(pubsub)
    consumer.subscribe([RedisEventSubscription(channel=channel)])
    await consumer.start()
    assert await client.publish(channel, b"x") == 1
    await consumer.close()

    async def unsubscribed() -> bool:
        return (await client.pubsub_numsub(channel))[0][1] == 0

    for _ in range(200):
        if await unsubscribed():
            break
        await asyncio.sleep(0.01)
    assert await unsubscribed()
    # The PubSub is still the user's to use.
    await pubsub.subscribe(channel)
    assert await client.publish(channel, b"y") == 1
    await pubsub.aclose()


async def test_from_url_owns_its_clients(names: Names) -> None:
    channel = names.channel()
    got: list[bytes] = []
    dispatcher = EventDispatcher.from_url(REDIS_URL)

    @dispatcher.handler(RedisEventSubscription(channel=channel))
    async def on_raw(message: Message) -> None:
        got.append(message.payload)

    emitter = EventEmitter.from_url(REDIS_URL)
    async with dispatcher, emitter:
        await emitter.producer.send(outgoing(RedisEventRoute(channel=channel), b"hello"))
        await wait_for(lambda: got == [b"hello"], "from_url round trip")


async def test_nack_with_requeue_warns_that_the_message_is_gone(
    client: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = RedisConsumer(client)
    msg = Message(b"", route="some.channel")
    with caplog.at_level(logging.WARNING, logger="dispytch.redis"):
        await consumer.ack(msg)
        await consumer.nack(msg, requeue=False)
        assert not caplog.records
        await consumer.nack(msg, requeue=True)
    assert "cannot redeliver" in caplog.records[0].getMessage()
    await consumer.close()


async def test_users_pubsub_is_usable_after_a_stop_under_load(
    client: aredis.Redis, names: Names
) -> None:
    """Stopping the fast reader mid-stream (possibly inside a frame) must leave the
    user's PubSub working: the connection is dropped and redis-py reconnects it."""
    busy, later = names.channel(), names.channel()
    pubsub = client.pubsub()
    consumer = RedisConsumer(pubsub, max_buffered=10)
    consumer.subscribe([RedisEventSubscription(channel=busy)])
    await consumer.start()
    big = b"x" * 200_000
    stop_publishing = asyncio.Event()

    async def flood() -> None:
        while not stop_publishing.is_set():
            await client.publish(busy, big)
            await asyncio.sleep(0)

    flooder = asyncio.create_task(flood())
    seen = 0
    async for _ in consumer.listen():
        seen += 1
        if seen == 5:
            break
    await consumer.stop()
    stop_publishing.set()
    await asyncio.wait_for(flooder, TIMEOUT)
    await consumer.close()

    await pubsub.subscribe(later)

    async def next_data() -> bytes:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg["channel"] == later.encode():
                return bytes(msg["data"])
            await client.publish(later, b"after")

    assert await asyncio.wait_for(next_data(), TIMEOUT) == b"after"
    await pubsub.aclose()


async def test_a_stopped_consumer_cannot_restart(client: aredis.Redis, names: Names) -> None:
    consumer = RedisConsumer(client)
    consumer.subscribe([RedisEventSubscription(channel=names.channel())])
    await consumer.start()
    await consumer.close()
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        await consumer.start()


async def test_a_reader_bug_ends_listen_with_consumer_closed_error(
    client: aredis.Redis,
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dispytch.errors import ConsumerClosedError

    def broken(response: Any) -> None:
        raise ZeroDivisionError("a bug")

    channel = names.channel()
    consumer = RedisConsumer(client)
    monkeypatch.setattr(consumer, "_handle", broken)
    consumer.subscribe([RedisEventSubscription(channel=channel)])
    await consumer.start()

    async def drain() -> None:
        async for _ in consumer.listen():
            pass

    with caplog.at_level(logging.ERROR, logger="dispytch.redis"):
        await client.publish(channel, b"x")
        with pytest.raises(ConsumerClosedError, match="ZeroDivisionError: a bug"):
            await asyncio.wait_for(drain(), TIMEOUT)
    await consumer.close()
    assert "Pub/Sub reader failed" in caplog.records[0].getMessage()


async def test_a_producer_from_a_url_connects_in_start(names: Names) -> None:
    producer = RedisProducer.from_url(REDIS_URL, warn_no_receivers=False)
    message = outgoing(RedisEventRoute(channel=names.channel()))
    with pytest.raises(NotStartedError, match=r"is not started: the event was not sent\.\nCall"):
        await producer.send(message)
    await producer.start()
    assert await producer.publish(message) == 0
    await producer.stop()  # closes the client it made
    with pytest.raises(NotStartedError, match="was stopped"):
        await producer.send(message)
    await producer.start()  # and start() makes a new one
    assert await producer.publish(message) == 0
    await producer.stop()
