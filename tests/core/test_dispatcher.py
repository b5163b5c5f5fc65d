"""The dispatcher on the memory transport: graceful stop, back-pressure, failures that
never stop the loop, ordered lanes and the acknowledgement policies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from dispytch import (
    Acknowledger,
    AckPolicy,
    Event,
    EventBase,
    EventDispatcher,
    NotStartedError,
    TopicSubscription,
)
from dispytch.memory import MemoryConsumer
from dispytch.transport import HEADER_CONTENT_TYPE, HEADER_EVENT_TYPE, Message

if TYPE_CHECKING:
    from tests.core.conftest import Kit


class Job(EventBase):
    __topic__ = "jobs"
    __event_type__ = "job"
    n: int


class Lane(EventBase):
    __topic__ = "lane.{name}"
    name: str
    n: int


def crash() -> list[asyncio.Task[object]]:
    """Kill every other task, as a process crash would (no graceful stop).

    In these tests the only other tasks are the dispatcher's (its reader and the
    handlings in flight).
    """
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    return tasks


# -- graceful stop -----------------------------------------------------------------------


async def test_stop_lets_in_flight_work_finish_within_the_deadline(kit: Kit) -> None:
    d = kit.dispatcher(stop_timeout=5.0)
    started = asyncio.Event()
    release = asyncio.Event()
    done: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        started.set()
        await release.wait()
        done.append(event.body.n)

    await d.start()
    await kit.emitter.emit(Job(n=1))
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(d.stop())
    await kit.until(lambda: not d.running, "stop to begin")
    # No more fetching: a message published now stays with the broker.
    await kit.emitter.emit(Job(n=2))
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert done == [1]
    assert d.stats["handled"] == 1
    assert kit.unacked() == 0
    assert kit.queued() == 1  # job 2, for the next consumer
    assert kit.broker.rejected == []


async def test_stop_past_deadline_cancels_and_requeues_for_redelivery(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher()
    started = asyncio.Event()
    cancelled: list[int] = []

    @d.handler(topic="jobs")
    async def stuck(event: Event[Job]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never finishes on its own
        except asyncio.CancelledError:
            cancelled.append(event.attempt)
            raise

    await d.start()
    await kit.emitter.emit(Job(n=1))
    await asyncio.wait_for(started.wait(), 5)
    with caplog.at_level(logging.WARNING, logger="dispytch.dispatcher"):
        await asyncio.wait_for(d.stop(timeout=0.05), 5)
    assert cancelled == [1]
    assert "still in flight" in caplog.text
    assert kit.broker.rejected == []

    # Redelivered to the next consumer of the group, as a second attempt.
    d2 = kit.dispatcher()
    attempts: list[int] = []

    @d2.handler(topic="jobs")
    async def again(event: Event[Job]) -> None:
        attempts.append(event.attempt)

    async with d2:
        await kit.until(lambda: attempts, "the redelivery")
    assert attempts == [2]


async def test_stop_without_start_returns(kit: Kit) -> None:
    d = kit.dispatcher()
    await asyncio.wait_for(d.stop(), 1.0)


async def test_wait_before_start_says_what_to_do(kit: Kit) -> None:
    d = kit.dispatcher()
    with pytest.raises(NotStartedError, match=r"never started; call start\(\) first"):
        await d.wait()


def test_max_in_flight_must_be_positive(kit: Kit) -> None:
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        EventDispatcher(kit.consumer(), max_in_flight=0)


# -- back-pressure -----------------------------------------------------------------------


async def _saturate(
    kit: Kit, limit: int, total: int
) -> tuple[EventDispatcher, asyncio.Event, list[int]]:
    d = kit.dispatcher(max_in_flight=limit)
    release = asyncio.Event()
    running = [0, 0]  # now, peak

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        running[0] += 1
        running[1] = max(running[1], running[0])
        try:
            await release.wait()
        finally:
            running[0] -= 1

    for i in range(total):
        await kit.emitter.emit(Job(n=i))
    await d.start()
    await kit.until(lambda: running[0] == limit, f"{limit} handlers to run")
    for _ in range(50):  # give the reader every chance to over-read
        await asyncio.sleep(0)
    return d, release, running


@pytest.mark.parametrize("limit", [1, 3])
async def test_never_more_than_max_in_flight_handlers(kit: Kit, limit: int) -> None:
    total = 12
    d, release, running = await _saturate(kit, limit, total)
    assert running[0] == limit
    release.set()
    await kit.until(lambda: d.stats["handled"] == total, "every job")
    assert running[1] == limit
    assert kit.queued() == 0 and kit.unacked() == 0


@pytest.mark.parametrize("limit", [1, 3])
async def test_consumer_is_not_drained_beyond_max_in_flight(kit: Kit, limit: int) -> None:
    d, release, _ = await _saturate(kit, limit, 10)
    try:
        assert kit.unacked() == limit  # delivered = in flight, nothing held back
        assert kit.queued() == 10 - limit
    finally:
        release.set()


# -- failures never stop the loop --------------------------------------------------------


async def test_invalid_payloads_are_counted_logged_and_survived(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher()
    got: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        got.append(event.body.n)

    hdrs = {HEADER_EVENT_TYPE: "job", HEADER_CONTENT_TYPE: "application/json"}
    with caplog.at_level(logging.ERROR, logger="dispytch"):
        async with d:
            kit.broker.publish("jobs", b"{not json", dict(hdrs), None)
            kit.broker.publish("jobs", b'{"n": "seven"}', dict(hdrs), None)
            await kit.emitter.emit(Job(n=3))
            await kit.until(lambda: got and d.stats["invalid_payload"] == 2, "all three")
    assert got == [3]
    assert d.stats["invalid_payload"] == 2
    assert d.stats["rejected"] == 2
    assert [m.payload for m in kit.broker.rejected] == [b"{not json", b'{"n": "seven"}']
    assert (
        "Payload on route 'jobs' (9 bytes) is not a valid Job: <root>: Invalid JSON" in caplog.text
    )
    assert "is not a valid Job: n: Input should be a valid integer" in caplog.text


async def test_unknown_route_is_logged_counted_and_survived(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = kit.consumer()
    # The consumer also listens to a topic no handler takes (a raw client subscribed
    # by the user, say).
    consumer.subscribe([TopicSubscription(topic="strays")])
    d = EventDispatcher(consumer)
    kit.dispatchers.append(d)
    got: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        got.append(event.body.n)

    with caplog.at_level(logging.WARNING, logger="dispytch.dispatcher"):
        async with d:
            kit.broker.publish("strays", b"{}", {}, None)
            await kit.emitter.emit(Job(n=1))
            await kit.until(lambda: got and d.stats["unknown_route"] == 1, "both")
    assert got == [1]
    warnings = [r for r in caplog.records if "No handler for route 'strays'" in r.getMessage()]
    assert warnings and warnings[0].levelno == logging.WARNING
    assert [m.route for m in kit.broker.rejected] == ["strays"]


async def test_handler_exception_is_never_acknowledged_as_success(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher()
    calls: list[int] = []

    @d.handler(topic="jobs")
    async def flaky(event: Event[Job]) -> None:
        calls.append(event.body.n)
        if event.body.n == 1:
            raise RuntimeError("database down")

    with caplog.at_level(logging.ERROR, logger="dispytch.dispatcher"):
        async with d:
            await kit.emitter.emit(Job(n=1))
            await kit.emitter.emit(Job(n=2))
            await kit.until(lambda: d.stats["handled"] + d.stats["rejected"] == 2, "both")
    assert sorted(calls) == [1, 2]
    assert d.stats == {**d.stats, "handled": 1, "rejected": 1, "failed_handlers": 1}
    assert len(kit.broker.rejected) == 1
    assert kit.broker.rejected[0].payload == b'{"n":1}'
    err = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert err and "failed for good on route 'jobs' (7 bytes" in err[0].getMessage()
    assert "RuntimeError: database down" in err[0].getMessage()


async def test_one_failing_handler_rejects_the_message_for_all(kit: Kit) -> None:
    d = kit.dispatcher()
    ok: list[int] = []

    @d.handler(topic="jobs")
    async def good(event: Event[Job]) -> None:
        ok.append(event.body.n)

    @d.handler(topic="jobs")
    async def bad(event: Event[Job]) -> None:
        raise RuntimeError("no")

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: d.stats["rejected"] == 1, "the failure")
    assert ok == [1]
    assert len(kit.broker.rejected) == 1


# -- ordered lanes -----------------------------------------------------------------------


async def test_ordered_consumer_keeps_order_per_topic(kit: Kit) -> None:
    d = kit.dispatcher(ordered=True, max_in_flight=16)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    active: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    both_active = asyncio.Event()
    n = 20

    @d.handler(topic="lane.{name}")
    async def work(event: Event[Lane], name: str) -> None:
        active[name] += 1
        peak[name] = max(peak[name], active[name])
        if all(active.values()):
            both_active.set()
        # Earlier messages take longer: without lanes they would finish out of order.
        for _ in range(n - event.body.n):
            await asyncio.sleep(0)
        seen[name].append(event.body.n)
        active[name] -= 1

    for i in range(n):
        await kit.emitter.emit(Lane(name="a", n=i))
        await kit.emitter.emit(Lane(name="b", n=i))
    async with d:
        await kit.until(lambda: d.stats["handled"] == 2 * n, "every message")
    assert seen == {"a": list(range(n)), "b": list(range(n))}
    assert peak == {"a": 1, "b": 1}
    assert both_active.is_set()  # the two lanes did run side by side


async def test_unordered_consumer_runs_one_topic_concurrently(kit: Kit) -> None:
    d = kit.dispatcher(max_in_flight=16)
    gate = asyncio.Event()
    active = [0]

    @d.handler(topic="lane.{name}")
    async def work(event: Event[Lane]) -> None:
        active[0] += 1
        if active[0] == 3:
            gate.set()
        await asyncio.wait_for(gate.wait(), 5)

    async with d:
        for i in range(3):
            await kit.emitter.emit(Lane(name="a", n=i))
        await kit.until(lambda: d.stats["handled"] == 3, "three concurrent handlings")


# -- acknowledgement policies -------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "redelivered"), [(AckPolicy.AFTER, True), (AckPolicy.BEFORE, False)]
)
async def test_ack_policy_under_a_crash(kit: Kit, policy: AckPolicy, redelivered: bool) -> None:
    d = kit.dispatcher(ack_policy=policy)
    started = asyncio.Event()

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        started.set()
        await asyncio.Event().wait()

    await d.start()
    await kit.emitter.emit(Job(n=1))
    await asyncio.wait_for(started.wait(), 5)
    # Crash: the tasks die and the connection drops (the broker takes back what the
    # consumer had not acknowledged).
    await asyncio.gather(*crash(), return_exceptions=True)
    await d.consumer.close()
    assert kit.queued() == (1 if redelivered else 0)
    assert kit.unacked() == 0

    d2 = kit.dispatcher()
    attempts: list[int] = []

    @d2.handler(topic="jobs")
    async def again(event: Event[Job]) -> None:
        attempts.append(event.attempt)

    async with d2:
        await kit.emitter.emit(Job(n=2))
        await kit.until(lambda: d2.stats["handled"] == (2 if redelivered else 1), "handling")
    assert attempts == ([2, 1] if redelivered else [1])


async def test_ack_before_acknowledges_failures_too(kit: Kit) -> None:
    d = kit.dispatcher(ack_policy="before")

    @d.handler(topic="jobs")
    async def bad(event: Event[Job]) -> None:
        raise RuntimeError("lost, as at-most-once allows")

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: d.stats["rejected"] == 1, "the failure")
    assert kit.broker.rejected == []
    assert kit.unacked() == 0 and kit.queued() == 0


async def test_manual_ack_with_an_acknowledger(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    d = kit.dispatcher(ack_policy=AckPolicy.MANUAL)
    seen: list[tuple[int, int]] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job], ack: Acknowledger) -> None:
        seen.append((event.body.n, event.attempt))
        if event.body.n == 1:
            await ack.ack()
        elif event.body.n == 2 and event.attempt == 1:
            await ack.nack(requeue=True)  # try again
        elif event.body.n == 2:
            await ack.ack()
        elif event.body.n == 3:
            await ack.nack(requeue=False)
        # n == 4: left unsettled

    with caplog.at_level(logging.WARNING, logger="dispytch.dispatcher"):
        async with d:
            for i in (1, 2, 3, 4):
                await kit.emitter.emit(Job(n=i))
            await kit.until(lambda: len(seen) == 5, "five handlings")
            assert kit.unacked() == 1  # job 4: the broker still holds it
    assert sorted(seen) == [(1, 1), (2, 1), (2, 2), (3, 1), (4, 1)]
    assert [m.payload for m in kit.broker.rejected] == [b'{"n":3}']
    assert "neither acked nor nacked" in caplog.text
    # Unsettled at close: handed back to the broker for another delivery.
    assert kit.queued() == 1


async def test_a_message_held_on_purpose_is_held_without_the_warning(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher(ack_policy=AckPolicy.MANUAL)
    later: list[Acknowledger] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job], ack: Acknowledger) -> None:
        ack.hold()  # settled later, by code of the handler's
        later.append(ack)

    with caplog.at_level(logging.WARNING, logger="dispytch.dispatcher"):
        async with d:
            await kit.emitter.emit(Job(n=1))
            await kit.until(lambda: d.stats["held_unsettled"] == 1, "the held message")
            assert kit.unacked() == 1
            await later[0].ack()
            await kit.until(lambda: kit.unacked() == 0, "the later ack")
    assert "neither acked nor nacked" not in caplog.text
    assert kit.queued() == 0


async def test_dispatcher_from_url_owns_its_consumer(kit: Kit) -> None:
    d = EventDispatcher.from_url(f"memory://{kit.broker.name}?group=g2")
    assert d.owns_consumer
    assert isinstance(d.consumer, MemoryConsumer)
    got: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        got.append(event.body.n)

    from dispytch import EventEmitter
    from dispytch.memory import MemoryBroker, MemoryProducer

    assert MemoryBroker.named(kit.broker.name) is not kit.broker  # a registry broker
    async with d, EventEmitter(MemoryProducer(MemoryBroker.named(kit.broker.name))) as em:
        await em.emit(Job(n=4))
        await kit.until(lambda: got, "the handler")
    assert got == [4]


# -- lifecycle corners -------------------------------------------------------------------


class RecordingConsumer(MemoryConsumer):
    """A memory consumer that records every settlement, and can fail its first listen."""

    def __init__(self, *a: object, fail_listens: int = 0, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.settled: list[tuple[str, bytes]] = []
        self.fail_listens = fail_listens

    async def ack(self, message: Message) -> None:
        self.settled.append(("ack", message.payload))
        await super().ack(message)

    async def nack(self, message: Message, *, requeue: bool) -> None:
        self.settled.append(("requeue" if requeue else "reject", message.payload))
        await super().nack(message, requeue=requeue)

    async def listen(self) -> AsyncIterator[Message]:
        if self.fail_listens:
            self.fail_listens -= 1
            raise ConnectionError("broker connection reset")
        async for msg in super().listen():
            yield msg


async def test_manual_ack_then_cancelled_is_not_settled_twice(kit: Kit) -> None:
    consumer = RecordingConsumer(kit.broker, group="g")
    d = EventDispatcher(consumer, ack_policy=AckPolicy.MANUAL)
    kit.dispatchers.append(d)
    acked = asyncio.Event()

    @d.handler(topic="jobs")
    async def work(ack: Acknowledger) -> None:
        await ack.ack()
        acked.set()
        await asyncio.Event().wait()  # then hangs past the stop deadline

    await d.start()
    await kit.emitter.emit(Job(n=1))
    await asyncio.wait_for(acked.wait(), 5)
    await asyncio.wait_for(d.stop(timeout=0.05), 5)
    # Once acknowledged, a message must not be nacked as well (RabbitMQ closes the
    # channel on a second settlement of one delivery tag).
    assert consumer.settled == [("ack", b'{"n":1}')]


async def test_waiting_lane_messages_are_handed_back_on_stop(kit: Kit) -> None:
    d = kit.dispatcher(ordered=True)
    started = asyncio.Event()

    @d.handler(topic="jobs")
    async def stuck(event: Event[Job]) -> None:
        started.set()
        await asyncio.Event().wait()

    for i in range(3):
        await kit.emitter.emit(Job(n=i))
    await d.start()
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(d.stop(timeout=0.05), 5)
    assert kit.unacked() == 0
    assert kit.queued() == 3
    assert kit.broker.rejected == []


async def test_listen_failure_is_logged_and_retried(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = RecordingConsumer(kit.broker, group="g", fail_listens=1)
    d = EventDispatcher(consumer)
    kit.dispatchers.append(d)
    got: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        got.append(event.body.n)

    with caplog.at_level(logging.ERROR, logger="dispytch.dispatcher"):
        async with d:
            await kit.emitter.emit(Job(n=1))
            await kit.until(lambda: got, "the message after the reconnect")
    assert got == [1]
    assert "failed while fetching; retrying in" in caplog.text


async def test_dispatcher_can_start_again_after_stop(kit: Kit) -> None:
    d = kit.dispatcher()
    got: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        got.append(event.body.n)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: got == [1], "the first run")
    await kit.emitter.emit(Job(n=2))
    async with d:
        await kit.until(lambda: got == [1, 2], "the second run")
    assert d.stats["handled"] == 2


async def test_wait_returns_when_stopped_elsewhere(kit: Kit) -> None:
    d = kit.dispatcher()

    @d.handler(topic="jobs")
    async def work() -> None: ...

    await d.start()
    waiter = asyncio.create_task(d.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    await d.stop()
    await asyncio.wait_for(waiter, 5)
    assert not d.running
