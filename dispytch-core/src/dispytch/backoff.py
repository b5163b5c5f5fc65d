"""One backoff policy for every retry loop in Dispytch and its plugins.

Reconnecting a consumer, re-fetching after a broker error, retrying a dead-letter
publish and a middleware's retry delays all wait the same way: exponentially growing
delays up to a cap, with optional jitter so that many clients do not retry in step.
Core depends on pydantic and pluggy only, so this is written here rather than taken from
``tenacity`` or ``backoff``.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential delays: ``initial``, ``initial * factor``, ... capped at ``cap``.

    Example::

        backoff = Backoff(initial=0.1, cap=10.0)
        while True:
            try:
                await connect()
                backoff.reset()
            except OSError:
                await backoff.sleep()

    Args:
        initial: The first delay in seconds.
        factor: What each delay is multiplied by for the next one.
        cap: The longest delay.
        jitter: A fraction (0 to 1) of each delay drawn at random and taken off it, so
            that clients which failed together do not retry together.

    Attributes:
        attempts: Delays handed out since the last :meth:`reset`.
    """

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 10.0
    jitter: float = 0.0
    attempts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < 0:
            raise ValueError("Backoff delays must not be negative.")
        if self.factor < 1:
            raise ValueError("Backoff factor must be at least 1.")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff jitter is a fraction between 0 and 1.")

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1 for the first), without jitter."""
        if attempt < 1:
            return 0.0
        # Cap the exponent too: factor ** attempt overflows a float long before it matters.
        exponent = min(attempt - 1, 64)
        return float(min(self.initial * self.factor**exponent, self.cap))

    def next(self) -> float:
        """The next delay (with jitter), counting it as one more attempt."""
        self.attempts += 1
        value = self.delay(self.attempts)
        if self.jitter:
            value -= value * self.jitter * random.random()
        return value

    async def sleep(self) -> float:
        """Sleep for :meth:`next` and return how long that was."""
        value = self.next()
        await asyncio.sleep(value)
        return value

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self.attempts = 0
