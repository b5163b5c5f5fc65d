"""How a dispatcher serves commands and queries: checks at start, and the responder."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dispytch.context import CallNext, Middleware
from dispytch.cqrs.handlers import Responder
from dispytch.cqrs.wire import ReplySender
from dispytch.errors import HandlerRegistrationError
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
