"""Dispytch for FastAPI: start and stop the clients with the app, and inject them.

::

    from dispytch.fastapi import Emitter, IdempotencyKey, lifespan

    emitter = EventEmitter.from_url("kafka://localhost:9092")
    app = FastAPI(lifespan=lifespan(emitter))

    @app.post("/signups")
    async def sign_up(body: SignUp, emitter: Emitter, key: IdempotencyKey):
        await emitter.emit(UserSignedUp(email=body.email))

The web process only *emits* by default: event handlers run in worker processes
(``dispytch run service:dispatcher --workers N``). Pass ``dispatchers=`` to the lifespan to
run some in the web process too, which is then explicit.

The lifespan keeps everything it started under names in the Starlette lifespan state
(``request.state``); :func:`dependency` turns such a name into an ``Annotated[...,
Depends(...)]`` type. :data:`Emitter` is one, :data:`CommandBus` (the
:class:`~dispytch.Bus` given as ``lifespan(bus=...)``) another; durable functions will plug
in the same way (``components={"dispytch_jobs": jobs}`` and
``Jobs = dependency("dispytch_jobs", ...)``), with no change here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from dispytch.cqrs import Bus
from dispytch.dispatcher import EventDispatcher
from dispytch.emitter import EventEmitter

from fastapi import Depends, FastAPI, Header, HTTPException, Request

__all__ = [
    "BUS",
    "EMITTER",
    "CommandBus",
    "Dispytch",
    "Emitter",
    "IdempotencyKey",
    "RequiredIdempotencyKey",
    "dependency",
    "get_emitter",
    "idempotency_key",
    "lifespan",
    "required_idempotency_key",
]

T = TypeVar("T")

#: The lifespan-state name of the command/query bus.
BUS = "dispytch_bus"
#: The lifespan-state name of the (first) emitter.
EMITTER = "dispytch_emitter"
#: The lifespan-state name of every emitter, as a tuple.
EMITTERS = "dispytch_emitters"
#: The lifespan-state name of the dispatchers started in the web process, as a tuple.
DISPATCHERS = "dispytch_dispatchers"
#: The longest Idempotency-Key accepted (the IETF draft leaves it open; 255 fits a
#: database key and any durable run id).
MAX_IDEMPOTENCY_KEY = 255

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[Mapping[str, Any] | None]]


async def _start(component: Any) -> None:
    start = getattr(component, "start", None)
    if start is not None:
        await start()
    elif hasattr(component, "__aenter__"):
        await component.__aenter__()


async def _stop(component: Any) -> None:
    stop = getattr(component, "stop", None)
    if stop is not None:
        await stop()
    elif hasattr(component, "__aexit__"):
        await component.__aexit__(None, None, None)


def lifespan(
    emitter: EventEmitter | None = None,
    *,
    emitters: Sequence[EventEmitter] = (),
    dispatchers: Sequence[EventDispatcher] = (),
    bus: Bus | None = None,
    components: Mapping[str, Any] | None = None,
    wrap: Lifespan | None = None,
) -> Lifespan:
    """A FastAPI ``lifespan`` starting the clients on startup and stopping them on
    shutdown, each once, in reverse order.

    Args:
        emitter: The emitter the :data:`Emitter` dependency gives.
        emitters: More emitters to start and stop.
        dispatchers: Dispatchers to *run in the web process*. None by default: handlers
            belong in workers (``dispytch run``), so a web server with many processes does
            not become a set of consumers by accident.
        bus: A :class:`~dispytch.Bus` (commands and queries) to start and stop with the
            app; :data:`CommandBus` injects it.
        components: More things with ``start``/``stop`` (or async context managers) to
            run with the app and expose by name in the lifespan state, for
            :func:`dependency`; what later Dispytch parts (a command bus, durable
            functions) plug in through.
        wrap: The app's own lifespan, run inside this one (the clients are up when it
            starts, still up while it stops); what it yields joins the state.

    Raises:
        TypeError: Dispatchers given where emitters go, or the reverse.
    """
    all_emitters = [e for e in (emitter, *emitters) if e is not None]
    for e in all_emitters:
        if not isinstance(e, EventEmitter):
            raise TypeError(f"lifespan() emitters must be EventEmitter objects, not {e!r}.")
    for d in dispatchers:
        if not isinstance(d, EventDispatcher):
            raise TypeError(f"lifespan(dispatchers=...) takes EventDispatcher objects, not {d!r}.")
    extra = dict(components or {})
    clash = {EMITTER, EMITTERS, DISPATCHERS, BUS} & set(extra)
    if clash:
        raise ValueError(f"lifespan(components=...) may not use the reserved name(s) {clash}.")
    if bus is not None:
        if not isinstance(bus, Bus):
            raise TypeError(f"lifespan(bus=...) takes a dispytch.Bus, not {bus!r}.")
        extra = {BUS: bus, **extra}

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        started: list[Any] = []
        try:
            for component in (*all_emitters, *extra.values(), *dispatchers):
                await _start(component)
                started.append(component)
            state: dict[str, Any] = {EMITTERS: tuple(all_emitters), DISPATCHERS: tuple(dispatchers)}
            if all_emitters:
                state[EMITTER] = all_emitters[0]
            state.update(extra)
            if wrap is None:
                yield state
            else:
                async with wrap(app) as inner:
                    yield {**state, **(inner or {})}
        finally:
            # Dispatchers first (their handlers may emit), then the rest, newest first.
            for component in reversed(started):
                await _stop(component)

    return run


class Dispytch:
    """``Dispytch(app, emitter)``: the lifespan installed on an existing app, around the
    app's own one (the shape of dispatch-py's ``Dispatch(app)``).

    Args:
        app: The FastAPI application.
        emitter: The emitter :data:`Emitter` gives.
        **options: As for :func:`lifespan` (``dispatchers=``, ``components=``...).
    """

    def __init__(self, app: FastAPI, emitter: EventEmitter | None = None, **options: Any):
        if "wrap" in options:
            raise TypeError("Dispytch(app) wraps the app's own lifespan; do not pass wrap=.")
        self.app = app
        self.emitter = emitter
        own = app.router.lifespan_context
        self.lifespan = lifespan(emitter, wrap=own, **options)
        app.router.lifespan_context = self.lifespan  # type: ignore[assignment]


def dependency(name: str, kind: type[T]) -> Any:
    """``Annotated[kind, Depends(...)]`` giving what the lifespan keeps under ``name``.

    Raises (at request time):
        RuntimeError: The app's lifespan does not provide ``name`` (with what to do).
    """

    def provide(request: Request) -> Any:
        try:
            return getattr(request.state, name)
        except AttributeError:
            raise RuntimeError(
                f"No {name!r} in the app's lifespan state.\n"
                "Create the app with FastAPI(lifespan=dispytch.fastapi.lifespan(...)) "
                "giving it, or install Dispytch(app, ...)."
            ) from None

    provide.__name__ = f"get_{name}"
    return Annotated[kind, Depends(provide)]


def get_emitter(request: Request) -> EventEmitter:
    """The lifespan's emitter (a FastAPI dependency)."""
    try:
        emitter = request.state.dispytch_emitter
    except AttributeError:
        raise RuntimeError(
            "No emitter in the app's lifespan state.\n"
            "Create the app with FastAPI(lifespan=dispytch.fastapi.lifespan(emitter)) or "
            "install Dispytch(app, emitter)."
        ) from None
    if not isinstance(emitter, EventEmitter):  # pragma: no cover - set by lifespan() only
        raise RuntimeError(f"The lifespan state's {EMITTER!r} is not an EventEmitter.")
    return emitter


#: The lifespan's emitter, injected: ``async def endpoint(emitter: Emitter)``.
Emitter = Annotated[EventEmitter, Depends(get_emitter)]

#: The lifespan's command/query bus: ``async def endpoint(bus: CommandBus)``, then
#: ``await bus.send(CreateUser(...))`` / ``await bus.ask(GetUser(...))``.
CommandBus = dependency(BUS, Bus)


def _check_key(value: str) -> str:
    if not value or len(value) > MAX_IDEMPOTENCY_KEY:
        raise HTTPException(
            400,
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters long; send one "
            "unique value per operation (a UUID, say).",
        )
    if not all(32 < ord(c) < 127 for c in value):
        raise HTTPException(
            400,
            "Idempotency-Key must be printable ASCII without spaces; send one unique value "
            "per operation (a UUID, say).",
        )
    return value


def idempotency_key(
    value: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str | None:
    """The request's ``Idempotency-Key`` header, checked; ``None`` when absent.

    The key names one operation across retries of the same request: the run id a durable
    function will take, or a key to deduplicate emitted events with.

    Raises:
        HTTPException: 400 for an empty, overlong or non-printable key.
    """
    return None if value is None else _check_key(value)


def required_idempotency_key(
    value: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str:
    """As :func:`idempotency_key`, but a request without one is refused (400)."""
    if value is None:
        raise HTTPException(
            400,
            "This endpoint needs an Idempotency-Key header; send one unique value per "
            "operation (a UUID, say) and the same one when retrying it.",
        )
    return _check_key(value)


#: ``key: IdempotencyKey`` in an endpoint: the checked header, or ``None``.
IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
#: ``key: RequiredIdempotencyKey``: the checked header; 400 without one.
RequiredIdempotencyKey = Annotated[str, Depends(required_idempotency_key)]
