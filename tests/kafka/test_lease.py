"""Keep polling (the Kafka lease extension): a handler slower than ``max_poll_interval_ms``,
or a dispatcher that holds back, must not get the consumer kicked from its group and its
records handed to another member (Tansu, both construction modes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dispytch.dispatcher import EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.event import Event, EventBase
from dispytch.kafka import KafkaConsumer
from dispytch.testing.harness import Mode
from dispytch.transport import LeaseExtension

from .harness import LEASE_SECONDS, KafkaHarness

pytestmark = pytest.mark.broker


class Job(EventBase):
    __event_type__ = "lease.job"
    n: int


@pytest.fixture(params=["url", "client"])
async def harness(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> AsyncIterator[KafkaHarness]:
    mode: Mode = request.param
    h = KafkaHarness(kafka_bootstrap, mode=mode)
    await h.setup()
    try:
        yield h
    finally:
        await h.cleanup()


async def test_a_handler_three_leases_long_is_handled_once_in_the_group(
    harness: KafkaHarness,
) -> None:
    """Consumer A takes a record whose handler runs 3 leases; consumer B of the same group
    runs meanwhile. The record is handled once, by A, and never handed to B; A kept
    polling for its blocked dispatcher (``max_in_flight=1``) throughout."""
    name = harness.unique_name("lease")
    group = harness.unique_name("g")
    await harness.prepare(name, group=group)
    started = asyncio.Event()
    handled: list[tuple[str, int]] = []

    def build(tag: str, seconds: float) -> tuple[EventDispatcher, KafkaConsumer]:
        consumer = harness.consumer(group=group)
        assert isinstance(consumer, KafkaConsumer) and isinstance(consumer, LeaseExtension)
        d = EventDispatcher(consumer, max_in_flight=1, stop_timeout=2 * seconds)

        @d.handler(harness.subscription(name, group=group))
        async def on_job(event: Event[Job]) -> None:
            handled.append((tag, event.body.n))
            started.set()
            await asyncio.sleep(seconds if event.body.n == 0 else 0)

        return d, consumer

    slow = 3 * LEASE_SECONDS
    a, consumer_a = build("a", slow)
    b, _ = build("b", slow)
    async with EventEmitter(harness.producer()) as emitter, a:
        await emitter.emit(Job(n=0), route=harness.route(name))
        await emitter.emit(Job(n=1), route=harness.route(name))
        await asyncio.wait_for(started.wait(), 30)
        async with b:
            # bounded: the slow handler, then the second record, then a lease more
            for _ in range(int((slow + 20) / 0.1)):
                if {n for _, n in handled} == {0, 1}:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(LEASE_SECONDS)  # room for a redelivery to show
    assert sorted(n for _, n in handled) == [0, 1], handled
    assert handled[0] == ("a", 0)
    assert consumer_a.keepalive_polls > 0, "the keeper never polled for the held dispatcher"


async def test_a_held_back_dispatcher_alone_is_not_dropped_from_its_group(
    harness: KafkaHarness,
) -> None:
    """One consumer, ``max_in_flight=1`` and a handler of 2 leases: without polling in
    the dispatcher's stead aiokafka would leave the group after one lease, rejoin once
    ``listen()`` polls again, and the record would come again. It is handled once."""
    name = harness.unique_name("lease")
    group = harness.unique_name("g")
    await harness.prepare(name, group=group)
    consumer = harness.consumer(group=group)
    assert isinstance(consumer, KafkaConsumer)
    d = EventDispatcher(consumer, max_in_flight=1, stop_timeout=10)
    handled: list[int] = []

    @d.handler(harness.subscription(name, group=group))
    async def on_job(event: Event[Job]) -> None:
        handled.append(event.body.n)
        await asyncio.sleep(2 * LEASE_SECONDS)

    async with EventEmitter(harness.producer()) as emitter:
        await emitter.emit(Job(n=0), route=harness.route(name))
        async with d:
            for _ in range(int(60 / 0.1)):  # bounded
                if handled:
                    break
                await asyncio.sleep(0.1)
            # the handler ends; a member that had left would rejoin and get it again
            await asyncio.sleep(4 * LEASE_SECONDS + 1)
    assert handled == [0]
    assert consumer.keepalive_polls > 0
    if harness.mode == "client":  # the user's client is left as it was: nothing paused
        assert consumer.raw is not None and not consumer.raw.paused()
