"""The lane scheduler: slots, lanes, workers, the per-lane cap, drain.

Pure asyncio; it knows messages only by their :attr:`~dispytch.Message.lane` and calls
``process(message)`` for each (the dispatcher's handling, which never raises but for a
stop's cancellation). The dispatcher's reader drives it::

    await scheduler.slot()          # a free slot first, then read: nothing leaves the
    msg = await anext(messages)     # broker that could not be started at once
    scheduler.take()
    wait = scheduler.submit(msg)    # queue it on its lane, start a worker if none runs
    if wait is not None:
        await wait                  # this lane holds too much: see below

Bounds:

- ``max_in_flight`` messages at most between reading and the end of their handling
  (running or queued on their lane): a slot is taken before each read and given back
  when the handling ends.
- ``lane_cap`` messages of one lane at most while the source cannot pause it. When a
  lane reaches its cap, a ``pauser`` (the consumer, if it implements
  :class:`~dispytch.transport.LanePausing`) is asked to pause the lane and reading goes
  on for the other lanes; what still arrives for the paused lane is queued, and only a
  lane holding twice its cap makes the reader wait. The lane is resumed once it has
  drained to half its cap. Without a pauser the reader waits, after a read that brought
  a lane to its cap, until that lane is below its cap again. Either way one slow lane with
  a backlog holds at most its share of ``max_in_flight`` and the others keep theirs.

Workers are tasks that handle messages from a deque until it is empty, then end.
Messages without a lane share one deque and as many workers as it takes to keep every
free slot busy: a new worker starts only when a message waits and no worker is free to
take it. A lane has its own deque and at most one worker, so its messages are handled in
order. While handlers keep up, a burst of messages costs one task in all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from dispytch.message import Message
from dispytch.transport import LanePausing

log = logging.getLogger("dispytch.dispatcher")


def default_lane_cap(max_in_flight: int) -> int:
    """The per-lane cap when none is given: a quarter of ``max_in_flight`` (at least 1)."""
    return max(1, max_in_flight // 4)


class LaneScheduler:
    """Runs ``process`` over submitted messages: shared workers, one worker per lane.

    Args:
        process: Handles one message (awaited by a worker).
        max_in_flight: Slots: messages held at once, running or queued.
        lane_cap: Messages of one lane held at once before the lane is paused (or the
            reader waits for it).
        pauser: Pauses and resumes a lane's source, if it can.

    Attributes:
        free: Slots free now (the reader takes one before each read).
    """

    __slots__ = (
        "_abandoning",
        "_closed",
        "_free_workers",
        "_held",
        "_lanes",
        "_loop",
        "_paused",
        "_process",
        "_ready",
        "_tasks",
        "_waiter",
        "free",
        "lane_cap",
        "max_in_flight",
        "pauser",
    )

    def __init__(
        self,
        process: Callable[[Message], Awaitable[None]],
        *,
        max_in_flight: int,
        lane_cap: int | None = None,
        pauser: LanePausing | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1.")
        cap = default_lane_cap(max_in_flight) if lane_cap is None else lane_cap
        if cap < 1:
            raise ValueError("max_in_flight_per_lane must be at least 1.")
        self._process = process
        self.max_in_flight = max_in_flight
        self.lane_cap = cap
        self.pauser = pauser
        self.free = max_in_flight
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._abandoning = False
        self._ready: deque[Message] = deque()
        self._free_workers = 0
        self._lanes: dict[Hashable, deque[Message]] = {}
        self._held: dict[Hashable, int] = {}
        self._paused: set[Hashable] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what the reader waits for ---------------------------------------------------------
    async def park(self) -> None:
        """Wait until something the reader may be waiting for changed (a slot freed, a
        lane drained, :meth:`wake`). The caller re-checks its own condition."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def wake(self) -> None:
        """Wake the reader if it is parked (it re-checks what it waits for)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def slot(self) -> None:
        """Return once a slot is free, or the scheduler is closed."""
        while self.free <= 0 and not self._closed:
            await self.park()

    def take(self) -> None:
        """Take a slot (after :meth:`slot`)."""
        self.free -= 1

    def release(self) -> None:
        """Give a slot back (the handling ended, or a read taken a slot for failed)."""
        self.free += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Stop admitting: every wait of the reader returns at once from now on."""
        self._closed = True
        self.wake()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lanes -----------------------------------------------------------------------------
    def held(self, lane: Hashable) -> int:
        """Messages of ``lane`` held now (running and queued)."""
        return self._held.get(lane, 0)

    @property
    def paused(self) -> frozenset[Hashable]:
        """Lanes paused at the source now."""
        return frozenset(self._paused)

    @property
    def busy(self) -> int:
        """Messages held now (taken slots)."""
        return self.max_in_flight - self.free

    def submit(self, msg: Message) -> Awaitable[None] | None:
        """Queue ``msg`` (its slot already taken) and start a worker if it needs one.

        Returns what the reader must await before it reads on when ``msg``'s lane holds
        too much, else ``None``.
        """
        lane = msg.lane
        if lane is None:
            self._ready.append(msg)
            if self._free_workers == 0:
                self._free_workers += 1
                self._spawn(self._ready, None)
            return None
        held = self._held
        n = held[lane] = held.get(lane, 0) + 1
        waiting = self._lanes.get(lane)
        if waiting is not None:
            waiting.append(msg)
        else:
            waiting = self._lanes[lane] = deque((msg,))
            self._spawn(waiting, lane)
        cap = self.lane_cap
        if n < cap:
            return None
        pauser = self.pauser
        if pauser is not None:
            if lane not in self._paused:
                try:
                    pauser.pause(lane)
                except Exception:
                    log.exception("Could not pause lane %r; reading waits for it instead", lane)
                    return self._below(lane, cap)
                self._paused.add(lane)
            if n < 2 * cap:
                return None
            return self._below(lane, 2 * cap)
        return self._below(lane, cap)

    async def _below(self, lane: Hashable, limit: int) -> None:
        held = self._held
        while held.get(lane, 0) >= limit and not self._closed:
            await self.park()

    def _finished(self, lane: Hashable) -> None:
        held = self._held
        n = held.get(lane, 1) - 1
        if n > 0:
            held[lane] = n
        else:
            held.pop(lane, None)
        if self._paused and lane in self._paused and n <= self.lane_cap // 2:
            self._paused.discard(lane)
            self._resume(lane)
        self.wake()

    def _resume(self, lane: Hashable) -> None:
        pauser = self.pauser
        if pauser is None:
            return
        try:
            pauser.resume(lane)
        except Exception:
            log.exception("Could not resume lane %r", lane)

    def resume_all(self) -> None:
        """Resume every paused lane (on stop: a consumer is never left paused)."""
        lanes, self._paused = self._paused, set()
        for lane in lanes:
            self._resume(lane)

    # -- workers ---------------------------------------------------------------------------
    def _spawn(self, queue: deque[Message], lane: Hashable | None) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(self._work(queue, lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, queue: deque[Message], lane: Hashable | None) -> None:
        process = self._process
        release = self.release
        shared = lane is None
        try:
            while queue and not self._abandoning:
                msg = queue.popleft()
                if shared:
                    self._free_workers -= 1
                    if queue and not self._free_workers:
                        # More is waiting and this worker may be busy for a while.
                        self._free_workers += 1
                        self._spawn(queue, None)
                try:
                    await process(msg)
                finally:
                    release()
                    if shared:
                        self._free_workers += 1
                    else:
                        self._finished(lane)
        finally:
            if shared:
                self._free_workers -= 1
            else:
                self._lanes.pop(lane, None)

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """The workers running now."""
        return frozenset(self._tasks)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every held message to be handled.

        Returns ``True`` when all were; else cancels what still runs, starts nothing that
        waits behind it, and returns ``False`` (what was not handled is still the
        caller's to hand back).
        """
        loop = asyncio.get_running_loop()
        t_end = loop.time() + timeout
        pending = set(self._tasks)
        while pending:
            # A worker finishing may start the next message of its lane: wait again.
            _, still = await asyncio.wait(pending, timeout=max(0.0, t_end - loop.time()))
            if still:
                self.abandon()
                await asyncio.gather(*still, return_exceptions=True)
                return False
            pending = set(self._tasks)
        return True

    def abandon(self) -> None:
        """Cancel every worker; queued messages are not started."""
        self._abandoning = True
        for task in self._tasks:
            task.cancel()
        self._lanes.clear()
        self._ready.clear()
