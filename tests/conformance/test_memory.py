"""The transport conformance suite against the embedded memory transport, in both
construction modes: over a broker the harness made (``"client"``) and from ``memory://``
URLs through the plugin's factories (``"url"``); each with ordered consumers (lanes, the
lane cases) and unordered ones (a topic's messages side by side)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dispytch.memory import MemoryBroker, MemoryConsumer
from dispytch.routes import TopicSubscription
from dispytch.testing import MemoryHarness
from dispytch.testing.conformance import TransportConformance
from dispytch.transport import LanePausing, Message, capabilities_of


class TestMemoryTransport(TransportConformance):
    timeout = 5.0

    @pytest.fixture(
        params=[("client", True), ("url", True), ("client", False), ("url", False)],
        ids=["client-ordered", "url-ordered", "client", "url"],
    )
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[MemoryHarness]:
        mode, ordered = request.param
        h = MemoryHarness(mode=mode, ordered=ordered)
        yield h
        await h.cleanup()


async def _take(consumer: MemoryConsumer, n: int) -> list[Message]:
    out: list[Message] = []
    listen = consumer.listen()
    async with asyncio.timeout(5):
        while len(out) < n:
            out.append(await anext(listen))
    await listen.aclose()
    return out


async def test_memory_lane_pausing_holds_a_lane_in_order_and_gives_it_back() -> None:
    """The memory consumer's LanePausing (the slow-lane case needs it): a paused lane's
    messages are held in order while other lanes go on; resume yields them first; stop
    gives what was held back to the group, never delivered."""
    broker = MemoryBroker("pausing")
    consumer = MemoryConsumer(broker, group="g", ordered=True)
    assert isinstance(consumer, LanePausing)
    assert capabilities_of(consumer).pause_lanes
    consumer.subscribe([TopicSubscription(topic="a"), TopicSubscription(topic="b")])
    await consumer.start()
    consumer.pause("a")
    for i in range(3):
        broker.publish("a", b"a%d" % i, {}, None)
    broker.publish("b", b"b0", {}, None)
    taken = await _take(consumer, 1)
    assert [m.payload for m in taken] == [b"b0"]
    broker.publish("a", b"a3", {}, None)
    broker.publish("b", b"b1", {}, None)
    taken += await _take(consumer, 1)
    assert [m.payload for m in taken] == [b"b0", b"b1"]
    consumer.resume("a")
    resumed = await _take(consumer, 2)
    assert [m.payload for m in resumed] == [b"a0", b"a1"]
    for m in (*taken, *resumed):
        await consumer.ack(m)
    consumer.pause("a")
    await consumer.stop()
    assert broker.pending("g") == 2  # a2 and a3, held while paused, back in the queue
    other = MemoryConsumer(broker, group="g", ordered=True)
    await other.start()
    again = await _take(other, 2)
    assert [(m.payload, m.attempt) for m in again] == [(b"a2", 1), (b"a3", 1)]
