"""KafkaConsumer against a real broker (Tansu): commits, redelivery, lanes, rebalance.

Tansu differences from Apache Kafka met here (none needs the transport to bend):

* A member joining a group waits about half its ``session_timeout_ms`` (at least 1 s)
  before the group settles; Apache Kafka waits ``group.initial.rebalance.delay.ms``
  (3 s) for a new group instead. The tests use a 3 s session timeout to stay quick.
* Right after a member left, the next join sometimes waits a whole session timeout more.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from dispytch.dispatcher import EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.errors import NotStartedError
from dispytch.event import Event, EventBase
from dispytch.kafka import (
    KafkaConfigError,
    KafkaConsumer,
    KafkaEventRoute,
    KafkaEventSubscription,
    KafkaMessage,
    KafkaProducer,
    _compat,
)
from dispytch.transport import Message

from .harness import FAST_GROUP
from .helpers import committed, create_topic

pytestmark = pytest.mark.broker

T = 30.0


class Item(EventBase):
    __event_type__ = "item"
    n: int


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


async def publish(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for v in values:
            await p.send(topic, v, partition=partition, headers=[("h", b"\xff ok")])
        await p.flush()
    finally:
        await p.stop()


async def emit_items(bootstrap: str, topic: str, ns: range, **route: Any) -> None:
    async with EventEmitter(KafkaProducer.from_url(f"kafka://{bootstrap}")) as em:
        await em.producer.send_batch(
            [em.build(Item(n=n), route=KafkaEventRoute(topic=topic, **route)) for n in ns]
        )


def consumer(bootstrap: str, gid: str, **kw: Any) -> KafkaConsumer:
    return KafkaConsumer.from_url(f"kafka://{bootstrap}", group_id=gid, **FAST_GROUP, **kw)


@contextlib.asynccontextmanager
async def listening(c: KafkaConsumer, topic: str) -> AsyncIterator[asyncio.Queue[Message]]:
    """Start ``c`` on ``topic`` and pump its messages into a queue; stop and close after."""
    c.subscribe([KafkaEventSubscription(topic=topic)])
    await c.start()
    q: asyncio.Queue[Message] = asyncio.Queue()

    async def pump() -> None:
        async for m in c.listen():
            q.put_nowait(m)

    task = asyncio.create_task(pump())
    try:
        yield q
    finally:
        await c.stop()
        await asyncio.wait_for(task, T)
        await c.close()


async def take(q: asyncio.Queue[Message], n: int) -> list[Message]:
    return [await asyncio.wait_for(q.get(), T) for _ in range(n)]


async def test_message_fields(kafka_bootstrap: str, new_topic: str) -> None:
    await publish(kafka_bootstrap, new_topic, [b"v0"])
    async with listening(consumer(kafka_bootstrap, group()), new_topic) as q:
        (m,) = await take(q, 1)
    assert m.payload == b"v0"
    assert m.route == new_topic
    assert m.headers == {"h": "\ufffd ok"}  # undecodable bytes do not break the loop
    assert m.key is None
    assert m.attempt == 1
    assert m.lane == (new_topic, 0)
    assert m.metadata["topic"] == new_topic
    assert m.metadata["partition"] == 0 and m.metadata["offset"] == 0
    assert isinstance(m.metadata["timestamp"], int)
    assert isinstance(m, KafkaMessage)
    assert m.record.offset == 0 and m.record.value == b"v0"  # the aiokafka ConsumerRecord
    assert repr(m) == (
        f"Message(route={new_topic!r}, 2 bytes, attempt=1, metadata={dict(m.metadata)!r})"
    )


async def test_out_of_order_acks_commit_only_below_the_first_unfinished(
    kafka_bootstrap: str, new_topic: str
) -> None:
    await publish(kafka_bootstrap, new_topic, [b"%d" % i for i in range(5)])
    gid = group()
    c = consumer(kafka_bootstrap, gid, ordered=False)
    async with listening(c, new_topic) as q:
        ms = await take(q, 5)
        assert all(m.lane is None for m in ms)
        for i in (4, 2, 0, 3):  # 1 is still "being handled" when the consumer closes
            await c.ack(ms[i])
    assert await committed(kafka_bootstrap, gid, new_topic) == [1]
    # The next member of the group starts at 1: 1 again, and 2-4 again (at least once).
    async with listening(consumer(kafka_bootstrap, gid), new_topic) as q:
        again = await take(q, 4)
    assert [m.metadata["offset"] for m in again] == [1, 2, 3, 4]


async def test_periodic_commits_while_running(kafka_bootstrap: str, new_topic: str) -> None:
    await publish(kafka_bootstrap, new_topic, [b"a", b"b", b"c"])
    gid = group()
    c = consumer(kafka_bootstrap, gid, commit_interval=0.0)
    async with listening(c, new_topic) as q:
        ms = await take(q, 3)
        for m in ms[:2]:
            await c.ack(m)
        async with asyncio.timeout(T):
            while c.committed_offsets().get(ms[0].token.partition.key) != 2:
                await asyncio.sleep(0.02)
        assert await committed(kafka_bootstrap, gid, new_topic) == [2]


async def test_nack_requeue_redelivers_and_holds_the_commit(
    kafka_bootstrap: str, new_topic: str
) -> None:
    await publish(kafka_bootstrap, new_topic, [b"a", b"b", b"c"])
    gid = group()
    c = consumer(kafka_bootstrap, gid)
    async with listening(c, new_topic) as q:
        a, b, cc = await take(q, 3)
        await c.ack(a)
        await c.nack(b, requeue=True)
        await c.ack(cc)  # superseded: c comes again after b
        b2, c2 = await take(q, 2)
        assert (b2.payload, b2.attempt) == (b"b", 2)
        assert (c2.payload, c2.attempt) == (b"c", 1)
        await c.ack(b2)
    assert await committed(kafka_bootstrap, gid, new_topic) == [2]  # c2 never acked


async def test_nack_without_requeue_commits_past_it(kafka_bootstrap: str, new_topic: str) -> None:
    """Kafka cannot reject one record: giving up on it means committing past it."""
    await publish(kafka_bootstrap, new_topic, [b"a", b"b"])
    gid = group()
    c = consumer(kafka_bootstrap, gid)
    async with listening(c, new_topic) as q:
        a, b = await take(q, 2)
        await c.nack(a, requeue=False)
        await c.ack(b)
    assert await committed(kafka_bootstrap, gid, new_topic) == [2]


async def test_unsettled_messages_are_redelivered_after_close(
    kafka_bootstrap: str, new_topic: str
) -> None:
    await publish(kafka_bootstrap, new_topic, [b"a", b"b"])
    gid = group()
    c = consumer(kafka_bootstrap, gid)
    async with listening(c, new_topic) as q:
        a, _b = await take(q, 2)
        await c.ack(a)
    async with listening(consumer(kafka_bootstrap, gid), new_topic) as q:
        (again,) = await take(q, 1)
    assert again.payload == b"b"


async def test_stop_ends_listen_while_it_waits(kafka_bootstrap: str, new_topic: str) -> None:
    c = consumer(kafka_bootstrap, group(), poll_timeout=3600)
    c.subscribe([KafkaEventSubscription(topic=new_topic)])
    await c.start()
    got: list[Message] = []

    async def pump() -> None:
        async for m in c.listen():
            got.append(m)

    task = asyncio.create_task(pump())
    await asyncio.sleep(0.2)  # let it block in the fetch
    assert not task.done()
    await c.stop()
    await asyncio.wait_for(task, 5)
    await c.close()
    assert got == []
    with pytest.raises(NotStartedError, match="not started"):
        async for _ in c.listen():
            pass


async def test_configuration_errors(kafka_bootstrap: str, new_topic: str) -> None:
    raw = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id="g")  # auto-commit on
    raw2 = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    try:
        with pytest.raises(KafkaConfigError, match="enable_auto_commit=False"):
            KafkaConsumer(raw)
        with pytest.raises(KafkaConfigError, match="has no group_id"):
            KafkaConsumer(raw2)
    finally:
        await raw.stop()
        await raw2.stop()
    no_group = KafkaConsumer.from_url(f"kafka://{kafka_bootstrap}")
    no_group.subscribe([KafkaEventSubscription(topic=new_topic)])
    with pytest.raises(KafkaConfigError, match="needs a consumer group"):
        await no_group.start()
    nothing = KafkaConsumer.from_url(f"kafka://{kafka_bootstrap}", group_id="g")
    with pytest.raises(KafkaConfigError, match="nothing to consume"):
        await nothing.start()


async def test_wrapped_raw_consumer_as_in_the_seed(kafka_bootstrap: str, new_topic: str) -> None:
    """``KafkaConsumer(raw)`` over a consumer the user created, subscribed and started."""
    gid = group()
    raw = AIOKafkaConsumer(
        new_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=gid,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    await raw.start()
    got: list[int] = []
    try:
        dispatcher = EventDispatcher(KafkaConsumer(raw, commit_interval=0.0))

        @dispatcher.handler(KafkaEventSubscription(topic=new_topic))
        async def on_item(event: Event[Item]) -> None:
            got.append(event.body.n)

        async with dispatcher:
            await emit_items(kafka_bootstrap, new_topic, range(10))
            async with asyncio.timeout(T):
                while len(got) < 10:
                    await asyncio.sleep(0.02)
        assert not _compat.client_closed(raw)  # the user's client stays open
        assert await committed(kafka_bootstrap, gid, new_topic) == [10]
    finally:
        await raw.stop()
    assert got == list(range(10))


async def test_invalid_payload_does_not_stall_the_partition(
    kafka_bootstrap: str, new_topic: str
) -> None:
    gid = group()
    await publish(kafka_bootstrap, new_topic, [b"{not json"])
    await emit_items(kafka_bootstrap, new_topic, range(5))
    got: list[int] = []
    dispatcher = EventDispatcher(consumer(kafka_bootstrap, gid))

    @dispatcher.handler(KafkaEventSubscription(topic=new_topic))
    async def on_item(event: Event[Item]) -> None:
        got.append(event.body.n)

    async with dispatcher:
        async with asyncio.timeout(T):
            while len(got) < 5:
                await asyncio.sleep(0.02)
    assert got == [0, 1, 2, 3, 4]
    assert dispatcher.stats["invalid_payload"] == 1
    assert await committed(kafka_bootstrap, gid, new_topic) == [6]


async def test_partitions_run_concurrently_each_in_order(kafka_bootstrap: str, topic: str) -> None:
    """Both partitions have a handler running at once (neither finishes before the other
    started), while each partition's records are handled in offset order."""
    await create_topic(kafka_bootstrap, topic, 2)
    for p in (0, 1):
        await emit_items(kafka_bootstrap, topic, range(p * 100, p * 100 + 20), partition=p)
    running: set[int] = set()
    both = asyncio.Event()
    seen: dict[int, list[int]] = {0: [], 1: []}
    dispatcher = EventDispatcher(consumer(kafka_bootstrap, group()))

    @dispatcher.handler(KafkaEventSubscription(topic=topic))
    async def on_item(event: Event[Item], message: Message) -> None:
        part = message.metadata["partition"]
        running.add(part)
        if len(running) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), T)
        seen[part].append(event.body.n)

    async with dispatcher:
        async with asyncio.timeout(T):
            while len(seen[0]) + len(seen[1]) < 40:
                await asyncio.sleep(0.02)
    assert seen[0] == list(range(20))
    assert seen[1] == list(range(100, 120))


async def test_unordered_mode_runs_one_partition_concurrently(
    kafka_bootstrap: str, new_topic: str
) -> None:
    await emit_items(kafka_bootstrap, new_topic, range(4))
    gid = group()
    started: set[int] = set()
    all_in = asyncio.Event()
    dispatcher = EventDispatcher(consumer(kafka_bootstrap, gid, ordered=False))

    @dispatcher.handler(KafkaEventSubscription(topic=new_topic))
    async def on_item(event: Event[Item]) -> None:
        started.add(event.body.n)
        if len(started) == 4:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), T)

    async with dispatcher:
        await asyncio.wait_for(all_in.wait(), T)
        async with asyncio.timeout(T):
            while dispatcher.stats["handled"] < 4:
                await asyncio.sleep(0.02)
    assert await committed(kafka_bootstrap, gid, new_topic) == [4]


async def test_revoke_flushes_commits_before_the_partitions_go(
    kafka_bootstrap: str, topic: str
) -> None:
    """No periodic commit (huge interval): only the revoke listener can commit when a
    second member joins and takes partitions away."""
    await create_topic(kafka_bootstrap, topic, 2)
    for p in (0, 1):
        await emit_items(kafka_bootstrap, topic, range(10), partition=p)
    gid = group()
    first = consumer(kafka_bootstrap, gid, commit_interval=3600)
    done: list[int] = []
    dispatcher = EventDispatcher(first)

    @dispatcher.handler(KafkaEventSubscription(topic=topic))
    async def on_item(event: Event[Item]) -> None:
        done.append(event.body.n)

    async with dispatcher:
        async with asyncio.timeout(T):
            while len(done) < 20:
                await asyncio.sleep(0.02)
        assert await committed(kafka_bootstrap, gid, topic, 2) == [None, None]
        second = consumer(kafka_bootstrap, gid)
        async with listening(second, topic):
            async with asyncio.timeout(T):
                while await committed(kafka_bootstrap, gid, topic, 2) != [10, 10]:
                    await asyncio.sleep(0.1)


async def test_pattern_subscription_with_route_params(kafka_bootstrap: str, topic: str) -> None:
    for region in ("eu", "us"):
        await create_topic(kafka_bootstrap, f"{topic}.{region}.orders", 1)
        await emit_items(kafka_bootstrap, f"{topic}.{region}.orders", range(2))
    await create_topic(kafka_bootstrap, f"{topic}.eu.refunds", 1)
    await emit_items(kafka_bootstrap, f"{topic}.eu.refunds", range(1))
    got: list[tuple[str, int]] = []
    dispatcher = EventDispatcher(consumer(kafka_bootstrap, group()))

    @dispatcher.handler(KafkaEventSubscription(topic=topic + ".{region}.orders"))
    async def on_item(event: Event[Item], region: str) -> None:
        got.append((region, event.body.n))

    async with dispatcher:
        async with asyncio.timeout(T):
            while len(got) < 4:
                await asyncio.sleep(0.02)
    assert sorted(got) == [("eu", 0), ("eu", 1), ("us", 0), ("us", 1)]


async def test_revoke_waits_for_in_flight_records(kafka_bootstrap: str, new_topic: str) -> None:
    """A record still being handled when its partition is revoked is waited for (within
    revoke_timeout) and committed before the partition goes: the new owner does not get
    it again."""
    await emit_items(kafka_bootstrap, new_topic, range(1))
    gid = group()
    release = asyncio.Event()
    started = asyncio.Event()
    handled: list[int] = []
    revoking = asyncio.Event()
    first = consumer(kafka_bootstrap, gid, commit_interval=3600)
    original = first._on_revoked

    async def spy(revoked: Any) -> None:
        if revoked:
            revoking.set()
        await original(revoked)

    first._on_revoked = spy  # type: ignore[method-assign]
    dispatcher = EventDispatcher(first)

    @dispatcher.handler(KafkaEventSubscription(topic=new_topic))
    async def on_item(event: Event[Item]) -> None:
        started.set()
        await asyncio.wait_for(release.wait(), T)
        handled.append(event.body.n)

    async with dispatcher:
        await asyncio.wait_for(started.wait(), T)
        second = consumer(kafka_bootstrap, gid)
        second.subscribe([KafkaEventSubscription(topic=new_topic)])
        joining = asyncio.create_task(second.start())  # the rebalance begins
        await asyncio.wait_for(revoking.wait(), T)
        assert await committed(kafka_bootstrap, gid, new_topic) == [None]
        release.set()  # the handler finishes while the revoke listener waits
        await asyncio.wait_for(joining, T)
        try:
            assert await committed(kafka_bootstrap, gid, new_topic) == [1]
        finally:
            await second.stop()
            await second.close()
    assert handled == [0]


async def test_wrapped_unstarted_consumer_is_subscribed_and_keeps_the_users_listener(
    kafka_bootstrap: str, new_topic: str
) -> None:
    from aiokafka import ConsumerRebalanceListener

    calls: list[str] = []

    class Mine(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            calls.append("revoked")

        async def on_partitions_assigned(self, assigned: Any) -> None:
            calls.append("assigned")

    gid = group()
    raw = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=gid,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    raw.subscribe(pattern="^nothing-matches-this$", listener=Mine())
    await emit_items(kafka_bootstrap, new_topic, range(3))
    got: list[int] = []
    dispatcher = EventDispatcher(KafkaConsumer(raw))

    @dispatcher.handler(KafkaEventSubscription(topic=new_topic))
    async def on_item(event: Event[Item]) -> None:
        got.append(event.body.n)

    try:
        async with dispatcher:  # starts the raw consumer, subscribed to both
            async with asyncio.timeout(T):
                while len(got) < 3:
                    await asyncio.sleep(0.02)
        assert "assigned" in calls
        assert not raw._closed
    finally:
        await raw.stop()
    assert got == [0, 1, 2]


async def test_running_consumer_missing_a_topic_is_refused(
    kafka_bootstrap: str, new_topic: str
) -> None:
    raw = AIOKafkaConsumer(
        new_topic, bootstrap_servers=kafka_bootstrap, group_id=group(), enable_auto_commit=False,
        **FAST_GROUP,
    )  # fmt: skip
    await raw.start()
    try:
        c = KafkaConsumer(raw)
        c.subscribe([KafkaEventSubscription(topic="elsewhere")])
        with pytest.raises(KafkaConfigError, match=r"not subscribed to \['elsewhere'\]"):
            await c.start()
    finally:
        await raw.stop()


async def test_dispatcher_restart_resumes_from_the_commit(
    kafka_bootstrap: str, new_topic: str
) -> None:
    gid = group()
    got: list[int] = []
    dispatcher = EventDispatcher(consumer(kafka_bootstrap, gid))

    @dispatcher.handler(KafkaEventSubscription(topic=new_topic))
    async def on_item(event: Event[Item]) -> None:
        got.append(event.body.n)

    await emit_items(kafka_bootstrap, new_topic, range(3))
    for expected in (3, 6):
        async with dispatcher:
            async with asyncio.timeout(T):
                while len(got) < expected:
                    await asyncio.sleep(0.02)
        await emit_items(kafka_bootstrap, new_topic, range(expected, expected + 3))
    assert got == list(range(6))


async def test_users_topic_consumer_with_pattern_handlers_is_a_clear_error(
    kafka_bootstrap: str, topic: str
) -> None:
    """aiokafka cannot switch an unstarted consumer from topics to a pattern: say so."""
    raw = AIOKafkaConsumer(
        f"{topic}.other",
        bootstrap_servers=kafka_bootstrap,
        group_id=group(),
        enable_auto_commit=False,
    )
    try:
        c = KafkaConsumer(raw)
        c.subscribe([KafkaEventSubscription(topic=f"{topic}.{{part}}")])
        with pytest.raises(KafkaConfigError, match="cannot switch an unstarted consumer"):
            await c.start()
    finally:
        await raw.stop()
