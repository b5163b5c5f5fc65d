"""``Bus``: commands, queries and events in process, through the same routers a
dispatcher runs.

Objects are handed to handlers as they are (nothing is serialised); dependencies and
every middleware level apply as on a dispatcher. A call runs in the caller's task, so
``await bus.ask(query)`` costs a dict lookup and the handler, plus the middleware and
dependencies it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic import BaseModel, TypeAdapter

from dispytch.context import (
    HandlerContext,
    MessageState,
    Middleware,
    MiddlewareLike,
    compose,
)
from dispytch.cqrs.errors import NoHandlerError
from dispytch.cqrs.handlers import RequestInfo, collect_events
from dispytch.cqrs.messages import CommandBase, QueryBase, is_event
from dispytch.dispatch.routing import HandlerEntry
from dispytch.errors import NotStartedError
from dispytch.event import Event, EventBase
from dispytch.message import HEADER_EVENT_TYPE, Message
from dispytch.router import Router, check_unique, resolve_middleware
from dispytch.routes import EventSubscription

log = logging.getLogger("dispytch.cqrs")

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


@dataclass(frozen=True)
class _Request:
    entry: HandlerEntry
    info: RequestInfo
    fast: Callable[[Any], Awaitable[Any]] | None
    #: ``validate_python`` of the reply type, when replies are validated.
    adapter: Callable[[Any], Any] | None = None
    #: ``info.kind`` when ``fast`` is set, else ``None``.
    fast_kind: str | None = None


#: What a reply must be for it to hold events (checked before looking closer).
_EVENTISH = (EventBase, list, tuple)


@dataclass(frozen=True)
class _Listener:
    entry: HandlerEntry
    model: type[Any]
    direct: Callable[[Event[Any]], Awaitable[Any]] | None


def _validator(info: RequestInfo) -> Callable[[Any], Any] | None:
    """Validates a reply into the reply type; an instance of exactly the reply model is
    valid as it is (pydantic would return it unchanged)."""
    if info.adapter is None:
        return None
    validate = info.adapter.validate_python
    model = info.reply
    if isinstance(model, type) and issubclass(model, BaseModel):

        def check(result: Any) -> Any:
            return result if type(result) is model else validate(result)

        return check
    return validate


def _no_acknowledger(message: Message) -> Any:
    raise TypeError(
        "A handler on a Bus asked for an Acknowledger; in process there is no broker "
        "delivery to settle.\nDrop the Acknowledger parameter for handlers you run on a Bus."
    )


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _decode(message: Message, model: Any) -> Any:
    """The object itself when it is of ``model``, else validated into it."""
    obj = message.token
    if isinstance(model, type) and isinstance(obj, model):
        return obj
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    data = obj.model_dump() if isinstance(obj, BaseModel) else obj
    return adapter.validate_python(data)


class Bus:
    """An in-process bus: ``send`` a command, ``ask`` a query, ``publish`` an event.

    Example::

        bus = Bus()
        bus.add_router(users)            # the routers a dispatcher would run
        async with bus:
            user = await bus.send(CreateUser(name="ann"))
            view = await bus.ask(GetUser(id=user.id))

    Commands and queries have exactly one handler each (a second is an error when it is
    registered or when the bus starts); their return value is the reply, validated
    against the return annotation, and their exceptions reach the caller as themselves.
    An event reaches every event handler whose ``Event[T]`` type it is an instance of
    (subclasses included); an event handler's failure is logged and counted, not raised
    to the publisher. Events a command or query handler returns or collects are
    published after it succeeded (in the background, on the same ``key``); never when it
    failed.

    ``key=``: calls with the same key run one after another in call order; other calls
    run concurrently.

    Args:
        middlewares: Outermost middleware level, around every handler.
        validate_replies: Validate replies against the handler's return annotation (off:
            the fast path without it).
        stop_timeout: How long :meth:`stop` waits for calls and background events.
        name: For logs.
    """

    def __init__(
        self,
        *,
        middlewares: Sequence[MiddlewareLike] = (),
        validate_replies: bool = True,
        stop_timeout: float = 30.0,
        name: str = "bus",
    ) -> None:
        self.middlewares: tuple[Middleware, ...] = tuple(resolve_middleware(m) for m in middlewares)
        self.validate_replies = validate_replies
        self.stop_timeout = stop_timeout
        self.name = name
        self.router = Router()
        #: Counters: events_handled, failed_handlers, unhandled_events, events_emitted.
        self.stats: Counter[str] = Counter()
        self._requests: dict[type[Any], _Request] = {}
        self._listeners: list[_Listener] = []
        self._by_event: dict[type[Any], tuple[_Listener, ...]] = {}
        self._routes: dict[type[Any], str] = {}
        self._lanes: dict[Hashable, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active = 0
        self._idle: asyncio.Event | None = None
        self._running = False

    # -- registration -------------------------------------------------------------------
    def _open(self) -> None:
        if self._running:
            raise RuntimeError("Register handlers before the bus starts.")

    def command(self, command: type[Any], **kwargs: Any) -> Callable[[F], F]:
        """Register the one handler of ``command`` (see :meth:`Router.command`)."""
        self._open()
        return self.router.command(command, **kwargs)

    def query(self, query: type[Any], **kwargs: Any) -> Callable[[F], F]:
        """Register the one handler of ``query`` (see :meth:`Router.query`)."""
        self._open()
        return self.router.query(query, **kwargs)

    def handler(
        self, subscription: EventSubscription | None = None, **kwargs: Any
    ) -> Callable[[F], F]:
        """Register an event handler (see :meth:`Router.handler`)."""
        self._open()
        return self.router.handler(subscription, **kwargs)

    def add_router(self, router: Router) -> None:
        """Add a router's handlers (and those of routers nested in it)."""
        self._open()
        self.router.include_router(router)

    include_router = add_router

    # -- lifecycle ----------------------------------------------------------------------
    def _build(self) -> None:
        handlers = self.router.walk()
        check_unique(handlers)
        requests: dict[type[Any], _Request] = {}
        listeners: list[_Listener] = []
        for spec, router_mws in handlers:
            stack = (*self.middlewares, *router_mws, *spec.middlewares)
            plan = spec.plan
            entry = HandlerEntry(spec, compose(stack, plan.call))
            plain = not stack
            if spec.request is not None:
                fast = plan.body_direct if plain else None
                info = spec.request
                adapter = _validator(info) if self.validate_replies else None
                requests[info.message_type] = _Request(
                    entry, info, fast, adapter, info.kind if fast is not None else None
                )
                continue
            model = plan.event_types[0] if plan.event_types else None
            if not isinstance(model, type):
                log.info(
                    "Bus %r: event handler %r takes no Event[Model] of a class; a bus "
                    "matches events by class, so it receives nothing here.",
                    self.name,
                    spec.name,
                )
                continue
            direct = plan.direct if plain and not spec.subscription.filters_messages else None
            listeners.append(_Listener(entry, model, direct))
        self._requests = requests
        self._listeners = listeners
        self._by_event = {}

    async def start(self) -> None:
        """Freeze the handlers and accept calls.

        Raises:
            HandlerRegistrationError: Two handlers for one command or query type.
        """
        if self._running:
            return
        self._build()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = True

    async def stop(self, timeout: float | None = None) -> None:
        """Refuse new calls, wait for running ones and background events (up to
        ``timeout``, default ``stop_timeout``), then cancel what is left."""
        if not self._running:
            return
        self._running = False
        limit = self.stop_timeout if timeout is None else timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self.join()
                if self._active and self._idle is not None:
                    self._idle.clear()  # set by the last call to finish
                    await self._idle.wait()
                await self.join()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def join(self) -> None:
        """Wait until every event published in the background (by command and query
        handlers) has been handled."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._running

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- calls --------------------------------------------------------------------------
    @overload
    async def send(self, command: CommandBase[R], *, key: Hashable | None = None) -> R: ...
    @overload
    async def send(self, command: Any, *, key: Hashable | None = None) -> Any: ...
    async def send(self, command: Any, *, key: Hashable | None = None) -> Any:
        """Run ``command``'s handler and return its reply.

        Raises:
            NoHandlerError: No handler for its type on this bus.
            NotStartedError: The bus is not started.
            Exception: Whatever the handler raised, as itself.
        """
        route = self._requests.get(type(command))
        if route is None or route.fast_kind != "command" or key is not None or not self._running:
            return await self._call(command, "command", key)
        # The fast path (kept inline, as in ask): an async handler taking only the message.
        self._active += 1
        try:
            result = await route.fast(command)  # type: ignore[misc]
        finally:
            self._active -= 1
            if not self._running:
                self._check_idle()
        if route.adapter is not None:
            result = route.adapter(result)
        if isinstance(result, _EVENTISH):
            self._emit_from(result, None, None)
        return result

    @overload
    async def ask(self, query: QueryBase[R], *, key: Hashable | None = None) -> R: ...
    @overload
    async def ask(self, query: Any, *, key: Hashable | None = None) -> Any: ...
    async def ask(self, query: Any, *, key: Hashable | None = None) -> Any:
        """Run ``query``'s handler and return its reply (see :meth:`send`)."""
        route = self._requests.get(type(query))
        if route is None or route.fast_kind != "query" or key is not None or not self._running:
            return await self._call(query, "query", key)
        self._active += 1
        try:
            result = await route.fast(query)  # type: ignore[misc]
        finally:
            self._active -= 1
            if not self._running:
                self._check_idle()
        if route.adapter is not None:
            result = route.adapter(result)
        if isinstance(result, _EVENTISH):
            self._emit_from(result, None, None)
        return result

    def _check_idle(self) -> None:
        if not self._active and self._idle is not None:
            self._idle.set()

    def _emit_from(self, result: Any, ctx: HandlerContext | None, key: Hashable | None) -> None:
        """Publish, in the background, the events a handler returned or collected."""
        events = collect_events(result, ctx)
        if events:
            self.stats["events_emitted"] += len(events)
            for event in events:
                self._background(event, key)

    async def _call(self, message: Any, kind: str, key: Hashable | None) -> Any:
        if not self._running:
            raise NotStartedError(
                "The bus is not started. Call `await bus.start()` or use `async with bus:`."
            )
        route = self._requests.get(type(message))
        if route is None or route.info.kind != kind:
            raise NoHandlerError(
                f"No {kind} handler for {type(message).__name__} on bus {self.name!r}.\n"
                f"Register one with @router.{kind}({type(message).__name__}) and add the "
                "router before start()."
            )
        if key is None:
            return await self._run(route, message, None)
        return await self._in_lane(key, lambda: self._run(route, message, key))

    async def _run(self, route: _Request, message: Any, key: Hashable | None) -> Any:
        self._active += 1
        try:
            fast = route.fast
            ctx: HandlerContext | None = None
            if fast is not None:
                result = await fast(message)
            else:
                ctx = self._context(route.entry, message)
                result = await route.entry.chain(ctx)
            if route.adapter is not None:
                result = route.adapter(result)
            self._emit_from(result, ctx, key)
            return result
        finally:
            self._active -= 1
            if not self._running:
                self._check_idle()

    def _message(self, obj: Any) -> Message:
        cls = type(obj)
        route = self._routes.get(cls)
        if route is None:
            route = cls.__name__
            with contextlib.suppress(TypeError, AttributeError):
                topic = getattr(cls.event_route(), "topic", None)
                if isinstance(topic, str):
                    route = topic
            self._routes[cls] = route
        etype = cls.event_type() if isinstance(obj, EventBase) else cls.__name__
        return Message(b"", route=route, headers={HEADER_EVENT_TYPE: etype}, token=obj)

    def _context(self, entry: HandlerEntry, obj: Any) -> HandlerContext:
        return HandlerContext(
            MessageState(self._message(obj)),
            entry,
            {},
            decode=_decode,
            acknowledge=_no_acknowledger,
        )

    async def publish(self, event: EventBase, *, key: Hashable | None = None) -> None:
        """Hand ``event`` to every event handler of its class and wait for them.

        A handler's failure is logged at ERROR and counted (``stats["failed_handlers"]``),
        never raised here: the other handlers run regardless.

        Raises:
            NotStartedError: The bus is not started.
            TypeError: ``event`` is a command or query (use :meth:`send` / :meth:`ask`).
        """
        if not self._running:
            raise NotStartedError(
                "The bus is not started. Call `await bus.start()` or use `async with bus:`."
            )
        if not is_event(event):
            raise TypeError(
                f"publish() takes events; {type(event).__name__} is a command or query "
                "(use send() or ask()), or not an EventBase."
            )
        if key is None:
            await self._deliver(event)
        else:
            await self._in_lane(key, lambda: self._deliver(event))

    def _listeners_of(self, cls: type[Any]) -> tuple[_Listener, ...]:
        found = self._by_event.get(cls)
        if found is None:
            etype = cls.event_type() if issubclass(cls, EventBase) else cls.__name__
            found = tuple(
                lst
                for lst in self._listeners
                if issubclass(cls, lst.model) and (lst.entry.spec.event_type in (None, etype))
            )
            self._by_event[cls] = found
        return found

    async def _deliver(self, event: EventBase) -> None:
        listeners = self._listeners_of(type(event))
        if not listeners:
            self.stats["unhandled_events"] += 1
            return
        if len(listeners) == 1:
            await self._run_listener(listeners[0], event)
        else:
            await asyncio.gather(*(self._run_listener(lst, event) for lst in listeners))

    async def _run_listener(self, listener: _Listener, event: EventBase) -> None:
        self._active += 1
        try:
            if listener.direct is not None:
                await listener.direct(Event(event, self._message(event)))
            else:
                await listener.entry.chain(self._context(listener.entry, event))
            self.stats["events_handled"] += 1
        except Exception:
            self.stats["failed_handlers"] += 1
            log.exception(
                "Bus %r: event handler %r failed on %s",
                self.name,
                listener.entry.spec.name,
                type(event).__name__,
            )
        finally:
            self._active -= 1
            if not self._active and not self._running and self._idle is not None:
                self._idle.set()

    def _background(self, event: EventBase, key: Hashable | None) -> None:
        """Publish an event a handler produced, without the caller waiting for it; on
        ``key``, it takes its turn right after the handler that produced it."""
        if key is None:
            task = asyncio.get_running_loop().create_task(self._deliver(event))
        else:
            prev, done = self._enter(key)
            task = asyncio.get_running_loop().create_task(
                self._after(prev, key, done, lambda: self._deliver(event))
            )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- per-key lanes --------------------------------------------------------------------
    def _enter(self, key: Hashable) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        prev = self._lanes.get(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lanes[key] = done
        return prev, done

    def _leave(self, key: Hashable, done: asyncio.Future[None]) -> None:
        if not done.done():
            done.set_result(None)
        if self._lanes.get(key) is done:
            del self._lanes[key]  # the lane is empty: nothing is kept per key

    async def _in_lane(self, key: Hashable, run: Callable[[], Awaitable[Any]]) -> Any:
        prev, done = self._enter(key)
        return await self._after(prev, key, done, run)

    async def _after(
        self,
        prev: asyncio.Future[None] | None,
        key: Hashable,
        done: asyncio.Future[None],
        run: Callable[[], Awaitable[Any]],
    ) -> Any:
        handed_over = False
        try:
            if prev is not None and not prev.done():
                try:
                    await asyncio.shield(prev)
                except asyncio.CancelledError:
                    # Our turn passes to the next one only once the previous call is done.
                    prev.add_done_callback(lambda _: self._leave(key, done))
                    handed_over = True
                    raise
            return await run()
        finally:
            if not handed_over:
                self._leave(key, done)
