"""``Observe``: the hook point for logging and metrics around each handling."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from dispytch.middleware.base import CallNext, HandlerContext, Outcome

ObserveHook = Callable[[HandlerContext, Outcome, float], Any]


class Observe:
    """Time each handling and report its outcome.

    Example::

        def record(ctx, outcome, seconds):
            histogram.labels(ctx.handler.name, outcome.value).observe(seconds)

        dispatcher = EventDispatcher(consumer, middlewares=[Observe(record)])

    Args:
        hook: Called with ``(ctx, outcome, seconds)`` after every handling, failures too.
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

            outcome = Outcome.REQUEUED if isinstance(exc, RequeueMessage) else Outcome.REJECTED
            raise
        finally:
            elapsed = time.perf_counter() - t0
            if self.log.isEnabledFor(self.level):
                self.log.log(
                    self.level, "%s on %r: %s in %.6fs (attempt %d)",
                    ctx.handler.name, ctx.route, outcome.value, elapsed, ctx.attempt,
                )
            if self.hook is not None:
                self.hook(ctx, outcome, elapsed)
