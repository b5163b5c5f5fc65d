"""``Router`` (also known by its older name ``HandlerGroup``): handlers grouped by concern,
with shared middlewares, nestable.

Registration happens here, so this is also where a middleware named in a stack
(``"retry"``, ``("retry", {"attempts": 5})``) is looked up in the plugin registry: the
middleware contract below knows nothing of plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from dispytch.context import Middleware, MiddlewareLike
from dispytch.cqrs.handlers import RequestInfo, adapt_handler
from dispytch.cqrs.messages import message_kind
from dispytch.di import HandlerPlan
from dispytch.errors import HandlerRegistrationError, PluginError
from dispytch.event import declared_event_type
from dispytch.plugins import middleware_factory
from dispytch.routes import EventSubscription, TopicSubscription

F = TypeVar("F", bound=Callable[..., Any])


def resolve_middleware(item: MiddlewareLike) -> Middleware:
    """Turn ``"retry"`` / ``("retry", {"attempts": 5})`` / a callable into a middleware.

    Raises:
        PluginError: No plugin provides the name (with the closest known one), or the
            tuple is not ``(name, options)``.
        TypeError: ``item`` is not callable.
    """
    if isinstance(item, str):
        return middleware_factory(item)()
    if isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[0], str) or not isinstance(item[1], Mapping):
            raise PluginError(f'Cannot use {item!r} as a middleware: write ("name", {{options}}).')
        return middleware_factory(item[0])(**item[1])
    if not callable(item):
        raise TypeError(f"{item!r} is not a middleware: pass an async (ctx, call_next) callable.")
    return item  # type: ignore[return-value]


@dataclass(frozen=True)
class HandlerSpec:
    """A handler as registered: what it consumes, its own middlewares, its plan."""

    func: Callable[..., Any]
    name: str
    subscription: EventSubscription
    event_type: str | None
    middlewares: tuple[Middleware, ...]
    plan: HandlerPlan
    #: Commands and queries: the registered class and the reply plan (``None``: an event
    #: handler).
    request: RequestInfo | None = None


class Router:
    """A group of handlers sharing middlewares.

    Example::

        orders = Router(middlewares=[Retry(attempts=3)])

        @orders.handler(KafkaEventSubscription(topic="orders.{region}"))
        async def on_order(event: Event[Order], region: str): ...

        dispatcher.add_router(orders)

    Args:
        middlewares: Run around every handler of this router (and of routers included
            in it), inside the dispatcher's and outside each handler's own.
    """

    def __init__(self, *, middlewares: Sequence[MiddlewareLike] = ()) -> None:
        self.middlewares: tuple[Middleware, ...] = tuple(resolve_middleware(m) for m in middlewares)
        self.handlers: list[HandlerSpec] = []
        self.routers: list[Router] = []

    def handler(
        self,
        subscription: EventSubscription | None = None,
        *,
        topic: str | None = None,
        event: str | None = None,
        middlewares: Sequence[MiddlewareLike] = (),
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated async (or sync) function as a handler.

        Args:
            subscription: What to consume (a transport's subscription, or
                ``TopicSubscription``).
            topic: The older form: a topic name or pattern (a ``TopicSubscription``).
            event: Only events of this type (the ``dispytch-event-type`` header). By
                default, the ``__event_type__`` of the handler's ``Event[T]`` if it has one.
            middlewares: The handler's own middlewares (innermost level).
            name: For logs; defaults to the function's qualified name.

        Raises:
            HandlerRegistrationError: When a parameter cannot be filled or dependencies
                form a cycle (names the handler and the parameter).
        """
        if subscription is None and topic is None:
            raise HandlerRegistrationError(
                "handler() needs a subscription, e.g. handler(KafkaEventSubscription("
                "topic='orders')), or the older handler(topic='orders')."
            )
        if subscription is not None and topic is not None:
            raise HandlerRegistrationError("Give handler() a subscription or topic=, not both.")
        sub = subscription if subscription is not None else TopicSubscription(topic=topic or "")
        if not isinstance(sub, EventSubscription):
            raise HandlerRegistrationError(
                f"{sub!r} is not a subscription; pass e.g. TopicSubscription(topic=...)."
            )
        try:
            route_names = sub.compiled.names
        except ValueError as exc:
            raise HandlerRegistrationError(str(exc)) from exc
        mws = tuple(resolve_middleware(m) for m in middlewares)

        def register(func: F) -> F:
            hname = name or str(getattr(func, "__qualname__", None) or repr(func))
            plan = HandlerPlan(func, handler_name=hname, route_names=route_names)
            etype = event
            if etype is None and plan.event_types:
                etype = declared_event_type(plan.event_types[0])
            self.handlers.append(HandlerSpec(func, hname, sub, etype, mws, plan))
            return func

        return register

    def command(
        self,
        command: type[Any],
        *,
        subscription: EventSubscription | None = None,
        middlewares: Sequence[MiddlewareLike] = (),
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function or class as the one handler of ``command``.

        The handler takes the command itself (``cmd: CreateUser``) or ``Command[T]``, plus
        any dependency; its return value is the reply (validated against its return
        annotation). A class is instantiated per command, its constructor's parameters
        filled as dependencies, and its ``handle`` (or ``__call__``) called.

        Args:
            command: A :class:`~dispytch.cqrs.CommandBase` subclass.
            subscription: What a dispatcher consumes for it; by default the topic of the
                class's ``__route__`` / ``__topic__``.
            middlewares: The handler's own middlewares (innermost level).
            name: For logs; defaults to the handler's qualified name.

        Raises:
            HandlerRegistrationError: ``command`` is not a command class, it already has
                a handler in this router tree (both are named), or a parameter cannot
                be filled.
        """
        return self._request("command", command, subscription, middlewares, name)

    def query(
        self,
        query: type[Any],
        *,
        subscription: EventSubscription | None = None,
        middlewares: Sequence[MiddlewareLike] = (),
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function or class as the one handler of ``query``
        (a :class:`~dispytch.cqrs.QueryBase` subclass); see :meth:`command`."""
        return self._request("query", query, subscription, middlewares, name)

    def _request(
        self,
        kind: str,
        message_type: type[Any],
        subscription: EventSubscription | None,
        middlewares: Sequence[MiddlewareLike],
        name: str | None,
    ) -> Callable[[F], F]:
        if message_kind(message_type) != kind:
            base = "CommandBase" if kind == "command" else "QueryBase"
            raise HandlerRegistrationError(
                f"{kind}() takes a {base} subclass, not {message_type!r}.\n"
                f"Declare it as class {getattr(message_type, '__name__', 'X')}({base}[Reply])."
            )
        local = False
        if subscription is None:
            subscription, local = _default_subscription(message_type)
        try:
            route_names = subscription.compiled.names
        except ValueError as exc:
            raise HandlerRegistrationError(str(exc)) from exc
        mws = tuple(resolve_middleware(m) for m in middlewares)

        def register(target: F) -> F:
            hname = name or str(getattr(target, "__qualname__", None) or repr(target))
            self._check_unique(message_type, hname)
            func, returns = adapt_handler(target, hname)
            plan = HandlerPlan(
                func, handler_name=hname, route_names=route_names, body_type=message_type
            )
            info = RequestInfo.build(kind, message_type, returns, local=local)
            etype = message_type.event_type()
            self.handlers.append(HandlerSpec(target, hname, subscription, etype, mws, plan, info))
            return target

        return register

    def _check_unique(self, message_type: type[Any], new: str) -> None:
        for spec, _ in self.walk():
            if spec.request is not None and spec.request.message_type is message_type:
                raise HandlerRegistrationError(duplicate_message(spec.request, spec.name, new))

    def include_router(self, router: Router) -> None:
        """Nest ``router``: its handlers run inside this router's middlewares too.

        Raises:
            ValueError: When ``router`` is this router or already contains it (a cycle
                would make the handler tree endless).
        """
        if router is self:
            raise ValueError("A router cannot include itself.")
        if router._contains(self):
            raise ValueError(
                "Including this router would form a cycle: it is already nested inside "
                "the router being included. Nest routers as a tree."
            )
        check_unique([*self.walk(), *router.walk()])
        self.routers.append(router)

    def _contains(self, other: Router) -> bool:
        return any(child is other or child._contains(other) for child in self.routers)

    add_router = include_router

    def walk(
        self, outer: tuple[Middleware, ...] = ()
    ) -> list[tuple[HandlerSpec, tuple[Middleware, ...]]]:
        """Every handler with the router middlewares around it, outermost first."""
        mws = outer + self.middlewares
        out = [(spec, mws) for spec in self.handlers]
        for child in self.routers:
            out.extend(child.walk(mws))
        return out


class HandlerGroup(Router):
    """The older name of :class:`Router`; the same thing."""


def duplicate_message(info: RequestInfo, first: str, second: str) -> str:
    """The error for a second handler of one command or query type."""
    return (
        f"{info.message_type.__name__} already has a {info.kind} handler, {first!r}; "
        f"{second!r} would be a second one.\nA {info.kind} has exactly one handler: remove "
        "one, or give the other its own class."
    )


def check_unique(handlers: Sequence[tuple[HandlerSpec, tuple[Middleware, ...]]]) -> None:
    """Raise when two handlers take the same command or query type.

    Raises:
        HandlerRegistrationError: Naming both handlers.
    """
    seen: dict[type[Any], HandlerSpec] = {}
    for spec, _ in handlers:
        info = spec.request
        if info is None:
            continue
        first = seen.get(info.message_type)
        if first is not None and first is not spec:
            raise HandlerRegistrationError(duplicate_message(info, first.name, spec.name))
        seen[info.message_type] = spec


def _default_subscription(message_type: type[Any]) -> tuple[EventSubscription, bool]:
    """The topic of the class's route, or (for a class a transport cannot route) a
    placeholder only a ``Bus`` serves."""
    try:
        route = message_type.event_route()
    except TypeError:
        route = None
    topic = getattr(route, "topic", None)
    if isinstance(topic, str) and topic:
        return TopicSubscription(topic=topic), False
    return TopicSubscription(topic=f"dispytch.local.{message_type.__name__}"), True
