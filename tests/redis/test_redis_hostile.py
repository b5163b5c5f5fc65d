"""Input that must not stop a Redis consumer, against the real Redis: RESP3 push frames in
the middle of reads, stream names that are not UTF-8, malformed stream entries."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis
from dispytch import Event, EventBase
from dispytch.dispatcher import EventDispatcher
from dispytch.redis import (
    RedisConsumer,
    RedisEventSubscription,
    RedisStreamConsumer,
    RedisStreamSubscription,
)

from tests.redis.redis_support import REDIS_URL, Names

pytestmark = pytest.mark.broker

TIMEOUT = 20.0


class Ping(EventBase):
    n: int


class TrackingConnection(aredis.Connection):
    """A connection with server-assisted client-side caching in broadcast mode: every key
    written by anyone sends this connection an ``invalidate`` RESP3 push frame, whatever
    it is reading at the time."""

    async def _track(self) -> None:
        await self.send_command("CLIENT", "TRACKING", "ON", "BCAST")
        reply = await self.read_response()
        assert reply in (b"OK", "OK"), reply

    async def on_connect(self) -> None:
        await super().on_connect()
        if not hasattr(aredis.Connection, "on_connect_check_health"):
            await self._track()

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)  # type: ignore[misc]
        await self._track()


@pytest.fixture
async def resp3() -> AsyncIterator[aredis.Redis]:
    """A HELLO 3 client whose every connection receives invalidation push frames."""
    name = f"dispytch-resp3-{uuid.uuid4().hex[:8]}"
    url = REDIS_URL.removeprefix("redis://")
    host, _, rest = url.partition(":")
    pool = aredis.ConnectionPool(
        connection_class=TrackingConnection,
        host=host,
        port=int(rest.split("/")[0] or 6379),
        protocol=3,
        client_name=name,
    )
    client = aredis.Redis(connection_pool=pool)
    yield client
    await client.aclose()
    await pool.aclose()


async def tracked_connections(admin: aredis.Redis, client: aredis.Redis) -> list[dict[str, Any]]:
    name = client.connection_pool.connection_kwargs["client_name"]
    return [
        c
        for c in await admin.client_list()
        if c.get("name") == name and "t" in c.get("flags", "") and c.get("resp") == "3"
    ]


async def until(check: Any, what: str) -> None:
    async def loop() -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(loop(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def test_push_frames_in_the_middle_of_stream_reads_lose_nothing(
    client: aredis.Redis, resp3: aredis.Redis, names: Names
) -> None:
    stream = names.stream("push")
    noise = names.stream("push-noise")  # written between entries: one push frame each
    got: list[int] = []
    dispatcher = EventDispatcher(RedisStreamConsumer(resp3, group="g", block_ms=200))

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_ping(event: Event[Ping]) -> None:
        got.append(event.body.n)

    async with dispatcher:
        for n in range(200):
            await client.xadd(stream, {"payload": Ping(n=n).model_dump_json()})
            await client.set(noise, n)
            if n % 50 == 0:
                await asyncio.sleep(0.05)  # let reads block, so frames land inside them
        await until(lambda: len(got) == 200, "every entry handled")
        # The reader (and the acks) really ran on RESP3 connections with tracking on.
        assert await tracked_connections(client, resp3)
        assert dispatcher.running
    assert sorted(got) == list(range(200))
    assert int((await client.xpending(stream, "g"))["pending"]) == 0


async def test_push_frames_in_the_middle_of_a_pubsub_stream_lose_nothing(
    client: aredis.Redis, resp3: aredis.Redis, names: Names
) -> None:
    channel = names.channel("push")
    noise = names.stream("push-noise")
    got: list[int] = []
    dispatcher = EventDispatcher(RedisConsumer(resp3.pubsub()))

    @dispatcher.handler(RedisEventSubscription(channel=channel))
    async def on_ping(event: Event[Ping]) -> None:
        got.append(event.body.n)

    async with dispatcher:
        for n in range(200):
            await client.publish(channel, Ping(n=n).model_dump_json())
            await client.set(noise, n)
        await until(lambda: len(got) == 200, "every message handled")
        assert await tracked_connections(client, resp3)
        assert dispatcher.running
    assert sorted(got) == list(range(200))


async def test_stream_names_that_are_not_utf8_do_not_stop_discovery(
    client: aredis.Redis, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"test.bad.{uuid.uuid4().hex[:8]}"
    bad_before = f"{prefix}.".encode() + b"\xff\xfe-before"
    bad_after = f"{prefix}.".encode() + b"\xc3\x28-after"
    good = f"{prefix}.eu"
    names.keys += [bad_before, bad_after, good]
    await client.xadd(bad_before, {"payload": b"{}"})
    got: list[tuple[str, int]] = []
    consumer = RedisStreamConsumer(
        client, group="g", block_ms=50, claim_interval=0.05, discover_interval=0.05, start_id="0"
    )
    dispatcher = EventDispatcher(consumer)

    @dispatcher.handler(RedisStreamSubscription(stream=f"{prefix}.{{region}}"))
    async def on_ping(event: Event[Ping], region: str) -> None:
        got.append((region, event.body.n))

    with caplog.at_level(logging.WARNING, logger="dispytch.redis"):
        async with dispatcher:  # a bad name existing before start() does not fail start
            await client.xadd(bad_after, {"payload": b"{}"})  # nor one found later
            await client.xadd(good, {"payload": Ping(n=1).model_dump_json()})
            await until(lambda: got == [("eu", 1)], "the entry of the valid stream")
            await asyncio.sleep(0.3)  # several discovery passes over the bad names
            assert dispatcher.running
    warnings = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(warnings) == 2  # once per bad name, not once per pass


async def test_malformed_entries_go_to_the_dead_letter_stream_with_the_error(
    client: aredis.Redis, names: Names
) -> None:
    stream, dlq = names.stream("poison"), names.stream("poison-dlq")
    got: list[int] = []
    dispatcher = EventDispatcher(
        RedisStreamConsumer(client, group="g", block_ms=50, dead_letter_stream=dlq)
    )

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def on_ping(event: Event[Ping]) -> None:
        got.append(event.body.n)

    async with dispatcher:
        await client.xadd(stream, {"payload": Ping(n=1).model_dump_json()})
        await client.xadd(stream, {"payload": b"{}", "headers": b"\xff not json"})
        await client.xadd(stream, {"payload": b"{}", "headers": b"[1, 2]"})
        await client.xadd(stream, {"a": b"1", "b": b"2"})  # no payload field, two others
        await client.xadd(stream, {"payload": Ping(n=2).model_dump_json()})
        await until(lambda: got == [1, 2], "the valid entries around the bad ones")

        async def dead_lettered() -> int:
            return int(await client.xlen(dlq))

        for _ in range(500):
            if await dead_lettered() == 3:
                break
            await asyncio.sleep(0.01)
    entries = await client.xrange(dlq)
    assert len(entries) == 3
    for _, fields in entries:
        headers = json.loads(fields[b"headers"])
        assert headers["dispytch-error-type"] == "MalformedEntry"
        assert headers["dispytch-original-route"] == stream
        assert headers["dispytch-error-message"]  # the parse error, not "Rejected"
    first = json.loads(entries[0][1][b"headers"])
    assert "headers are not valid JSON" in first["dispytch-error-message"]
    assert entries[0][1][b"original-headers"] == b"\xff not json"
    assert int((await client.xpending(stream, "g"))["pending"]) == 0


async def test_rejected_entries_carry_the_real_error(client: aredis.Redis, names: Names) -> None:
    stream, dlq = names.stream(), names.stream("dlq")
    consumer = RedisStreamConsumer(client, group="g", block_ms=50, dead_letter_stream=dlq)
    consumer.subscribe([RedisStreamSubscription(stream=stream)])
    await consumer.start()
    try:
        await client.xadd(stream, {"payload": b'{"n": 1}'})
        it = consumer.listen().__aiter__()
        message = await asyncio.wait_for(it.__anext__(), TIMEOUT)
        await consumer.nack(message, requeue=False, error=ValueError("amount must be > 0"))
    finally:
        await consumer.stop()
        await consumer.close()
    [(_, fields)] = await client.xrange(dlq)
    headers = json.loads(fields[b"headers"])
    assert headers["dispytch-error-type"] == "ValueError"
    assert headers["dispytch-error-message"] == "amount must be > 0"
    assert fields[b"payload"] == b'{"n": 1}'


async def test_dead_letters_from_the_dispatcher_carry_the_handlers_error(
    client: aredis.Redis, names: Names
) -> None:
    stream, dlq = names.stream(), names.stream("dlq")
    dispatcher = EventDispatcher(
        RedisStreamConsumer(client, group="g", block_ms=50, dead_letter_stream=dlq)
    )

    @dispatcher.handler(RedisStreamSubscription(stream=stream))
    async def refuse(event: Event[Ping]) -> None:
        raise LookupError(f"no account for ping {event.body.n}")

    async with dispatcher:
        await client.xadd(stream, {"payload": Ping(n=7).model_dump_json()})
        await client.xadd(stream, {"payload": b"not json"})  # invalid payload
        for _ in range(1000):
            if int(await client.xlen(dlq)) == 2:
                break
            await asyncio.sleep(0.01)
    by_type = {}
    for _, fields in await client.xrange(dlq):
        headers = json.loads(fields[b"headers"])
        by_type[headers["dispytch-error-type"]] = headers["dispytch-error-message"]
    assert by_type["LookupError"] == "no account for ping 7"
    assert "PayloadError" in by_type  # not "Rejected"
