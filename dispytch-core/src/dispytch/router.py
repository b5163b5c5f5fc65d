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
