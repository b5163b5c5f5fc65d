"""A virtual clock for the running asyncio loop: timers fire without the wait.

Retry backoff, :class:`~dispytch.Timeout`, requeue delays and ``asyncio.sleep`` in handlers
all end up as timers of the event loop (``loop.call_at``), compared against
``loop.time()``. The clock replaces the loop's ``time`` with real monotonic time plus an
offset, and wraps the selector the loop waits on: when the loop has nothing ready and
would sleep until its next timer, the clock first checks for I/O without waiting (or for
up to ``threshold`` seconds), and if none came, moves the offset forward to that timer
instead of sleeping. This is trio's *autojump* clock (and the ``looptime`` plugin's idea):
a test whose handlers back off for minutes finishes in milliseconds, in the same order
of events real time would give.

What it covers: everything scheduled on the loop (``asyncio.sleep``, ``asyncio.timeout``,
``wait_for``, ``call_later``). What it does not: ``time.time()``/``time.monotonic()`` read
directly (the ``dispytch-timestamp`` header is wall-clock), threads, other processes, and
real network I/O: while the loop waits for a socket or a thread with a timer pending, the
clock jumps to that timer. Use it with the memory transport (``dispytch.testing.memory``
does), or raise ``threshold`` to let real I/O that short arrive first.

When the clock is removed the loop keeps its offset (with no more jumps), so
``loop.time()`` never goes backwards for timers and deadlines made meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dispytch.testing._compat import loop_selector, set_loop_selector

__all__ = ["VirtualClock"]


class _ShiftedTime:
    """``loop.time`` ahead of ``time.monotonic()`` by :attr:`offset` seconds."""

    __slots__ = ("offset",)

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class _JumpingSelector:
    """The loop's selector, but a wait with nothing to wake it becomes a jump in time."""

    def __init__(self, inner: Any, clock: VirtualClock) -> None:
        self._inner = inner
        self._clock = clock

    def select(self, timeout: float | None = None) -> Any:
        clock = self._clock
        if timeout is None or timeout <= 0 or not clock.autojump:
            return self._inner.select(timeout)
        wait = min(timeout, clock.threshold)
        events = self._inner.select(wait)
        if not events:
            clock._jump(timeout - wait)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualClock:
    """Makes the running loop skip its idle waits (see the module docs for the scope).

    Example::

        async with VirtualClock() as clock:
            await asyncio.sleep(3600)      # returns at once
            assert clock.jumped >= 3600

    Args:
        autojump: Jump to the next timer whenever the loop would wait for it. ``False``
            freezes timers until :meth:`advance` moves time on.
        threshold: Real seconds to wait for I/O before jumping (0: jump at once).

    Attributes:
        jumped: Virtual seconds skipped so far by this clock.
    """

    def __init__(self, *, autojump: bool = True, threshold: float = 0.0) -> None:
        if threshold < 0:
            raise ValueError("threshold must not be negative.")
        self.autojump = autojump
        self.threshold = threshold
        self.jumped = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._time: _ShiftedTime | None = None
        self._inner: Any = None

    @property
    def installed(self) -> bool:
        """Whether the clock is driving a loop now."""
        return self._loop is not None

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Drive ``loop`` (default: the running one).

        Raises:
            RuntimeError: The clock is installed already, another clock drives that loop,
                or the loop is not asyncio's selector loop.
        """
        if self._loop is not None:
            raise RuntimeError("This VirtualClock is installed already.")
        loop = loop or asyncio.get_running_loop()
        selector = loop_selector(loop)
        if isinstance(selector, _JumpingSelector):
            raise RuntimeError(
                "Another VirtualClock drives this loop already.\n"
                "Use one clock per test (the kit's own: kit.clock)."
            )
        shifted = loop.time
        if not isinstance(shifted, _ShiftedTime):
            shifted = _ShiftedTime()
            loop.time = shifted  # type: ignore[method-assign]
        self._loop, self._time, self._inner = loop, shifted, selector
        set_loop_selector(loop, _JumpingSelector(selector, self))

    def uninstall(self) -> None:
        """Stop jumping; the loop's time keeps the offset reached (it never goes back)."""
        if self._loop is None:
            return
        set_loop_selector(self._loop, self._inner)
        self._loop = self._time = self._inner = None

    def time(self) -> float:
        """The loop's (virtual) time."""
        if self._time is None:
            raise RuntimeError("The VirtualClock is not installed.")
        return self._time()

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``: timers due by then fire on the loop's next turn."""
        if seconds < 0:
            raise ValueError("Time only moves forward: seconds must not be negative.")
        self._jump(seconds)

    def _jump(self, seconds: float) -> None:
        if self._time is None:
            return
        self._time.offset += seconds
        self.jumped += seconds

    async def __aenter__(self) -> VirtualClock:
        self.install()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.uninstall()
