"""``Observe``: the hook point for logging and metrics around each handling."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dispytch.middleware.base import CallNext, HandlerContext, Outcome

ObserveHook = Callable[[HandlerContext, Outcome, float], Any | Awaitable[Any]]


class Observe:
    """Time each handling and report its outcome.

    Example::

        def record(ctx, outcome, seconds):
            histogram.labels(ctx.handler.name, outcome.value).observe(seconds)

        dispatcher = EventDispatcher(consumer, middlewares=[Observe(record)])

    Args:
        hook: Called with ``(ctx, outcome, seconds)`` after every handling, failures too;
            sync or async. A hook that raises is logged and never changes the handling's
            outcome (metrics must not fail messages).
        logger: Where to log each handling at ``level`` (default ``dispytch.observe``).
        level: Log level of the per-handling line (DEBUG by default).
    """

    def __init__(
        self,
        hook: ObserveHook | None = None,
        *,
        logger: logging.Logger | None = None,
        level: int = logging.DEBUG,
    ) -> None:
        self.hook = hook
        self.log = logger or logging.getLogger("dispytch.observe")
        self.level = level

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any:
        t0 = time.perf_counter()
        outcome = Outcome.REJECTED
        try:
            result = await call_next(ctx)
            outcome = ctx.outcome or Outcome.HANDLED
            return result
        except BaseException as exc:
            from dispytch.errors import RequeueMessage

            # Cancelled (a stop past its deadline) also hands the message back.
            requeued = isinstance(exc, (RequeueMessage, asyncio.CancelledError))
            outcome = Outcome.REQUEUED if requeued else Outcome.REJECTED
            raise
        finally:
            elapsed = time.perf_counter() - t0
            if self.log.isEnabledFor(self.level):
                self.log.log(
                    self.level,
                    "%s on %r: %s in %.6fs (attempt %d)",
                    ctx.handler.name,
                    ctx.route,
                    outcome.value,
                    elapsed,
                    ctx.attempt,
                )
            if self.hook is not None:
                await self._call_hook(ctx, outcome, elapsed)

    async def _call_hook(self, ctx: HandlerContext, outcome: Outcome, elapsed: float) -> None:
        assert self.hook is not None
        try:
            result = self.hook(ctx, outcome, elapsed)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.log.exception(
                "Observe hook %r failed for %s on %r (outcome %s); the handling itself is "
                "not affected.",
                self.hook,
                ctx.handler.name,
                ctx.route,
                outcome.value,
            )
