"""``DeadLetter``: a message that failed for good is published elsewhere, not lost."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from dispytch.errors import DeadLetterError, RequeueMessage
from dispytch.middleware.base import CallNext, HandlerContext, Outcome
from dispytch.routes import EventRoute, TopicRoute
from dispytch.transport import (
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_ROUTE,
    OutgoingMessage,
    Producer,
)

log = logging.getLogger("dispytch.dead_letter")

RouteSpec = EventRoute | Callable[[HandlerContext], EventRoute] | None


class DeadLetter:
    """After the last failure, publish the original payload and headers to a dead-letter
    route, with the error in headers, then let the message be acknowledged.

    If publishing fails, :class:`~dispytch.errors.DeadLetterError` is raised and the
    original is *not* acknowledged: the broker delivers it again.

    Put it outside ``Retry`` so it sees only the final failure::

        middlewares=[DeadLetter(emitter, route=KafkaEventRoute(topic="orders.dlq")),
                     Retry(attempts=3)]

    Args:
        target: An :class:`~dispytch.EventEmitter` or a :class:`~dispytch.Producer` to
            publish with (any transport: a Kafka consumer may dead-letter to Redis).
        route: The dead-letter route, or a callable of the context returning one.
            Default: ``TopicRoute(topic=<original route> + ".dlq")``.
        error_message_limit: Error messages are cut to this many characters.
    """

    def __init__(
        self,
        target: Any,
        route: RouteSpec = None,
        *,
        error_message_limit: int = 1000,
    ) -> None:
        producer = getattr(target, "producer", target)
        if not hasattr(producer, "send"):
            raise TypeError(
                f"DeadLetter needs an EventEmitter or a Producer to publish with, got {target!r}."
            )
        self.producer: Producer = producer
        self.route = route
        self.limit = error_message_limit

    def route_for(self, ctx: HandlerContext) -> EventRoute:
        """The dead-letter route of ``ctx``'s message."""
        if self.route is None:
            return TopicRoute(topic=f"{ctx.route}.dlq")
        if isinstance(self.route, EventRoute):
            return self.route
        return self.route(ctx)

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any:
        try:
            return await call_next(ctx)
        except RequeueMessage:
            raise
        except Exception as exc:
            await self.publish(ctx, exc)
            ctx.exception = exc
            ctx.outcome = Outcome.DEAD_LETTERED
            return None

    async def publish(self, ctx: HandlerContext, exc: BaseException) -> None:
        """Publish ``ctx``'s message with ``exc`` described in headers."""
        msg = ctx.message
        headers = dict(msg.headers)
        headers[HEADER_ERROR_TYPE] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        headers[HEADER_ERROR_MESSAGE] = str(exc)[: self.limit]
        headers[HEADER_ERROR_ATTEMPTS] = str(ctx.attempt)
        headers[HEADER_ORIGINAL_ROUTE] = msg.route
        headers[HEADER_DEAD_LETTERED_AT] = f"{time.time():.6f}"
        route = self.route_for(ctx)
        try:
            await self.producer.send(OutgoingMessage(route, msg.payload, headers, msg.key))
        except Exception as pub_exc:
            log.error(
                "Could not dead-letter a message from %r to %r (%s: %s); it stays "
                "unacknowledged and will be delivered again.",
                msg.route,
                route.address,
                type(pub_exc).__name__,
                pub_exc,
            )
            raise DeadLetterError(
                f"Dead-lettering to {route.address!r} failed: {pub_exc}"
            ) from pub_exc
        log.warning(
            "Handler %r failed for good on %r after %d attempt(s) (%s: %s); dead-lettered to %r",
            ctx.handler.name,
            msg.route,
            ctx.attempt,
            type(exc).__name__,
            exc,
            route.address,
        )
