"""``Timeout``: a deadline for the handler; expiry counts as a failure."""

from __future__ import annotations

import asyncio
from typing import Any

from dispytch.errors import DispytchError
from dispytch.middleware.base import CallNext, HandlerContext


class HandlerTimeoutError(DispytchError, TimeoutError):
    """A handler ran past its ``Timeout``."""


class Timeout:
    """Cancel the rest of the stack after ``seconds`` and fail with
    :class:`HandlerTimeoutError` (so ``Retry`` and ``DeadLetter`` treat it as a failure).

    Put it inside ``Retry`` for a deadline per attempt, outside for one over all attempts.

    A sync handler runs in a worker thread, which Python cannot interrupt: on expiry the
    handling fails at once, but the thread finishes its call in the background.

    Args:
        seconds: The deadline.
    """

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("Timeout(seconds=...) must be positive.")
        self.seconds = seconds

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any:
        try:
            async with asyncio.timeout(self.seconds):
                return await call_next(ctx)
        except TimeoutError as exc:
            if isinstance(exc, HandlerTimeoutError):
                raise
            raise HandlerTimeoutError(
                f"Handler {ctx.handler.name!r} ran past its {self.seconds}s timeout on "
                f"{ctx.route!r}."
            ) from exc
