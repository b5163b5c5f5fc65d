"""``Retry``: run a failing handler again, with exponential backoff, jitter and a cap."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from dispytch.backoff import Backoff
from dispytch.errors import PayloadError, PluginError, RequeueMessage, RouteParamError
from dispytch.middleware.base import CallNext, HandlerContext

log = logging.getLogger("dispytch.retry")

ExcTypes = type[BaseException] | tuple[type[BaseException], ...]


class Retry:
    """Retry the rest of the stack when it raises.

    Example::

        @router.handler(KafkaEventSubscription(topic="orders"),
                        middlewares=[DeadLetter(emitter), Retry(attempts=5, retry_on=IOError)])
        async def on_order(event: Event[Order]): ...

    Args:
        attempts: Attempts in all, the first included (``attempts=1`` never retries).
        delay: The first backoff, in seconds; attempt ``n`` waits ``delay * factor**(n-1)``.
        factor: Growth of the backoff.
        max_delay: The cap on one backoff.
        jitter: Fraction of each backoff that is random (0: none, 1: "full jitter").
        retry_on: Only these exceptions are retried (default: any ``Exception``).
        give_up_on: These are never retried, even if ``retry_on`` matches. Some never are,
            whatever you pass, because another attempt cannot succeed: a payload that does
            not decode or validate or names an unknown content type
            (:class:`~dispytch.errors.PayloadError` and its subclasses), a route parameter
            that does not convert (:class:`~dispytch.errors.RouteParamError`), a plugin
            lookup that fails (:class:`~dispytch.errors.PluginError`, e.g. no serializer for
            the content type), and a request for redelivery
            (:class:`~dispytch.errors.RequeueMessage`).
        sleep: The sleep function (tests inject a fake clock).
    """

    def __init__(
        self,
        attempts: int = 3,
        *,
        delay: float = 0.1,
        factor: float = 2.0,
        max_delay: float = 30.0,
        jitter: float = 0.5,
        retry_on: ExcTypes = Exception,
        give_up_on: ExcTypes = (),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("Retry(attempts=...) must be at least 1.")
        if not 0 <= jitter <= 1:
            raise ValueError("Retry(jitter=...) must be between 0 and 1.")
        if factor < 1:
            raise ValueError("Retry(factor=...) must be at least 1 (delays never shrink).")
        if delay < 0 or max_delay < 0:
            raise ValueError("Retry(delay=..., max_delay=...) must not be negative.")
        #: The delays without jitter (the one backoff policy of Dispytch).
        self._delays = Backoff(initial=delay, factor=factor, cap=max_delay)
        self.attempts = attempts
        self.delay = delay
        self.factor = factor
        self.max_delay = max_delay
        self.jitter = jitter
        self.retry_on = retry_on
        extra = give_up_on if isinstance(give_up_on, tuple) else (give_up_on,)
        self.give_up_on: tuple[type[BaseException], ...] = (
            PayloadError,
            RouteParamError,
            PluginError,
            RequeueMessage,
            *extra,
        )
        self._sleep = sleep

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        base = self._delays.delay(attempt)
        if self.jitter:
            base -= random.uniform(0, base * self.jitter)  # jitter, not crypto
        return base

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any:
        while True:
            try:
                return await call_next(ctx)
            except Exception as exc:
                if (
                    ctx.attempt >= self.attempts
                    or isinstance(exc, self.give_up_on)
                    or not isinstance(exc, self.retry_on)
                ):
                    raise
                wait = self.backoff(ctx.attempt)
                log.warning(
                    "Handler %r failed on %r (attempt %d of %d): %s: %s; retrying in %.3fs",
                    ctx.handler.name,
                    ctx.route,
                    ctx.attempt,
                    self.attempts,
                    type(exc).__name__,
                    exc,
                    wait,
                )
                ctx.exception = exc
                ctx.attempt += 1
                ctx.dep_cache = {}
                await self._sleep(wait)
