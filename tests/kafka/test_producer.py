"""KafkaProducer against a real broker (Tansu)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from dispytch.emitter import EventEmitter
from dispytch.errors import EmitError, EmitTimeoutError, NotStartedError
from dispytch.event import EventBase
from dispytch.kafka import KafkaEventRoute, KafkaProducer
from dispytch.routes import TopicRoute
from dispytch.transport import OutgoingMessage

from .helpers import create_topic

pytestmark = pytest.mark.broker


class Ping(EventBase):
    __event_type__ = "ping"
    n: int
    user: str = "ann"


async def read(bootstrap: str, topic: str, count: int) -> list:
    c = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await c.start()
    got: list = []
    try:
        async with asyncio.timeout(30):
            while len(got) < count:
                for recs in (await c.getmany(timeout_ms=200)).values():
                    got.extend(recs)
    finally:
        await c.stop()
    return got


async def test_wrapped_producer_round_trip_with_key_headers_partition(
    kafka_bootstrap: str, topic: str
) -> None:
    await create_topic(kafka_bootstrap, topic, 3)
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw.start()
    try:
        emitter = EventEmitter(KafkaProducer(raw))  # seed usage: no emitter.start()
        await emitter.emit(
            Ping(n=1),
            route=KafkaEventRoute(topic=topic, key="user", partition=2, headers={"a": "b"}),
            headers={"tenant": "acme"},
        )
        await emitter.emit(Ping(n=2), route=TopicRoute(topic=topic))
    finally:
        await raw.stop()
    recs = sorted(await read(kafka_bootstrap, topic, 2), key=lambda r: r.value)
    first = next(r for r in recs if b'"n":1' in r.value)
    assert first.partition == 2
    assert first.key == b"ann"
    headers = dict(first.headers)
    assert headers["a"] == b"b" and headers["tenant"] == b"acme"
    assert headers["dispytch-event-type"] == b"ping"


async def test_dynamic_topic(kafka_bootstrap: str, topic: str) -> None:
    await create_topic(kafka_bootstrap, f"{topic}.ann", 1)
    async with EventEmitter(KafkaProducer.from_url(f"kafka://{kafka_bootstrap}")) as em:
        await em.emit(Ping(n=5), route=KafkaEventRoute(topic=topic + ".{user}"))
    (rec,) = await read(kafka_bootstrap, f"{topic}.ann", 1)
    assert b'"n":5' in rec.value


async def test_send_batch_sends_all(kafka_bootstrap: str, topic: str) -> None:
    await create_topic(kafka_bootstrap, topic, 2)
    async with EventEmitter(KafkaProducer.from_url(f"kafka://{kafka_bootstrap}")) as em:
        await em.producer.send_batch(
            [em.build(Ping(n=i), route=KafkaEventRoute(topic=topic)) for i in range(300)]
        )
    assert len(await read(kafka_bootstrap, topic, 300)) == 300


@pytest.mark.parametrize(
    ("batch_bytes", "expected"),
    [(None, 256 * 1024), (64 * 1024, 64 * 1024), (16384, 16384)],
)
async def test_send_batch_packs_batch_bytes(
    kafka_bootstrap: str, topic: str, batch_bytes: int | None, expected: int
) -> None:
    """An owned client is built with ``max_batch_size=batch_bytes`` (public); batches of
    that size keep order and headers across batch boundaries."""
    await create_topic(kafka_bootstrap, topic, 1)
    producer = KafkaProducer.from_url(f"kafka://{kafka_bootstrap}", batch_bytes=batch_bytes)
    async with EventEmitter(producer) as em:
        assert producer.raw is not None
        batch = producer.raw.create_batch()
        fits = 0
        while batch.append(timestamp=None, key=None, value=b"x" * 1000, headers=[]):
            fits += 1
        assert fits * 1000 <= expected < (fits + 1) * 1100  # ~1000 B per record
        route = KafkaEventRoute(topic=topic, headers={"tenant": "acme"})
        await em.producer.send_batch(
            [em.build(Ping(n=i, user="x" * 200), route=route) for i in range(2000)]
        )
    recs = await read(kafka_bootstrap, topic, 2000)
    assert [Ping.model_validate_json(r.value).n for r in recs] == list(range(2000))
    assert all(dict(r.headers)["tenant"] == b"acme" for r in recs)


async def test_send_batch_mixes_keyed_and_unkeyed_on_one_route(
    kafka_bootstrap: str, topic: str
) -> None:
    """Keyed records go where the partitioner puts their key (as ``send`` does), also
    between unkeyed ones on the same route; unkeyed ones stick to one partition."""
    await create_topic(kafka_bootstrap, topic, 4)
    producer = KafkaProducer.from_url(f"kafka://{kafka_bootstrap}")
    route = KafkaEventRoute(topic=topic)
    async with EventEmitter(producer) as em:
        assert producer.raw is not None
        msgs = [
            em.build(Ping(n=i), route=route, key=f"k{i % 7}" if i % 3 == 0 else None)
            for i in range(300)
        ]
        await em.producer.send_batch(msgs)
        for k in range(7):  # the same keys through send(): aiokafka's own partitioner
            await em.producer.send(em.build(Ping(n=1000 + k), route=route, key=f"k{k}"))
    recs = await read(kafka_bootstrap, topic, 307)
    where: dict[bytes, set[int]] = {}
    for r in recs:
        if r.key is not None:
            where.setdefault(r.key, set()).add(r.partition)
    assert len(where) == 7 and all(len(ps) == 1 for ps in where.values()), where
    assert len({r.partition for r in recs if r.key is None}) == 1
    recs = [r for r in recs if Ping.model_validate_json(r.value).n < 1000]
    by_partition: dict[int, list[int]] = {}
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(r.partition, []).append(Ping.model_validate_json(r.value).n)
    assert all(ns == sorted(ns) for ns in by_partition.values())  # order kept per partition


def test_batch_bytes_from_url() -> None:
    producer = KafkaProducer.from_url("kafka://127.0.0.1:9?batch_bytes=65536")
    assert producer.batch_bytes == 65536


async def test_not_started_raw_producer_raises(kafka_bootstrap: str, topic: str) -> None:
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer = KafkaProducer(raw)
    msg = OutgoingMessage(KafkaEventRoute(topic=topic), b"{}", {})
    with pytest.raises(NotStartedError, match=r"await raw_producer.start\(\)"):
        await producer.send(msg)
    with pytest.raises(NotStartedError, match="was not started"):
        await producer.send_batch([msg])
    await raw.start()
    await raw.stop()
    with pytest.raises(NotStartedError, match="was stopped"):
        await producer.send(msg)


async def test_owned_producer_not_started_or_stopped_raises(
    kafka_bootstrap: str, topic: str
) -> None:
    await create_topic(kafka_bootstrap, topic, 1)
    producer = KafkaProducer.from_url(f"kafka://{kafka_bootstrap}")
    msg = OutgoingMessage(KafkaEventRoute(topic=topic), b"{}", {})
    with pytest.raises(NotStartedError, match=r"Call `await emitter.start\(\)`"):
        await producer.send(msg)
    await producer.start()
    await producer.send(msg)
    await producer.stop()
    with pytest.raises(NotStartedError, match="not started"):
        await producer.send(msg)


async def test_delivery_timeout_raises_and_reaches_on_timeout(
    kafka_bootstrap: str, topic: str
) -> None:
    """A delivery timeout shorter than any round trip: deterministic without a slow broker."""
    await create_topic(kafka_bootstrap, topic, 1)
    producer = KafkaProducer.from_url(f"kafka://{kafka_bootstrap}", delivery_timeout=1e-9)
    async with EventEmitter(producer) as em:
        with pytest.raises(EmitTimeoutError, match="did not confirm"):
            await em.emit(Ping(n=1), route=KafkaEventRoute(topic=topic))
        timed_out: list[EventBase] = []
        em.on_timeout(timed_out.append)
        await em.emit(Ping(n=2), route=KafkaEventRoute(topic=topic))
        assert [e.n for e in timed_out] == [2]  # type: ignore[attr-defined]


async def test_unknown_partition_is_an_emit_error(kafka_bootstrap: str, topic: str) -> None:
    await create_topic(kafka_bootstrap, topic, 1)
    async with KafkaProducer.from_url(f"kafka://{kafka_bootstrap}") as producer:
        with pytest.raises(EmitError, match="partition 5"):
            await producer.send(
                OutgoingMessage(KafkaEventRoute(topic=topic, partition=5), b"{}", {})
            )


async def test_route_without_topic_is_an_emit_error(kafka_bootstrap: str) -> None:
    from dispytch.routes import EventRoute

    async with KafkaProducer.from_url(f"kafka://{kafka_bootstrap}") as producer:
        with pytest.raises(EmitError, match="publishes to topics"):
            await producer.send(OutgoingMessage(EventRoute(), b"{}", {}))


async def test_permanent_failures_are_emit_rejected_errors_with_their_cause(
    kafka_bootstrap: str, topic: str
) -> None:
    """Too large (for the client, or for the broker in a batch), no such partition: the
    dead-letter policy must not retry these, so they are ``EmitRejectedError``."""
    from aiokafka.errors import MessageSizeTooLargeError
    from dispytch.errors import EmitRejectedError

    await create_topic(kafka_bootstrap, topic, 1)
    route = KafkaEventRoute(topic=topic)
    async with KafkaProducer.from_url(f"kafka://{kafka_bootstrap}") as producer:
        huge = OutgoingMessage(route, b"x" * (2 * 1024 * 1024), {})
        with pytest.raises(EmitRejectedError, match="rejected") as info:
            await producer.send(huge)
        assert isinstance(info.value.__cause__, MessageSizeTooLargeError)
        with pytest.raises(EmitRejectedError):
            await producer.send_batch([OutgoingMessage(route, b"{}", {}), huge])
        with pytest.raises(EmitRejectedError, match="partition 5"):
            await producer.send(OutgoingMessage(KafkaEventRoute(topic=topic, partition=5), b"", {}))
    recs = await read(kafka_bootstrap, topic, 1)  # the valid one of the batch was stored
    assert [r.value for r in recs] == [b"{}"]


async def test_factory_is_called_on_start_and_owned(kafka_bootstrap: str, topic: str) -> None:
    await create_topic(kafka_bootstrap, topic, 1)
    made: list[AIOKafkaProducer] = []

    def factory() -> AIOKafkaProducer:
        made.append(AIOKafkaProducer(bootstrap_servers=kafka_bootstrap))
        return made[-1]

    producer = KafkaProducer(factory)
    assert producer.owns_client and producer.raw is None
    async with EventEmitter(producer) as em:
        await em.emit(Ping(n=1), route=KafkaEventRoute(topic=topic))
    async with EventEmitter(producer) as em:  # restart: a new client
        await em.emit(Ping(n=2), route=KafkaEventRoute(topic=topic))
    assert len(made) == 2
    from dispytch.kafka import _compat

    assert all(_compat.client_closed(p) for p in made)
    recs = await read(kafka_bootstrap, topic, 2)
    assert sorted(Ping.model_validate_json(r.value).n for r in recs) == [1, 2]


async def test_wrapped_producer_stays_the_users(kafka_bootstrap: str, topic: str) -> None:
    """``emitter.stop()`` flushes a client you passed and leaves it running."""
    await create_topic(kafka_bootstrap, topic, 1)
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw.start()
    try:
        async with EventEmitter(KafkaProducer(raw)) as em:
            await em.emit(Ping(n=1), route=KafkaEventRoute(topic=topic))
        await raw.send_and_wait(topic, b"still usable")
    finally:
        await raw.stop()
    assert len(await read(kafka_bootstrap, topic, 2)) == 2
