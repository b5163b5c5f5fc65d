"""The middleware contract: an async callable around the next step (an onion).

A middleware is any ``async def mw(ctx: HandlerContext, call_next) -> Any`` (or an object
with such an ``__call__``). It may act before and after ``await call_next(ctx)``, call it
again (retry), not at all (filter), or under a deadline (timeout).

Levels, outermost first: the dispatcher's middlewares, then each router's from the
outermost router inwards, then the handler's own. Within one list the first is the
outermost. The innermost step decodes the event, makes the dependencies and calls the
handler.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dispytch.errors import PluginError
from dispytch.event import Event
from dispytch.transport import Acknowledger, Message

if TYPE_CHECKING:
    from dispytch.dispatcher import EventDispatcher, HandlerEntry

CallNext = Callable[["HandlerContext"], Awaitable[Any]]


class Middleware(Protocol):
    """``async (ctx, call_next) -> result``."""

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any: ...


MiddlewareLike = Middleware | Callable[..., Awaitable[Any]] | str | tuple[str, Mapping[str, Any]]


class Outcome(enum.StrEnum):
    """How the handling of a message ended.

    ``handled``: every handler finished. ``filtered``: a filter skipped it.
    ``dead_lettered``: it failed for good and was published to a dead-letter route.
    ``rejected``: it failed for good with nowhere to go (logged at ERROR, then rejected or
    acknowledged as the transport documents). ``requeued``: handed back for redelivery.
    """

    HANDLED = "handled"
    FILTERED = "filtered"
    DEAD_LETTERED = "dead_lettered"
    REJECTED = "rejected"
    REQUEUED = "requeued"


class MessageState:
    """What all handlers of one message share: decoded bodies, the acknowledger."""

    __slots__ = ("acknowledger", "bodies", "message")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.bodies: dict[Any, Any] | None = None
        self.acknowledger: Acknowledger | None = None


class HandlerContext:
    """One handler's handling of one message, as middleware sees it.

    Attributes:
        message: The raw message.
        params: Named route segments (text, before conversion).
        handler: The handler's registration (``name``, ``func``, ``subscription``).
        dispatcher: The dispatcher running it.
        attempt: The handler attempt within this delivery (``Retry`` raises it).
        result: The handler's return value, once it returned.
        exception: The exception that ended the last attempt, if any.
        outcome: Set by middleware that decides one (``Filter``, ``DeadLetter``).
        state: Free space for middleware to share values.
        started: ``time.perf_counter()`` when handling started.
    """

    __slots__ = (
        "_event",
        "_shared",
        "attempt",
        "dep_cache",
        "dispatcher",
        "exception",
        "handler",
        "outcome",
        "params",
        "result",
        "started",
        "state",
    )

    def __init__(
        self,
        shared: MessageState,
        handler: HandlerEntry,
        params: Mapping[str, str],
        dispatcher: EventDispatcher,
    ) -> None:
        self._shared = shared
        self.handler = handler
        self.params = params
        self.dispatcher = dispatcher
        self.attempt = 1
        self.result: Any = None
        self.exception: BaseException | None = None
        self.outcome: Outcome | None = None
        self.state: dict[str, Any] = {}
        self.dep_cache: dict[Any, Any] = {}
        self._event: Event[Any] | None = None
        self.started = time.perf_counter()

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
        bodies = shared.bodies
        if bodies is None:
            bodies = shared.bodies = {}
        elif model in bodies:
            return bodies[model]
        body = bodies[model] = self.dispatcher.decode(shared.message, model)
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
            types = self.handler.plan.event_types
            if not types:
                return None
            self._event = Event(self.body_for(types[0]), self._shared.message, self.params)
        return self._event

    def acknowledger(self) -> Acknowledger:
        """The manual acknowledger of this message (one per message)."""
        shared = self._shared
        if shared.acknowledger is None:
            shared.acknowledger = self.dispatcher.acknowledger_for(shared.message)
        return shared.acknowledger

    def __repr__(self) -> str:
        return (
            f"HandlerContext(handler={self.handler.name!r}, route={self.route!r}, "
            f"attempt={self.attempt})"
        )


def resolve_middleware(item: MiddlewareLike) -> Middleware:
    """Turn ``"retry"`` / ``("retry", {"attempts": 5})`` / a callable into a middleware."""
    from dispytch.plugins import middleware_factory

    if isinstance(item, str):
        return middleware_factory(item)()
    if isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[0], str) or not isinstance(item[1], Mapping):
            raise PluginError(f'Cannot use {item!r} as a middleware: write ("name", {{options}}).')
        return middleware_factory(item[0])(**item[1])
    if not callable(item):
        raise TypeError(f"{item!r} is not a middleware: pass an async (ctx, call_next) callable.")
    return item  # type: ignore[return-value]


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
