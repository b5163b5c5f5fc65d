"""The per-handling context and the middleware contract: an async callable around the
next step (an onion).

A middleware is any ``async def mw(ctx: HandlerContext, call_next) -> Any`` (or an object
with such an ``__call__``). It may act before and after ``await call_next(ctx)``, call it
again (retry), not at all (filter), or under a deadline (timeout).

Levels, outermost first: the dispatcher's middlewares, then each router's from the
outermost router inwards, then the handler's own. Within one list the first is the
outermost. The innermost step decodes the event, makes the dependencies and calls the
handler.

The context gets what it needs as two callables (decode a payload, make an acknowledger)
and a small :class:`HandlerInfo`, not the dispatcher: this module sits below the
dispatcher, the dependency injection and the middleware, and imports none of them.
Looking a middleware up by name is registration work, done in :mod:`dispytch.router`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from dispytch.event import Event
from dispytch.message import Message
from dispytch.routes import EventSubscription
from dispytch.transport import Acknowledger

CallNext = Callable[["HandlerContext"], Awaitable[Any]]

#: ``decode(message, model)``: the payload validated into ``model``.
Decode = Callable[[Message, Any], Any]
#: ``acknowledge(message)``: the manual acknowledger of ``message``.
Acknowledge = Callable[[Message], Acknowledger]


class Middleware(Protocol):
    """``async (ctx, call_next) -> result``."""

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any: ...


#: A middleware, or what names one: ``"retry"`` / ``("retry", {"attempts": 5})``.
MiddlewareLike = Middleware | Callable[..., Awaitable[Any]] | str | tuple[str, Mapping[str, Any]]


class HandlerInfo(Protocol):
    """What the context tells about the handler it runs (its registration)."""

    @property
    def name(self) -> str:
        """For logs: the handler's name."""
        ...

    @property
    def func(self) -> Callable[..., Any]:
        """The handler function."""
        ...

    @property
    def subscription(self) -> EventSubscription:
        """What the handler consumes."""
        ...

    @property
    def event_types(self) -> Sequence[Any]:
        """The ``T`` of every ``Event[T]`` it takes, its own first."""
        ...


class Outcome(enum.StrEnum):
    """How the handling of a message ended.

    ``handled``: every handler finished. ``filtered``: a filter skipped it.
    ``dead_lettered``: it failed for good and was published to a dead-letter route.
    ``rejected``: it failed for good with nowhere to go (logged at ERROR, then rejected or
    acknowledged as the transport documents). ``requeued``: handed back for redelivery.
    ``skipped``: handlers take its route but none takes its event type (logged at INFO,
    acknowledged).
    """

    HANDLED = "handled"
    FILTERED = "filtered"
    DEAD_LETTERED = "dead_lettered"
    REJECTED = "rejected"
    REQUEUED = "requeued"
    SKIPPED = "skipped"


_NO_MODEL: Any = object()


class MessageState:
    """What all handlers of one message share: decoded bodies, the acknowledger.

    The first body decoded is kept in ``model``/``body`` (most messages are decoded into
    one type); ``bodies`` holds any other, by model.
    """

    __slots__ = ("acknowledger", "bodies", "body", "message", "model")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.model: Any = _NO_MODEL
        self.body: Any = None
        self.bodies: dict[Any, Any] | None = None
        self.acknowledger: Acknowledger | None = None


class HandlerContext:
    """One handler's handling of one message, as middleware sees it.

    Attributes:
        message: The raw message.
        params: Named route segments (text, before conversion).
        handler: The handler's registration (``name``, ``func``, ``subscription``,
            ``event_types``).
        attempt: The handler attempt within this delivery (``Retry`` raises it).
        result: The handler's return value, once it returned.
        exception: The exception that ended the last attempt, if any.
        outcome: Set by middleware that decides one (``Filter``, ``DeadLetter``).
        state: Free space for middleware to share values.
        started: ``time.perf_counter()`` when handling started.
    """

    __slots__ = (
        "_acknowledge",
        "_decode",
        "_event",
        "_shared",
        "_state",
        "attempt",
        "dep_cache",
        "exception",
        "handler",
        "outcome",
        "params",
        "result",
        "started",
    )

    def __init__(
        self,
        shared: MessageState,
        handler: HandlerInfo,
        params: Mapping[str, str],
        *,
        decode: Decode,
        acknowledge: Acknowledge,
    ) -> None:
        self._shared = shared
        self.handler = handler
        self.params = params
        self._decode = decode
        self._acknowledge = acknowledge
        self.attempt = 1
        self.result: Any = None
        self.exception: BaseException | None = None
        self.outcome: Outcome | None = None
        self._state: dict[str, Any] | None = None
        self.dep_cache: dict[Any, Any] = {}
        self._event: Event[Any] | None = None
        self.started = time.perf_counter()

    @property
    def state(self) -> dict[str, Any]:
        """Free space for middleware to share values (made on first use)."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._state = value

    @property
    def message(self) -> Message:
        return self._shared.message

    @property
    def route(self) -> str:
        """The concrete route the message came on."""
        return self._shared.message.route

    def body_for(self, model: Any) -> Any:
        """The payload validated into ``model`` (decoded once per message and type).

        Raises:
            PayloadError: When the payload does not decode or validate.
        """
        shared = self._shared
        if shared.model is model:
            return shared.body
        bodies = shared.bodies
        if bodies is not None and model in bodies:
            return bodies[model]
        body = self._decode(shared.message, model)
        if shared.model is _NO_MODEL:
            shared.model, shared.body = model, body
        elif bodies is None:
            shared.bodies = {model: body}
        else:
            bodies[model] = body
        return body

    def event_for(self, model: Any) -> Event[Any]:
        """An :class:`~dispytch.Event` around the payload validated into ``model``."""
        event = self._event
        if event is not None and type(event.body) is model:
            return event
        event = Event(self.body_for(model), self._shared.message, self.params)
        if self._event is None:
            self._event = event
        return event

    @property
    def event(self) -> Event[Any] | None:
        """The handler's event, decoded on first access (``None`` if it takes none)."""
        if self._event is None:
            types = self.handler.event_types
            if not types:
                return None
            self._event = Event(self.body_for(types[0]), self._shared.message, self.params)
        return self._event

    def acknowledger(self) -> Acknowledger:
        """The manual acknowledger of this message (one per message)."""
        shared = self._shared
        if shared.acknowledger is None:
            shared.acknowledger = self._acknowledge(shared.message)
        return shared.acknowledger

    def __repr__(self) -> str:
        return (
            f"HandlerContext(handler={self.handler.name!r}, route={self.route!r}, "
            f"attempt={self.attempt})"
        )


def compose(middlewares: Sequence[Middleware], endpoint: CallNext) -> CallNext:
    """Wrap ``endpoint`` in ``middlewares``; the first is the outermost."""
    call = endpoint
    for mw in reversed(middlewares):
        call = _link(mw, call)
    return call


def _link(mw: Middleware, nxt: CallNext) -> CallNext:
    async def step(ctx: HandlerContext) -> Any:
        return await mw(ctx, nxt)

    return step
