"""The route table: which handlers take a message, by its route.

Built once when the dispatcher starts, from the router tree: static routes in a dict,
patterns (``"orders.{region}"``, wildcards) tried in registration order, and the answer
per concrete route cached (up to ``cache_limit`` routes, then the cache starts over, so
dynamic routes cannot grow it without bound).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dispytch.context import CallNext, Middleware, compose
from dispytch.event import Event
from dispytch.patterns import RoutePattern
from dispytch.router import HandlerSpec
from dispytch.routes import EventSubscription

ROUTE_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class HandlerEntry:
    """A handler as the dispatcher runs it: its spec plus the composed middleware chain.

    It is the :class:`~dispytch.context.HandlerInfo` middleware sees as ``ctx.handler``.
    ``direct`` is the handler itself when it takes only its ``Event[T]`` (``model``), no
    middleware wraps it and its subscription does not filter messages: alone on a route,
    the dispatcher calls it with the event it decoded, without a
    :class:`~dispytch.HandlerContext` or a plan walk.
    """

    spec: HandlerSpec
    chain: CallNext
    direct: Callable[[Event[Any]], Awaitable[Any]] | None = None
    model: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def func(self) -> Callable[..., Any]:
        return self.spec.func

    @property
    def subscription(self) -> EventSubscription:
        return self.spec.subscription

    @property
    def event_types(self) -> Sequence[Any]:
        return self.spec.plan.event_types

    @property
    def event_type(self) -> str | None:
        return self.spec.event_type


Match = tuple[tuple[HandlerEntry, dict[str, str]], ...]


class RouteTable:
    """Handlers by route: :meth:`match` a concrete route to the handlers taking it.

    Args:
        handlers: ``(spec, router middlewares)`` pairs, as ``Router.walk()`` gives them.
        middlewares: The dispatcher's own, outermost level.
        cache_limit: Concrete routes whose answer is kept.
        around: Wraps the chain of each command and query handler (the dispatcher's
            request/reply responder), outside every middleware level.
    """

    def __init__(
        self,
        handlers: Iterable[tuple[HandlerSpec, tuple[Middleware, ...]]] = (),
        middlewares: Sequence[Middleware] = (),
        *,
        cache_limit: int = ROUTE_CACHE_LIMIT,
        around: Callable[[HandlerSpec, CallNext], CallNext] | None = None,
    ) -> None:
        self.entries: list[HandlerEntry] = []
        self._static: dict[str, list[HandlerEntry]] = {}
        dynamic: dict[RoutePattern, list[HandlerEntry]] = {}
        self._cache: dict[str, Match] = {}
        self._cache_limit = max(1, cache_limit)
        for spec, router_mws in handlers:
            stack = (*middlewares, *router_mws, *spec.middlewares)
            plan = spec.plan
            chain = compose(stack, plan.call)
            if spec.request is not None and around is not None:
                chain = around(spec, chain)  # commands and queries: the reply, outermost
            plain = not stack and not spec.subscription.filters_messages and spec.request is None
            direct = plan.direct if plain else None
            entry = HandlerEntry(spec, chain, direct, plan.event_types[0] if direct else None)
            self.entries.append(entry)
            pattern = spec.subscription.compiled
            if pattern.is_static:
                self._static.setdefault(pattern.pattern, []).append(entry)
            else:
                dynamic.setdefault(pattern, []).append(entry)
        self._dynamic = list(dynamic.items())

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, route: str) -> Match:
        """Every handler taking ``route``, with the named segments its pattern captured."""
        found = self._cache.get(route)
        if found is not None:
            return found
        out: list[tuple[HandlerEntry, dict[str, str]]] = [
            (entry, {}) for entry in self._static.get(route, ())
        ]
        for pattern, entries in self._dynamic:
            params = pattern.match(route)
            if params is not None:
                out.extend((entry, params) for entry in entries)
        result = tuple(out)
        if len(self._cache) >= self._cache_limit:
            self._cache.clear()
        self._cache[route] = result
        return result
