"""``DeadLetter``: a message that failed for good is published elsewhere, not lost, and a
dead letter that cannot be published never blocks its lane for ever.

What happens when the dead-letter publish itself fails (``docs/failure-policy.md`` has
the whole table):

- **transient** (an outage: an :class:`~dispytch.errors.EmitError` other than
  :class:`~dispytch.errors.EmitRejectedError`, ``ConnectionError``, ``TimeoutError``,
  ``OSError``): retried with backoff, up to ``publish_attempts`` times; if it still fails,
  the original is handed back for redelivery (:class:`~dispytch.errors.DeadLetterError`)
  while its delivery attempt is below ``max_deliveries``; on that delivery it is treated
  as permanent.
- **permanent** (``EmitRejectedError`` anywhere in the cause chain, a ``TypeError`` or
  ``ValueError`` from serialising, a payload above ``max_payload_bytes``, anything the
  ``permanent`` argument names, anything that is not a transient kind): a *truncated*
  dead letter is published instead, a small JSON record with the error, the original
  route, size, headers, transport metadata (partition/offset, message id, stream entry
  id) and the payload's sha256, and the original counts as dead-lettered (acknowledged
  under ``AckPolicy.AFTER``), with one ERROR line. If that also fails,
  :class:`~dispytch.errors.DeadLetterFailedError` tells the dispatcher the message failed
  for good: it logs one ERROR line (route, size, the handler's error, the dead-letter
  error, where the payload went) and settles it through the transport's reject path
  (``nack(requeue=False)``).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dispytch.backoff import Backoff
from dispytch.errors import (
    DeadLetterError,
    DeadLetterFailedError,
    EmitError,
    EmitRejectedError,
    RequeueMessage,
)
from dispytch.middleware.base import CallNext, HandlerContext, Outcome
from dispytch.routes import EventRoute, TopicRoute
from dispytch.transport import (
    HEADER_CONTENT_TYPE,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_ROUTE,
    Message,
    OutgoingMessage,
    Producer,
)

log = logging.getLogger("dispytch.dead_letter")

RouteSpec = EventRoute | Callable[[HandlerContext], EventRoute] | None
ExcTypes = type[BaseException] | tuple[type[BaseException], ...]

#: Set (``"1"``) on a truncated dead letter: its payload is the JSON record, not the original.
HEADER_TRUNCATED = "dispytch-dead-letter-truncated"
#: The original payload's size in bytes, on a truncated dead letter.
HEADER_ORIGINAL_SIZE = "dispytch-original-size"
#: The original payload's sha256 (hex), on a truncated dead letter.
HEADER_ORIGINAL_SHA256 = "dispytch-original-sha256"
#: The content type of a truncated dead letter's record.
TRUNCATED_CONTENT_TYPE = "application/vnd.dispytch.truncated-dead-letter+json"

#: Errors that are transient unless something in their cause chain says otherwise.
TRANSIENT = (EmitError, ConnectionError, TimeoutError, OSError)

#: Broker-client errors known to be permanent, by qualified class name (core imports no
#: broker library). A stopgap for transports that do not yet raise ``EmitRejectedError``
#: for them: dispytch-kafka wraps aiokafka's ``MessageSizeTooLargeError`` in a plain
#: ``EmitError``.
KNOWN_PERMANENT_CAUSES = frozenset({"aiokafka.errors.MessageSizeTooLargeError"})


class PayloadTooLargeError(EmitRejectedError):
    """The payload is larger than ``DeadLetter(max_payload_bytes=...)`` allows."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its explicit causes (``raise ... from``), each once.

    Not ``__context__``: a dead-letter publish runs while the handler's exception is being
    handled, so every error it raises has that exception as its implicit context.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 32:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


class DeadLetter:
    """After the last failure, publish the original payload and headers to a dead-letter
    route, with the error in headers, then let the message be acknowledged.

    A dead-letter publish that fails is retried with backoff while the failure looks
    transient; a permanent failure (or the last delivery of an outage) publishes a
    truncated dead letter, and if even that fails, the message is rejected through the
    transport with one ERROR line. So a message that cannot be dead-lettered never blocks
    its lane for ever and never vanishes without a log line; see the module docstring and
    ``docs/failure-policy.md``.

    Put it outside ``Retry`` so it sees only the final failure::

        middlewares=[DeadLetter(emitter, route=KafkaEventRoute(topic="orders.dlq")),
                     Retry(attempts=3)]

    Args:
        target: An :class:`~dispytch.EventEmitter` or a :class:`~dispytch.Producer` to
            publish with (any transport: a Kafka consumer may dead-letter to Redis).
        route: The dead-letter route, or a callable of the context returning one.
            Default: ``TopicRoute(topic=<original route> + ".dlq")``.
        error_message_limit: Error messages are cut to this many characters.
        publish_attempts: Attempts at publishing one dead letter while its failure looks
            transient, the first included.
        backoff: The waits between those attempts (default: 0.1 s doubling to 2 s, with
            jitter); each dead letter starts from a fresh copy.
        max_deliveries: While the dead-letter target is down (transient failures on every
            attempt), the original is handed back for redelivery until its delivery
            attempt reaches this; on that delivery the failure counts as permanent.
            ``None``: hand it back for as long as the outage lasts.
        max_payload_bytes: Payloads above this are not published whole: the truncated dead
            letter goes instead (``None``: no limit of our own; the target's applies).
        permanent: More exception types, or a predicate, the target's errors count as
            permanent by (checked along the cause chain).
    """

    def __init__(
        self,
        target: Any,
        route: RouteSpec = None,
        *,
        error_message_limit: int = 1000,
        publish_attempts: int = 3,
        backoff: Backoff | None = None,
        max_deliveries: int | None = 5,
        max_payload_bytes: int | None = None,
        permanent: ExcTypes | Callable[[BaseException], bool] = (),
    ) -> None:
        producer = getattr(target, "producer", target)
        if not hasattr(producer, "send"):
            raise TypeError(
                f"DeadLetter needs an EventEmitter or a Producer to publish with, got {target!r}."
            )
        if publish_attempts < 1:
            raise ValueError("DeadLetter(publish_attempts=...) must be at least 1.")
        if max_deliveries is not None and max_deliveries < 1:
            raise ValueError("DeadLetter(max_deliveries=...) must be at least 1, or None.")
        if max_payload_bytes is not None and max_payload_bytes < 0:
            raise ValueError("DeadLetter(max_payload_bytes=...) must not be negative.")
        self.producer: Producer = producer
        self.route = route
        self.limit = error_message_limit
        self.publish_attempts = publish_attempts
        self.backoff = backoff if backoff is not None else Backoff(0.1, 2.0, 2.0, 0.5)
        self.max_deliveries = max_deliveries
        self.max_payload_bytes = max_payload_bytes
        self.permanent = permanent

    def route_for(self, ctx: HandlerContext) -> EventRoute:
        """The dead-letter route of ``ctx``'s message."""
        if self.route is None:
            return TopicRoute(topic=f"{ctx.route}.dlq")
        if isinstance(self.route, EventRoute):
            return self.route
        return self.route(ctx)

    def is_permanent(self, exc: BaseException) -> bool:
        """Whether a dead-letter publish that raised ``exc`` can never succeed.

        Permanent: ``EmitRejectedError``, a :data:`KNOWN_PERMANENT_CAUSES` error or what
        ``permanent`` names anywhere in the cause chain; ``TypeError`` / ``ValueError``
        (serialising); and anything that is not one of the :data:`TRANSIENT` kinds.
        """
        for link in _chain(exc):
            if isinstance(link, EmitRejectedError | TypeError | ValueError):
                return True
            names = {f"{c.__module__}.{c.__qualname__}" for c in type(link).__mro__}
            if names & KNOWN_PERMANENT_CAUSES:
                return True
            if callable(self.permanent) and not isinstance(self.permanent, type):
                if self.permanent(link):
                    return True
            elif isinstance(link, self.permanent):
                return True
        return not isinstance(exc, TRANSIENT)

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

    def _headers(self, ctx: HandlerContext, exc: BaseException) -> dict[str, str]:
        msg = ctx.message
        headers = dict(msg.headers)
        headers[HEADER_ERROR_TYPE] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        headers[HEADER_ERROR_MESSAGE] = str(exc)[: self.limit]
        headers[HEADER_ERROR_ATTEMPTS] = str(ctx.attempt)
        headers[HEADER_ORIGINAL_ROUTE] = msg.route
        headers[HEADER_DEAD_LETTERED_AT] = f"{time.time():.6f}"
        return headers

    async def publish(self, ctx: HandlerContext, exc: BaseException) -> None:
        """Publish ``ctx``'s message with ``exc`` described in headers.

        Returns once the message is dead-lettered, whole or truncated.

        Raises:
            DeadLetterError: The target is down (transient failures on every attempt) and
                the original may still be delivered again.
            DeadLetterFailedError: Neither the dead letter nor the truncated one could be
                published: the message failed for good.
        """
        msg = ctx.message
        size = len(msg.payload)
        try:
            route = self.route_for(ctx)
        except Exception as route_exc:
            raise DeadLetterFailedError(
                self._failed_text(
                    ctx,
                    exc,
                    route_exc,
                    None,
                    "nowhere: its dead-letter route could not be computed; rejected to the "
                    "broker's reject path",
                )
            ) from route_exc
        headers = self._headers(ctx, exc)
        failure: BaseException
        if self.max_payload_bytes is not None and size > self.max_payload_bytes:
            failure = PayloadTooLargeError(
                f"the payload is {size} bytes, above max_payload_bytes={self.max_payload_bytes}"
            )
        else:
            outcome = await self._publish_whole(ctx, route, headers)
            if outcome is None:
                log.warning(
                    "Handler %r failed for good on %r after %d attempt(s) (%s); "
                    "dead-lettered to %r",
                    ctx.handler.name,
                    msg.route,
                    ctx.attempt,
                    _describe(exc),
                    route.address,
                )
                return
            failure, transient = outcome
            if transient and (self.max_deliveries is None or msg.attempt < self.max_deliveries):
                log.error(
                    "Could not dead-letter a message from %r (%d bytes) to %r in %d "
                    "attempt(s) (%s); the target looks down, so the original stays "
                    "unacknowledged and will be delivered again (delivery %d%s).",
                    msg.route,
                    size,
                    route.address,
                    self.publish_attempts,
                    _describe(failure),
                    msg.attempt,
                    f" of at most {self.max_deliveries}" if self.max_deliveries else "",
                )
                raise DeadLetterError(
                    f"Dead-lettering to {route.address!r} failed: {failure}"
                ) from failure
        truncated = self._truncated(ctx, exc, failure, route, headers)
        try:
            await self.producer.send(truncated)
        except Exception as truncated_exc:
            where = (
                f"nowhere: the truncated dead letter to {route.address!r} failed too "
                f"({_describe(truncated_exc)}); rejected to the broker's reject path"
            )
            raise DeadLetterFailedError(
                self._failed_text(ctx, exc, failure, route, where)
            ) from failure
        log.error(
            "%s",
            self._failed_text(
                ctx,
                exc,
                failure,
                route,
                f"a truncated dead letter to {route.address!r} (error, route, size, headers "
                f"and a reference, sha256 {truncated.headers[HEADER_ORIGINAL_SHA256]}); "
                "the original counts as dead-lettered",
            ),
        )

    async def _publish_whole(
        self, ctx: HandlerContext, route: EventRoute, headers: dict[str, str]
    ) -> tuple[BaseException, bool] | None:
        """Publish the dead letter, retrying transient failures with backoff.

        Returns ``None`` once published, else the last failure and whether it looked
        transient.
        """
        msg = ctx.message
        backoff = copy.copy(self.backoff)
        backoff.reset()
        for attempt in range(1, self.publish_attempts + 1):
            try:
                await self.producer.send(OutgoingMessage(route, msg.payload, headers, msg.key))
            except Exception as pub_exc:
                if self.is_permanent(pub_exc):
                    return pub_exc, False
                if attempt == self.publish_attempts:
                    return pub_exc, True
                wait = backoff.next()
                log.warning(
                    "Dead-lettering a message from %r to %r failed (attempt %d of %d: %s); "
                    "retrying in %.3fs",
                    msg.route,
                    route.address,
                    attempt,
                    self.publish_attempts,
                    _describe(pub_exc),
                    wait,
                )
                await asyncio.sleep(wait)
            else:
                return None
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed_text(
        self,
        ctx: HandlerContext,
        exc: BaseException,
        failure: BaseException,
        route: EventRoute | None,
        where: str,
    ) -> str:
        msg = ctx.message
        target = f" to {route.address!r}" if route is not None else ""
        return (
            f"Could not dead-letter a message from {msg.route!r} ({len(msg.payload)} bytes, "
            f"handler {ctx.handler.name!r} failed after {ctx.attempt} attempt(s) with "
            f"{_describe(exc)}): dead letter{target} failed with {_describe(failure)}; "
            f"the payload went to {where}."
        )

    def _truncated(
        self,
        ctx: HandlerContext,
        exc: BaseException,
        failure: BaseException,
        route: EventRoute,
        headers: Mapping[str, str],
    ) -> OutgoingMessage:
        """A small record in place of the payload: the error and a reference to the original."""
        msg: Message = ctx.message
        digest = hashlib.sha256(msg.payload).hexdigest()
        original_headers = dict(msg.headers)
        record = {
            "truncated_dead_letter": 1,
            "error": {
                "type": headers[HEADER_ERROR_TYPE],
                "message": headers[HEADER_ERROR_MESSAGE],
                "attempts": ctx.attempt,
            },
            "dead_letter_error": {
                "type": f"{type(failure).__module__}.{type(failure).__qualname__}",
                "message": str(failure)[: self.limit],
            },
            "original": {
                "route": msg.route,
                "size": len(msg.payload),
                "sha256": digest,
                "headers": original_headers,
                "key": _jsonable(msg.key),
                "delivery_attempt": msg.attempt,
                "metadata": {str(k): _jsonable(v) for k, v in msg.metadata.items()},
            },
            "dead_lettered_at": float(headers[HEADER_DEAD_LETTERED_AT]),
        }
        out = dict(headers)
        out[HEADER_CONTENT_TYPE] = TRUNCATED_CONTENT_TYPE
        out[HEADER_TRUNCATED] = "1"
        out[HEADER_ORIGINAL_SIZE] = str(len(msg.payload))
        out[HEADER_ORIGINAL_SHA256] = digest
        payload = json.dumps(record, separators=(",", ":")).encode()
        return OutgoingMessage(route, payload, out, msg.key)
