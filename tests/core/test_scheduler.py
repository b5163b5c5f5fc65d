"""The lane scheduler alone (no consumer, no dispatcher) and the dispatcher's fair lanes
over fake laned consumers that can pause a lane and that cannot.

The slow lane has a backlog of 10 x max_in_flight; its handler sleeps, the fast lane's
does not. Everything is asserted by order and by counts, never by elapsed time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest
from dispytch import Event, EventDispatcher
from dispytch.dispatch import LaneScheduler, default_lane_cap
from dispytch.message import Message
from pydantic import BaseModel

from tests.core.lanes import LaneConsumer, LaneSource, PausingLaneConsumer

MAX_IN_FLIGHT = 8
CAP = default_lane_cap(MAX_IN_FLIGHT)  # 2
SLOW_BACKLOG = 10 * MAX_IN_FLIGHT
FAST = 20
SLOW_SECONDS = 0.01


class Job(BaseModel):
    n: int


def test_default_lane_cap_is_a_quarter_at_least_one() -> None:
    assert default_lane_cap(64) == 16
    assert default_lane_cap(8) == 2
    assert default_lane_cap(3) == 1
    assert default_lane_cap(1) == 1
    with pytest.raises(ValueError, match="max_in_flight_per_lane"):
        LaneScheduler(_noop, max_in_flight=4, lane_cap=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        LaneScheduler(_noop, max_in_flight=0)


async def _noop(msg: Message) -> None:
    return None


class Recorder:
    """The handling side: records completions and how many run at once."""

    def __init__(self, source: LaneSource) -> None:
        self.source = source
        self.done: list[tuple[Hashable, int]] = []
        self.running = 0
        self.max_running = 0

    def n(self, msg: Message) -> int:
        return int(msg.payload.decode().split(":")[1].rstrip("}"))

    async def handle(self, lane: Hashable, n: int) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if lane == "slow":
                await asyncio.sleep(SLOW_SECONDS)
            else:
                await asyncio.sleep(0)
            self.done.append((lane, n))
        finally:
            self.running -= 1

    async def process(self, msg: Message) -> None:
        await self.handle(msg.lane, self.n(msg))
        self.source.settle(msg, "ack")

    def index(self, lane: str, k: int) -> int:
        """Position in the completion order of ``lane``'s ``k``-th completion (1-based)."""
        seen = 0
        for i, (ln, _) in enumerate(self.done):
            if ln == lane:
                seen += 1
                if seen == k:
                    return i
        raise AssertionError(f"{lane} completed only {seen} messages")

    def lane_order(self, lane: str) -> list[int]:
        return [n for ln, n in self.done if ln == lane]


async def _drive(sched: LaneScheduler, source: LaneSource, count: int) -> None:
    """The dispatcher's reader in miniature: a slot, a message, submit, maybe wait."""
    messages = source.messages()
    for _ in range(count):
        await sched.slot()
        sched.take()
        msg = await anext(messages)
        wait = sched.submit(msg)
        if wait is not None:
            await wait
    await messages.aclose()


def _assert_fair(rec: Recorder, source: LaneSource, *, slow_limit: int) -> None:
    assert rec.lane_order("slow") == list(range(SLOW_BACKLOG))  # order within each lane
    assert rec.lane_order("fast") == list(range(FAST))
    assert rec.max_running <= MAX_IN_FLIGHT
    assert source.max_total <= MAX_IN_FLIGHT  # held: running + queued, never more
    assert source.max_out["slow"] <= slow_limit  # the slow lane's share, never more
    assert source.max_out["slow"] >= CAP  # and it did fill it


@pytest.mark.parametrize("pausing", [True, False], ids=["pausing", "not-pausing"])
async def test_scheduler_a_slow_backlog_does_not_take_every_slot(pausing: bool) -> None:
    source = LaneSource({"slow": SLOW_BACKLOG, "fast": FAST}, pausing=pausing)
    rec = Recorder(source)
    sched = LaneScheduler(
        rec.process,
        max_in_flight=MAX_IN_FLIGHT,
        lane_cap=CAP,
        pauser=source if pausing else None,
    )
    async with asyncio.timeout(30):
        await _drive(sched, source, SLOW_BACKLOG + FAST)
        assert await sched.drain(30)
    _assert_fair(rec, source, slow_limit=2 * CAP if pausing else CAP)
    last_fast = rec.index("fast", FAST)
    if pausing:
        # The fast lane finishes in about its own time: before the slow lane's 2*cap-th.
        assert last_fast < rec.index("slow", 2 * CAP)
        assert source.pause_calls.count("slow") >= 1
        assert sched.paused == frozenset()  # every pause was resumed once drained
        assert source.resume_calls.count("slow") == source.pause_calls.count("slow")
    else:
        # Without pausing the reader waits for the slow lane, yet the fast lane is not
        # left behind the backlog: it is done before half of it.
        assert last_fast < rec.index("slow", SLOW_BACKLOG // 2)
        assert source.pause_calls == []
    assert sched.free == MAX_IN_FLIGHT and sched.busy == 0
    assert sched.held("slow") == 0 and sched.held("fast") == 0


async def test_scheduler_messages_without_lane_share_the_slots() -> None:
    running = 0
    peak = 0
    done: list[int] = []
    gate = asyncio.Event()

    async def process(msg: Message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        done.append(int(msg.route))

    sched = LaneScheduler(process, max_in_flight=4)
    for i in range(4):
        await sched.slot()
        sched.take()
        assert sched.submit(Message(b"", route=str(i))) is None
    assert sched.free == 0
    slot = asyncio.ensure_future(sched.slot())
    for _ in range(100):  # workers start one another as messages wait
        if peak == 4:
            break
        await asyncio.sleep(0)
    assert peak == 4 and not slot.done()  # all four run at once; a fifth must wait
    gate.set()
    await asyncio.wait_for(slot, 5)
    assert await sched.drain(5)
    assert sorted(done) == [0, 1, 2, 3] and sched.free == 4


async def test_scheduler_drain_cancels_what_outlives_the_deadline() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def process(msg: Message) -> None:
        started.append(int(msg.route))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(int(msg.route))
            raise

    sched = LaneScheduler(process, max_in_flight=8, lane_cap=8)
    for i in range(3):
        sched.take()
        sched.submit(Message(b"", route=str(i), lane="one"))
    await asyncio.sleep(0)
    assert await sched.drain(0.01) is False
    assert started == [0] and cancelled == [0]  # what waited behind it never started
    assert sched.tasks == frozenset()


async def test_scheduler_close_wakes_a_waiting_reader() -> None:
    gate = asyncio.Event()

    async def process(msg: Message) -> None:
        await gate.wait()

    sched = LaneScheduler(process, max_in_flight=1)
    sched.take()
    sched.submit(Message(b"", route="r"))
    waiting = asyncio.ensure_future(sched.slot())
    await asyncio.sleep(0)
    assert not waiting.done()
    sched.close()
    await asyncio.wait_for(waiting, 5)  # returns without a slot: the reader then stops
    gate.set()
    assert await sched.drain(5)


# -- the dispatcher over laned consumers ---------------------------------------------------


def _dispatcher(source: LaneSource, rec: Recorder) -> EventDispatcher:
    consumer = PausingLaneConsumer(source) if source.pausing else LaneConsumer(source)
    d = EventDispatcher(consumer, max_in_flight=MAX_IN_FLIGHT, stop_timeout=5.0)
    assert d.max_in_flight_per_lane == CAP

    @d.handler(topic="{lane}")
    async def work(event: Event[Job]) -> None:
        await rec.handle(event.route, event.body.n)

    return d


@pytest.mark.parametrize("pausing", [True, False], ids=["pausing", "not-pausing"])
async def test_dispatcher_fair_lanes(pausing: bool) -> None:
    source = LaneSource({"slow": SLOW_BACKLOG, "fast": FAST}, pausing=pausing)
    rec = Recorder(source)
    d = _dispatcher(source, rec)
    async with asyncio.timeout(30):
        async with d:
            while len(rec.done) < SLOW_BACKLOG + FAST:
                await asyncio.sleep(0.005)
    _assert_fair(rec, source, slow_limit=2 * CAP if pausing else CAP)
    if pausing:
        assert rec.index("fast", FAST) < rec.index("slow", 2 * CAP)
    else:
        assert rec.index("fast", FAST) < rec.index("slow", SLOW_BACKLOG // 2)
    assert d.stats["handled"] == SLOW_BACKLOG + FAST
    assert [how for how, _ in source.settled] == ["ack"] * (SLOW_BACKLOG + FAST)


@pytest.mark.parametrize("pausing", [True, False], ids=["pausing", "not-pausing"])
async def test_dispatcher_drains_on_stop_and_resumes_paused_lanes(pausing: bool) -> None:
    source = LaneSource({"slow": SLOW_BACKLOG, "fast": FAST}, pausing=pausing)
    rec = Recorder(source)
    d = _dispatcher(source, rec)
    await d.start()
    async with asyncio.timeout(30):
        while len(rec.lane_order("slow")) < 3:
            await asyncio.sleep(0.005)
        if pausing:
            assert "slow" in source.pause_calls
        await d.stop()
    assert source.paused == set()  # nothing is left paused after a stop
    assert len(source.resume_calls) == len(source.pause_calls)
    handed_out = SLOW_BACKLOG + FAST - sum(len(b) for b in source.lanes.values())
    acked = [t for how, t in source.settled if how == "ack"]
    requeued = [t for how, t in source.settled if how == "requeue"]
    # Whatever was read was either handled (and acknowledged) or handed back, once.
    assert len(acked) + len(requeued) == handed_out == len(set(acked) | set(requeued))
    assert len(acked) == len(rec.done)  # nothing started was cut off: stop drained it
    assert len(rec.done) == d.stats["handled"]
    assert sum(source.out.values()) == 0
    assert not d.running


class ReadAheadConsumer(LaneConsumer):
    """Records the read-ahead the dispatcher asks for, and when."""

    def __init__(self, source: LaneSource) -> None:
        super().__init__(source)
        self.events: list[str] = []

    def configure(self, *, max_in_flight: int) -> None:
        self.events.append(f"configure {max_in_flight}")

    async def start(self) -> None:
        self.events.append("start")


async def test_dispatcher_sizes_the_consumers_read_ahead_before_start() -> None:
    consumer = ReadAheadConsumer(LaneSource({"a": 0}))
    d = EventDispatcher(consumer, max_in_flight=12, stop_timeout=1)

    @d.handler(topic="a")
    async def work(event: Event[Job]) -> None: ...

    async with d:
        pass
    assert consumer.events == ["configure 12", "start"]


async def test_under_manual_the_read_ahead_covers_the_held_messages() -> None:
    # A broker window (RabbitMQ's prefetch) sized to max_in_flight alone would stop
    # deliveries before max_unsettled messages are held, and settling them in a batch
    # at the bound would never happen.
    consumer = ReadAheadConsumer(LaneSource({"a": 0}))
    d = EventDispatcher(
        consumer, max_in_flight=4, max_unsettled=10, ack_policy="manual", stop_timeout=1
    )

    @d.handler(topic="a")
    async def work(event: Event[Job]) -> None: ...

    assert d.read_ahead == 13
    async with d:
        pass
    assert consumer.events == ["configure 13", "start"]
