"""A fake laned source for the scheduler tests: per-lane backlogs served in chunks, the
way a Kafka fetch returns a run of one partition's records, with or without pausing.

It counts what it handed out and what was settled, per lane, so the tests measure what
the dispatcher holds from the outside.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any

from dispytch.message import Message
from dispytch.routes import EventSubscription
from dispytch.transport import Capabilities


class LaneSource:
    """Per-lane backlogs yielded round-robin, ``chunk`` messages of a lane at a time.

    With ``pausing``, ``pause(lane)`` takes effect at the next chunk: messages of the chunk
    being yielded still arrive (as records already fetched do).
    """

    def __init__(self, backlog: dict[str, int], *, chunk: int = 4, pausing: bool = False) -> None:
        self.lanes: dict[str, deque[Message]] = {
            lane: deque(
                Message(f'{{"n":{i}}}'.encode(), route=lane, lane=lane, token=(lane, i))
                for i in range(count)
            )
            for lane, count in backlog.items()
        }
        self.chunk = chunk
        self.pausing = pausing
        self.paused: set[Hashable] = set()
        self.pause_calls: list[Hashable] = []
        self.resume_calls: list[Hashable] = []
        self.out: Counter[Hashable] = Counter()  # handed out, not settled
        self.max_out: Counter[Hashable] = Counter()
        self.max_total = 0
        self.settled: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        self._stopped = False

    # -- LanePausing (only used when ``pausing``) -------------------------------------------
    def pause(self, lane: Hashable) -> None:
        assert self.pausing, "a source that cannot pause was asked to"
        self.pause_calls.append(lane)
        self.paused.add(lane)

    def resume(self, lane: Hashable) -> None:
        assert self.pausing, "a source that cannot pause was asked to"
        self.resume_calls.append(lane)
        self.paused.discard(lane)
        self._changed.set()

    # -- reading and settling ---------------------------------------------------------------
    def _hand_out(self, msg: Message) -> Message:
        lane = msg.lane
        self.out[lane] += 1
        self.max_out[lane] = max(self.max_out[lane], self.out[lane])
        self.max_total = max(self.max_total, sum(self.out.values()))
        return msg

    def settle(self, msg: Message, how: str) -> None:
        self.out[msg.lane] -= 1
        self.settled.append((how, msg.token))
        self._changed.set()

    async def messages(self) -> AsyncIterator[Message]:
        order = list(self.lanes)
        turn = 0
        for _ in range(100_000):  # bounded: far more than any test hands out
            if self._stopped:
                return
            lane = None
            for k in range(len(order)):
                candidate = order[(turn + k) % len(order)]
                if self.lanes[candidate] and candidate not in self.paused:
                    lane, turn = candidate, (turn + k + 1) % len(order)
                    break
            if lane is None:
                # Nothing to hand out (drained or paused): wait, as a broker's consumer
                # waits for more, until a lane resumes or stop() ends it.
                self._changed.clear()
                await self._changed.wait()
                continue
            backlog = self.lanes[lane]
            for _ in range(min(self.chunk, len(backlog))):
                if self._stopped:
                    return
                yield self._hand_out(backlog.popleft())

    def stop(self) -> None:
        self._stopped = True
        self._changed.set()


class LaneConsumer:
    """A :class:`~dispytch.Consumer` over a :class:`LaneSource` (pausing or not)."""

    def __init__(self, source: LaneSource) -> None:
        self.source = source
        self.capabilities = Capabilities(ordered_lanes=True, pause_lanes=source.pausing)

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        pass

    async def start(self) -> None:
        pass

    def listen(self) -> AsyncIterator[Message]:
        return self.source.messages()

    async def ack(self, message: Message) -> None:
        self.source.settle(message, "ack")

    async def nack(self, message: Message, *, requeue: bool) -> None:
        self.source.settle(message, "requeue" if requeue else "reject")

    async def stop(self) -> None:
        self.source.stop()

    async def close(self) -> None:
        pass


class PausingLaneConsumer(LaneConsumer):
    """The same, implementing :class:`~dispytch.transport.LanePausing`."""

    def pause(self, lane: Hashable) -> None:
        self.source.pause(lane)

    def resume(self, lane: Hashable) -> None:
        self.source.resume(lane)
