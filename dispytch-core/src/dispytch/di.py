"""Dependency injection, FastAPI style, compiled once per handler.

A handler parameter is filled from, in this order of precedence:

- ``Event[T]`` annotation: the message payload validated into ``T``;
- ``Annotated[X, Dependency(func)]`` or a ``Dependency(func)`` default: ``func``'s result,
  where ``func`` may itself take any of these parameters (nested dependencies);
- a name captured by the subscription's route pattern (``"user.{user_id}.created"``),
  validated by the parameter's annotation;
- ``Message``, ``Acknowledger`` or ``HandlerContext`` annotations: the raw message, the
  manual acknowledger, the middleware context.
- for command and query handlers: the registered class itself (``cmd: CreateUser``), or
  ``Command[T]`` / ``Query[T]`` (any ``Event`` subclass) around the validated body;
- a class with a ``__dispytch_inject__(ctx)`` classmethod (``EventCollector``): its value
  for this handling.

Everything is worked out at registration: a cycle or a parameter nothing can fill raises
:class:`~dispytch.errors.HandlerRegistrationError` naming the handler and the parameter.
Per message only values are made. Generator dependencies are torn down after the handler,
also when it fails. Sync callables run in a worker thread so they never block the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin, get_type_hints

from pydantic import TypeAdapter, ValidationError

from dispytch.context import HandlerContext
from dispytch.errors import HandlerRegistrationError, RouteParamError
from dispytch.event import Event
from dispytch.message import Message
from dispytch.transport import Acknowledger


class DependencyMarker:
    """Declare a dependency: ``Annotated[Service, Dependency(get_service)]``.

    Args:
        func: A sync or async function, or a sync or async generator function (code after
            ``yield`` runs after the handler, also when it failed).
        use_cache: Reuse one value per event when several parameters depend on ``func``.
    """

    __slots__ = ("func", "use_cache")

    def __init__(self, func: Callable[..., Any], *, use_cache: bool = True) -> None:
        if not callable(func):
            raise TypeError(f"Dependency needs a callable, got {func!r}.")
        self.func = func
        self.use_cache = use_cache

    def __repr__(self) -> str:
        return f"Dependency({getattr(self.func, '__qualname__', self.func)!r})"


if TYPE_CHECKING:
    # For type checkers ``Dependency(...)`` is ``Any``, like FastAPI's ``Depends``, so that
    # ``svc: Service = Dependency(get_service)`` type-checks as a default value.
    def Dependency(func: Callable[..., Any], *, use_cache: bool = True) -> Any:
        """Declare a dependency (see :class:`DependencyMarker`)."""

else:
    Dependency = DependencyMarker


# Parameter sources
_EVENT, _DEP, _PARAM, _MESSAGE, _ACK, _CONTEXT, _BODY, _ENVELOPE, _INJECT = range(9)

# Callable kinds
_ASYNC, _SYNC, _GEN, _ASYNCGEN = range(4)


def _kind(func: Callable[..., Any]) -> int:
    target = func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        call = getattr(target, "__call__", None)  # noqa: B004 - callable objects
        if call is not None and not inspect.isclass(target):
            target = call
    if inspect.isasyncgenfunction(target):
        return _ASYNCGEN
    if inspect.isgeneratorfunction(target):
        return _GEN
    if inspect.iscoroutinefunction(target):
        return _ASYNC
    return _SYNC


class _Node:
    """One callable in the plan: the handler or a dependency."""

    __slots__ = ("bare_async", "func", "kind", "params", "positional", "use_cache")

    def __init__(self, func: Callable[..., Any], use_cache: bool) -> None:
        self.func = func
        self.kind = _kind(func)
        self.use_cache = use_cache
        self.params: list[tuple[str, int, Any]] = []
        self.bare_async = False  # an async callable without parameters: called directly
        self.positional = True  # every filled parameter may be passed by position, in order


def event_type_of(annotation: Any) -> Any:
    """``T`` for an ``Event[T]`` annotation, else ``None``."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if annotation is Event:
        raise HandlerRegistrationError(
            "A parameter is annotated `Event` without a body type; write `Event[MyModel]`."
        )
    if get_origin(annotation) is Event:
        return get_args(annotation)[0]
    return None


class HandlerPlan:
    """The compiled dependency plan of one handler.

    Attributes:
        event_types: Every ``T`` that appears as ``Event[T]`` in the handler or its
            dependencies (the first is the handler's own, used for event-type dispatch).
        route_params: Names taken from the route pattern.
        needs_teardown: Whether any generator dependency is involved.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        handler_name: str,
        route_names: tuple[str, ...] = (),
        body_type: Any = None,
    ) -> None:
        self.handler_name = handler_name
        self._route_names = route_names
        #: Commands and queries: a parameter annotated with this type gets the body.
        self._body_type = body_type
        self.event_types: list[Any] = []
        self.route_params: set[str] = set()
        self.needs_teardown = False
        self.uses_ack = False
        self.root = self._compile(func, use_cache=False, stack=())
        #: ``handler(event)`` for a handler whose only parameter is its ``Event[T]``
        #: (``event_types[0]``), else ``None``: then :meth:`call` makes the arguments.
        self.direct = self._direct()

    # -- compile --------------------------------------------------------------------
    def _compile(
        self, func: Callable[..., Any], *, use_cache: bool, stack: tuple[Any, ...]
    ) -> _Node:
        if func in stack:
            chain = " -> ".join(_name(f) for f in (*stack, func))
            raise HandlerRegistrationError(
                f"Handler {self.handler_name!r}: dependency cycle {chain}. "
                "Break the cycle: a dependency cannot need itself."
            )
        node = _Node(func, use_cache)
        if node.kind in (_GEN, _ASYNCGEN):
            self.needs_teardown = True
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise HandlerRegistrationError(
                f"Handler {self.handler_name!r}: cannot inspect {_name(func)}: {exc}"
            ) from exc
        try:
            target = _annotated_callable(func)
            hints = (
                get_type_hints(target, include_extras=True)
                if hasattr(target, "__annotations__")
                else {}
            )
        except Exception as exc:
            raise HandlerRegistrationError(
                f"Handler {self.handler_name!r}: cannot resolve the annotations of "
                f"{_name(func)} ({exc}). Import the types it names at module level."
            ) from exc
        for pname, param in sig.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if param.kind is param.POSITIONAL_ONLY and param.default is param.empty:
                # Values are passed by name; a positional-only parameter would fail on
                # every message instead of here.
                raise HandlerRegistrationError(
                    f"Handler {self.handler_name!r}: parameter {pname!r} of {_name(func)} is "
                    "positional-only; Dispytch passes values by name. Remove the '/'."
                )
            if param.kind is param.KEYWORD_ONLY:
                node.positional = False
            annotation = hints.get(pname, param.annotation)
            node.params.append(self._source(func, pname, param, annotation, (*stack, func)))
        node.bare_async = node.kind == _ASYNC and not node.params
        return node

    def _direct(self) -> Callable[[Event[Any]], Awaitable[Any]] | None:
        """The handler itself, called with the event, when that is all it takes.

        Most handlers are ``async def h(event: Event[T])``: no dependencies, nothing to
        tear down. For them the dispatcher skips the plan walk and calls the handler with
        the event it decoded (see :attr:`direct`).
        """
        root = self.root
        if root.kind != _ASYNC or self.needs_teardown or len(root.params) != 1:
            return None
        pname, source, _ = root.params[0]
        if source != _EVENT:
            return None
        func = root.func
        if root.positional:
            return func
        return lambda event: func(**{pname: event})

    @property
    def body_direct(self) -> Callable[[Any], Awaitable[Any]] | None:
        """The handler itself, called with the body, when an async handler takes only the
        body of its command or query (the in-process bus's fast path), else ``None``."""
        root = self.root
        if root.kind != _ASYNC or self.needs_teardown or len(root.params) != 1:
            return None
        pname, source, _ = root.params[0]
        if source != _BODY:
            return None
        func = root.func
        if root.positional:
            return func
        return lambda body: func(**{pname: body})

    def _source(
        self,
        func: Callable[..., Any],
        pname: str,
        param: inspect.Parameter,
        annotation: Any,
        stack: tuple[Any, ...],
    ) -> tuple[str, int, Any]:
        dep: DependencyMarker | None = None
        base = annotation
        if get_origin(annotation) is Annotated:
            base, *extras = get_args(annotation)
            for extra in extras:
                if isinstance(extra, DependencyMarker):
                    dep = extra
        if isinstance(param.default, DependencyMarker):
            dep = param.default
        if dep is not None:
            return (pname, _DEP, self._compile(dep.func, use_cache=dep.use_cache, stack=stack))
        if self._body_type is not None and base is self._body_type:
            if base not in self.event_types:
                self.event_types.insert(0, base)
            return (pname, _BODY, base)
        envelope = get_origin(base)
        if isinstance(envelope, type) and envelope is not Event and issubclass(envelope, Event):
            # Command[T] / Query[T]: an Event subclass around the same validated body.
            model = get_args(base)[0]
            if model not in self.event_types:
                self.event_types.append(model)
            return (pname, _ENVELOPE, (envelope, model))
        if isinstance(base, type) and hasattr(base, "__dispytch_inject__"):
            # A type that makes its own value from the context (EventCollector).
            return (pname, _INJECT, base)
        body_type = event_type_of(base)
        if body_type is not None:
            if body_type not in self.event_types:
                self.event_types.append(body_type)
            return (pname, _EVENT, body_type)
        if pname in self._route_names:
            self.route_params.add(pname)
            if base is inspect.Parameter.empty or base is str:
                return (pname, _PARAM, None)
            return (pname, _PARAM, (TypeAdapter(base), _name(base)))
        if base is Message:
            return (pname, _MESSAGE, None)
        if base is Acknowledger:
            self.uses_ack = True
            return (pname, _ACK, None)
        if base is HandlerContext:
            return (pname, _CONTEXT, None)
        if param.default is not inspect.Parameter.empty:
            return (pname, -1, param.default)
        where = "" if func is stack[0] else f" (in dependency {_name(func)})"
        hint = ""
        if self._route_names:
            hint = f" Route placeholders available: {', '.join(self._route_names)}."
        raise HandlerRegistrationError(
            f"Handler {self.handler_name!r}: cannot fill parameter {pname!r}{where}. "
            "Annotate it as Event[Model], give it a Dependency(...), name a route "
            f"placeholder, or give it a default.{hint}"
        )

    # -- run ------------------------------------------------------------------------
    async def call(self, ctx: HandlerContext) -> Any:
        """Make the handler's arguments for ``ctx`` and call it; tear down afterwards."""
        if not self.needs_teardown:
            return await self._run(self.root, ctx, None, None)
        async with contextlib.AsyncExitStack() as stack:
            return await self._run(self.root, ctx, None, stack)

    async def _run(
        self,
        node: _Node,
        ctx: HandlerContext,
        cache: dict[Any, Any] | None,
        stack: contextlib.AsyncExitStack | None,
    ) -> Any:
        kwargs: dict[str, Any] = {}
        for pname, source, data in node.params:
            if source == _EVENT:
                kwargs[pname] = ctx.event_for(data)
            elif source == _DEP:
                if data.use_cache:
                    if cache is None:
                        cache = ctx.dep_cache
                    if data.func in cache:
                        kwargs[pname] = cache[data.func]
                        continue
                    if data.bare_async:
                        value = await data.func()
                    else:
                        value = await self._run(data, ctx, cache, stack)
                    cache[data.func] = value
                    kwargs[pname] = value
                else:
                    kwargs[pname] = await self._run(data, ctx, cache, stack)
            elif source == _PARAM:
                raw = ctx.params[pname]
                kwargs[pname] = raw if data is None else self._convert(pname, data, raw)
            elif source == _MESSAGE:
                kwargs[pname] = ctx.message
            elif source == _ACK:
                kwargs[pname] = ctx.acknowledger()
            elif source == _CONTEXT:
                kwargs[pname] = ctx
            elif source == _BODY:
                kwargs[pname] = ctx.body_for(data)
            elif source == _ENVELOPE:
                kwargs[pname] = data[0](ctx.body_for(data[1]), ctx.message, ctx.params)
            elif source == _INJECT:
                kwargs[pname] = data.__dispytch_inject__(ctx)
            else:
                kwargs[pname] = data
        kind = node.kind
        func = node.func
        if kind == _ASYNC:
            return await func(**kwargs)
        if kind == _SYNC:
            return await asyncio.to_thread(functools.partial(func, **kwargs))
        assert stack is not None
        if kind == _ASYNCGEN:
            return await stack.enter_async_context(contextlib.asynccontextmanager(func)(**kwargs))
        cm = contextlib.contextmanager(func)(**kwargs)
        value = await asyncio.to_thread(cm.__enter__)
        stack.push_async_exit(_threaded_exit(cm))
        return value

    def _convert(self, pname: str, target: tuple[TypeAdapter[Any], str], raw: str) -> Any:
        adapter, type_name = target
        try:
            return adapter.validate_strings(raw)
        except ValidationError as exc:
            raise RouteParamError(
                f"Handler {self.handler_name!r}: route segment {pname}={raw!r} is not a valid "
                f"{type_name}: {exc.errors(include_url=False)[0]['msg']}."
            ) from exc


def _annotated_callable(func: Any) -> Any:
    """What holds the parameter annotations of ``func``: a class's ``__init__``, a
    partial's function, a callable object's ``__call__``, else ``func`` itself."""
    if isinstance(func, functools.partial):
        return _annotated_callable(func.func)
    if inspect.isclass(func):
        return func.__init__
    if inspect.isfunction(func) or inspect.ismethod(func):
        return func
    call = getattr(func, "__call__", None)  # noqa: B004 - callable objects
    return call if call is not None else func


def _threaded_exit(cm: Any) -> Callable[..., Any]:
    async def exit_(exc_type: Any, exc: Any, tb: Any) -> bool:
        return bool(await asyncio.to_thread(cm.__exit__, exc_type, exc, tb))

    return exit_


def _name(func: Any) -> str:
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or func)
