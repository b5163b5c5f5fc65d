"""``AckPolicy.MANUAL`` on the memory transport: a message its handler did not settle is
held and counted until something settles it; reading pauses at ``max_unsettled``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest
from dispytch import Acknowledger, AckPolicy, Event, EventBase, EventDispatcher

from tests.core.test_dispatcher import RecordingConsumer

if TYPE_CHECKING:
    from tests.core.conftest import Kit


class Job(EventBase):
    __topic__ = "jobs"
    n: int


TOTAL = 1_000
MAX_IN_FLIGHT = 8


async def _quiet(kit: Kit, d: EventDispatcher, rounds: int = 50) -> None:
    """Let the loop run until the dispatcher stops taking messages (bounded)."""
    last = -1
    for _ in range(rounds):
        now = kit.queued()
        if now == last and d.in_flight == 0:
            return
        last = now
        await asyncio.sleep(0.01)


async def test_unsettled_messages_are_held_bounded_and_resume_when_settled(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher(ack_policy=AckPolicy.MANUAL, max_in_flight=MAX_IN_FLIGHT)
    bound = d.max_unsettled
    assert bound == 4 * MAX_IN_FLIGHT
    kept: list[Acknowledger] = []
    seen: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job], ack: Acknowledger) -> None:
        seen.append(event.body.n)
        kept.append(ack)  # settled later, outside the handler (or never)

    for i in range(TOTAL):
        await kit.emitter.emit(Job(n=i))
    with caplog.at_level(logging.WARNING, logger="dispytch.dispatcher"):
        async with d:
            await kit.until(lambda: d.unsettled >= bound, "the unsettled bound")
            await _quiet(kit, d)
            # Reading paused at the bound: the rest waits at the broker.
            held = kit.unacked()
            assert bound <= held < bound + MAX_IN_FLIGHT
            assert d.unsettled == held == len(kept)
            assert kit.queued() == TOTAL - held
            # Settling some (long after their handlers returned) frees their count and
            # lets reading go on.
            for ack in kept[:10]:
                await ack.ack()
            await kit.until(lambda: len(seen) >= held + 10, "reading to resume")
            await _quiet(kit, d)
            assert kit.unacked() < bound + MAX_IN_FLIGHT
            # Settle everything as it comes: all 1,000 get through, memory stays bounded.
            settled = 10
            for _ in range(10_000):
                if settled == TOTAL:
                    break
                if settled < len(kept):
                    await kept[settled].ack()
                    settled += 1
                    assert kit.unacked() < bound + MAX_IN_FLIGHT
                else:
                    await asyncio.sleep(0.001)
            assert settled == TOTAL
            await kit.until(lambda: kit.unacked() == 0, "every message settled")
    assert sorted(seen) == list(range(TOTAL))
    assert kit.queued() == 0 and kit.broker.rejected == []
    assert d.stats["held_unsettled"] == TOTAL
    warnings = [r for r in caplog.records if "held unsettled until your code" in r.getMessage()]
    assert len(warnings) == 1  # once per dispatcher, not per message
    text = warnings[0].getMessage()
    assert "Kafka cannot commit past it" in text and "prefetch window" in text
    assert "Redis Streams keeps it pending" in text


async def test_unsettled_messages_are_handed_back_on_stop_once(kit: Kit) -> None:
    consumer = RecordingConsumer(kit.broker, group="g")
    d = EventDispatcher(consumer, ack_policy=AckPolicy.MANUAL, max_unsettled=3, max_in_flight=1)
    kit.dispatchers.append(d)
    kept: list[Acknowledger] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job], ack: Acknowledger) -> None:
        kept.append(ack)

    for i in range(5):
        await kit.emitter.emit(Job(n=i))
    await d.start()
    await kit.until(lambda: d.unsettled == 3, "three held")
    await d.stop()
    assert sorted(p for how, p in consumer.settled) == sorted(
        f'{{"n":{i}}}'.encode() for i in range(3)
    )
    assert {how for how, _ in consumer.settled} == {"requeue"}
    # An acknowledger that outlives the stop does not settle its message a second time.
    await kept[0].ack()
    await kept[1].nack(requeue=False)
    assert len(consumer.settled) == 3
    assert kit.queued() == 5 and kit.unacked() == 0


async def test_a_task_started_by_the_handler_settles_later(kit: Kit) -> None:
    consumer = RecordingConsumer(kit.broker, group="g")
    d = EventDispatcher(consumer, ack_policy=AckPolicy.MANUAL)
    kit.dispatchers.append(d)
    release = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def later(ack: Acknowledger) -> None:
        await release.wait()
        await ack.ack()

    @d.handler(topic="jobs")
    async def work(event: Event[Job], ack: Acknowledger) -> None:
        task = asyncio.get_running_loop().create_task(later(ack))
        tasks.add(task)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: d.unsettled == 1, "the message held")
        assert consumer.settled == []
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert d.unsettled == 0
    assert consumer.settled == [("ack", b'{"n":1}')]
