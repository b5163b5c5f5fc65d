"""How a dispatcher serves commands and queries: checks at start, and the responder."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from dispytch.context import CallNext, Middleware
from dispytch.cqrs.handlers import Responder
from dispytch.cqrs.wire import (
    HEADER_CORRELATION_ID,
    HEADER_ERROR_RETRYABLE,
    HEADER_REPLY_STATUS,
    STATUS_NO_HANDLER,
    ReplySender,
)
from dispytch.errors import HandlerRegistrationError
from dispytch.message import HEADER_ERROR_MESSAGE, HEADER_ERROR_TYPE, HEADER_EVENT_TYPE, Message
from dispytch.plugins import serializer_for
from dispytch.router import HandlerSpec, check_unique


class Serving(Protocol):
    """What the responder needs of a dispatcher."""

    name: str
    consumer: Any
    emitter: Any
    reply_serializer: Any
    stats: Counter[str]


log = logging.getLogger("dispytch.cqrs")


def build_responder(
    dispatcher: Serving,
    handlers: Sequence[tuple[HandlerSpec, tuple[Middleware, ...]]],
) -> Callable[[HandlerSpec, CallNext], CallNext]:
    """Check the dispatcher's command and query handlers and make the wrapper that
    answers their requests.

    Raises:
        HandlerRegistrationError: Two handlers for one command or query type (both
            named), or one whose class no transport can route.
    """
    check_unique(handlers)
    for spec, _ in handlers:
        info = spec.request
        if info is not None and info.local:
            raise HandlerRegistrationError(
                f"Dispatcher {dispatcher.name!r} cannot serve {info.message_type.__name__} "
                f"(handler {spec.name!r}): the class has no route with a topic.\n"
                "Set __topic__ (or a __route__ with a topic) on the class, or pass "
                f"subscription= to {info.kind}()."
            )
    if not isinstance(dispatcher.consumer, ReplySender):
        log.warning(
            "Dispatcher %r serves commands or queries, but its consumer cannot send replies "
            "(no request_reply capability): they run as fire-and-forget messages.",
            dispatcher.name,
        )
    serializer: Any = dispatcher.reply_serializer
    if isinstance(serializer, str):
        serializer = serializer_for(serializer)
    emitter = dispatcher.emitter
    responder = Responder(
        dispatcher.consumer,
        serializer,
        emitter.emit_batch if emitter is not None else None,
        dispatcher.stats,
    )

    def around(spec: HandlerSpec, chain: CallNext) -> CallNext:
        assert spec.request is not None
        return responder.around(spec.request, spec.name, chain)

    return around


def unhandled_replier(
    consumer: object, dispatcher: str, stats: Counter[str]
) -> Callable[[Message], Awaitable[bool]] | None:
    """What answers a request no handler of the dispatcher takes, or ``None`` when its
    consumer cannot reply.

    The answer is a ``no-handler`` reply, sent at once, that makes the caller's
    ``request`` raise :class:`~dispytch.cqrs.NoHandlerError` instead of waiting for its
    timeout (counted in ``stats["requests_unhandled"]``). It returns ``True`` when
    ``message`` was such a request and was answered (the dispatcher then acknowledges it:
    answered requests are never redelivered), ``False`` for anything else: a message
    without a correlation id or a reply address, or a reply that could not be sent.
    """
    if not isinstance(consumer, ReplySender):
        return None
    replier: ReplySender = consumer

    async def refuse(message: Message) -> bool:
        headers = message.headers
        correlation = headers.get(HEADER_CORRELATION_ID)
        if correlation is None or replier.reply_address(message) is None:
            return False
        kind = headers.get(HEADER_EVENT_TYPE)
        text = f"No handler takes {kind!r} on route {message.route!r} at dispatcher {dispatcher!r}."
        try:
            await replier.send_reply(
                message,
                b"",
                {
                    HEADER_CORRELATION_ID: correlation,
                    HEADER_REPLY_STATUS: STATUS_NO_HANDLER,
                    HEADER_ERROR_TYPE: "NoHandlerError",
                    HEADER_ERROR_MESSAGE: text,
                    HEADER_ERROR_RETRYABLE: "false",
                },
            )
        except Exception:
            log.exception("Request %s: could not send the no-handler reply.", correlation)
            return False
        stats["requests_unhandled"] += 1
        log.warning("Request %s: %s Replied 'no-handler'.", correlation, text)
        return True

    return refuse
