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

Durable functions, as dispatch-py's ``Dispatch(app)`` has them::

    app = FastAPI()
    dispytch = Dispytch(app)  # a Durable from the environment, its worker beside the app

    @dispytch.function
    def publish(url: str, payload: dict[str, str]) -> None:
        requests.post(url, data=payload).raise_for_status()

    @app.get("/")
    def root():
        publish.dispatch("https://example.com/", {"hello": "world"})  # sync or async endpoint
        return {"answer": 42}

The lifespan keeps everything it started under names in the Starlette lifespan state
(``request.state``); :func:`dependency` turns such a name into an ``Annotated[...,
Depends(...)]`` type. :data:`Emitter` is one, :data:`CommandBus` (the
:class:`~dispytch.Bus` given as ``lifespan(bus=...)``) another, :data:`Jobs` (the
:class:`~dispytch.durable.Durable` given as ``lifespan(durable=...)``) a third.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping, Sequence
from typing import Annotated, Any, Generic, ParamSpec, TypeVar, overload

from dispytch.cqrs import Bus
from dispytch.dispatcher import EventDispatcher
from dispytch.durable import Call, Durable, DurableFunction, IdempotencyConflictError, RunHandle
from dispytch.durable.store import RunRecord
from dispytch.emitter import EventEmitter
from starlette.responses import JSONResponse

from fastapi import Depends, FastAPI, Header, HTTPException, Request

__all__ = [
    "BUS",
    "EMITTER",
    "JOBS",
    "AppFunction",
    "CommandBus",
    "Dispatched",
    "Dispytch",
    "Emitter",
    "IdempotencyKey",
    "Jobs",
    "RequiredIdempotencyKey",
    "dependency",
    "get_emitter",
    "idempotency_conflict_handler",
    "idempotency_key",
    "lifespan",
    "required_idempotency_key",
]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("dispytch.fastapi")

#: The lifespan-state name of the command/query bus.
BUS = "dispytch_bus"
#: The lifespan-state name of the (first) emitter.
EMITTER = "dispytch_emitter"
#: The lifespan-state name of every emitter, as a tuple.
EMITTERS = "dispytch_emitters"
#: The lifespan-state name of the dispatchers started in the web process, as a tuple.
DISPATCHERS = "dispytch_dispatchers"
#: The lifespan-state name of the :class:`~dispytch.durable.Durable` (durable functions).
JOBS = "dispytch_jobs"
#: Seconds the app's shutdown waits for ``dispatch()`` calls still under way.
DRAIN_TIMEOUT = 30.0
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
    durable: Durable | None = None,
    durable_workers: bool = False,
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
        durable: A :class:`~dispytch.durable.Durable` (durable functions): connected on
            startup (its store opened, its emitter started) so endpoints dispatch runs and
            read results, stopped on shutdown; :data:`Jobs` injects it.
        durable_workers: Also run a worker of ``durable`` in the web process (off by
            default, like ``dispatchers``: runs belong in ``dispytch run module:durable``
            workers unless you ask).
        components: More things with ``start``/``stop`` (or async context managers) to
            run with the app and expose by name in the lifespan state, for
            :func:`dependency`; what later Dispytch parts (a command bus, durable
            functions) plug in through.
        wrap: The app's own lifespan, run inside this one (the clients are up when it
            starts, still up while it stops); what it yields joins the state.

    Raises:
        TypeError: Dispatchers given where emitters go, or the reverse; ``durable`` not a
            Durable.
    """
    all_emitters = [e for e in (emitter, *emitters) if e is not None]
    for e in all_emitters:
        if not isinstance(e, EventEmitter):
            raise TypeError(f"lifespan() emitters must be EventEmitter objects, not {e!r}.")
    for d in dispatchers:
        if not isinstance(d, EventDispatcher):
            raise TypeError(f"lifespan(dispatchers=...) takes EventDispatcher objects, not {d!r}.")
    extra = dict(components or {})
    clash = {EMITTER, EMITTERS, DISPATCHERS, BUS, JOBS} & set(extra)
    if clash:
        raise ValueError(f"lifespan(components=...) may not use the reserved name(s) {clash}.")
    if bus is not None:
        if not isinstance(bus, Bus):
            raise TypeError(f"lifespan(bus=...) takes a dispytch.Bus, not {bus!r}.")
        extra = {BUS: bus, **extra}
    if durable is not None and not isinstance(durable, Durable):
        raise TypeError(f"lifespan(durable=...) takes a dispytch.durable.Durable, not {durable!r}.")
    if durable_workers and durable is None:
        raise TypeError("lifespan(durable_workers=True) needs durable=, the Durable to run.")

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        started: list[Any] = []
        try:
            for component in (*all_emitters, *extra.values()):
                await _start(component)
                started.append(component)
            if durable is not None:
                # A worker only when asked; connected either way, so endpoints dispatch.
                await (durable.start() if durable_workers else durable.connect())
                started.append(durable)
            for component in dispatchers:
                await _start(component)
                started.append(component)
            state: dict[str, Any] = {EMITTERS: tuple(all_emitters), DISPATCHERS: tuple(dispatchers)}
            if all_emitters:
                state[EMITTER] = all_emitters[0]
            if durable is not None:
                state[JOBS] = durable
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
    """``Dispytch(app)``: Dispytch installed on an existing app, around the app's own
    lifespan — the shape of dispatch-py's ``Dispatch(app)``.

    For events: ``Dispytch(app, emitter)`` starts the emitter with the app (and
    ``dispatchers=`` when given). For durable functions: ``@dispytch.function`` registers
    on :attr:`durable` and returns an :class:`AppFunction`, whose ``.dispatch(...)`` works
    from async and sync (threadpool) endpoints alike; a worker of the Durable runs beside
    the app (``durable_workers=False`` leaves the runs to ``dispytch run`` workers). An
    :class:`~dispytch.durable.IdempotencyConflictError` raised by an endpoint answers 409.

    Args:
        app: The FastAPI application.
        emitter: The emitter :data:`Emitter` gives.
        durable: The Durable of ``@dispytch.function``. Default: one built from the
            environment (``DISPYTCH_DURABLE_TRANSPORT``, ``DISPYTCH_DURABLE_STORE``) when
            a function is first registered; none (nothing opened) when none is.
        durable_workers: Run a worker of the Durable in the web process (default True, as
            dispatch-py runs the functions in the app). With False the app only
            dispatches and reads results.
        **options: As for :func:`lifespan` (``dispatchers=``, ``components=``...).
    """

    def __init__(
        self,
        app: FastAPI,
        emitter: EventEmitter | None = None,
        *,
        durable: Durable | None = None,
        durable_workers: bool = True,
        **options: Any,
    ):
        if "wrap" in options:
            raise TypeError("Dispytch(app) wraps the app's own lifespan; do not pass wrap=.")
        self.app = app
        self.emitter = emitter
        self.durable_workers = durable_workers
        self._durable = durable
        self._options = options
        self._own = app.router.lifespan_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        lifespan(emitter, durable=durable, wrap=self._own, **options)  # bad options: now
        app.router.lifespan_context = self.lifespan
        app.add_exception_handler(IdempotencyConflictError, idempotency_conflict_handler)

    @property
    def durable(self) -> Durable:
        """The Durable of this app's functions (built from the environment on first use)."""
        if self._durable is None:
            self._durable = Durable()
        return self._durable

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        """The app's lifespan: :func:`lifespan` with this object's clients, around the
        app's own one. In-flight ``dispatch()`` calls finish before the Durable stops."""
        inner = lifespan(
            self.emitter,
            durable=self._durable,
            durable_workers=self.durable_workers and self._durable is not None,
            wrap=self._own,
            **self._options,
        )
        async with inner(app) as state:
            self._loop = asyncio.get_running_loop()
            try:
                yield state or {}
            finally:
                self._loop = None
                await self._drain()

    async def _drain(self) -> None:
        """Wait for dispatches under way (bounded by :data:`DRAIN_TIMEOUT`)."""
        if not self._pending:
            return
        _, late = await asyncio.wait(list(self._pending), timeout=DRAIN_TIMEOUT)
        for task in late:
            task.cancel()
        if late:
            log.error(
                "%d dispatch(es) were still under way %.0f s into the app's shutdown and were "
                "cancelled; their runs may not have been created or sent.",
                len(late),
                DRAIN_TIMEOUT,
            )
            await asyncio.wait(late, timeout=1.0)

    @overload
    def function(self, func: Callable[P, Coroutine[Any, Any, R]]) -> AppFunction[P, R]: ...

    @overload
    def function(self, func: Callable[P, R]) -> AppFunction[P, R]: ...

    @overload
    def function(
        self, *, name: str | None = None, max_attempts: int | None = None
    ) -> Callable[[Callable[..., Any]], AppFunction[..., Any]]: ...

    def function(
        self,
        func: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
    ) -> Any:
        """Register a durable function on :attr:`durable` (bare or with options, as
        :meth:`~dispytch.durable.Durable.function`)."""

        def register(target: Callable[..., Any]) -> AppFunction[..., Any]:
            fn = self.durable.function(name=name, max_attempts=max_attempts)(target)
            return AppFunction(self, fn)

        return register if func is None else register(func)

    def dispatch(self, call: Call[R], *, id: str | None = None) -> Dispatched[R]:
        """Start ``call`` as a run, from async or sync code; its handle at once.

        In the event loop (an ``async def`` endpoint) the run is created and its message
        sent in a task: ``await`` the handle to wait for that (and see its errors, e.g.
        :class:`~dispytch.durable.IdempotencyConflictError`); left un-awaited it still
        happens (the lifespan waits for it on shutdown). In another thread (a ``def``
        endpoint, run by FastAPI in its threadpool) this blocks until the run is created
        and its message sent, on the app's loop, and raises what that raised.

        Args:
            call: ``fn(*args)`` of a durable function (arguments validated already).
            id: An idempotency key as the run id (e.g. the ``Idempotency-Key`` header):
                the same id and arguments are one run.

        Raises:
            RuntimeError: Called from a thread while the app is not running.
        """
        run_id = id or uuid.uuid4().hex
        function = call.function
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = loop.create_task(call.dispatch(id=run_id))
            handle = Dispatched(function.durable, run_id, function, task)
            self._pending.add(task)

            def done(task: asyncio.Task[Any]) -> None:
                self._pending.discard(task)
                if task.cancelled() or handle.awaited:
                    return
                exc = task.exception()  # nobody awaits it: say so here, not at GC time
                if exc is not None:
                    log.error(
                        "Dispatching %s (run %s) failed and nobody awaited it: %s: %s",
                        function.name,
                        run_id,
                        type(exc).__name__,
                        exc,
                        exc_info=exc,
                    )

            task.add_done_callback(done)
            return handle
        app_loop = self._loop
        if app_loop is None:
            raise RuntimeError(
                f"{function.name}.dispatch() was called from a thread while the app is not "
                "running.\nDispatch from an endpoint (the app's lifespan starts Dispytch), "
                "or await fn.dispatch(...) in async code."
            )
        future = asyncio.run_coroutine_threadsafe(call.dispatch(id=run_id), app_loop)
        made = future.result()
        return Dispatched(function.durable, made.id, function, None)


class Dispatched(RunHandle[R]):
    """The handle :meth:`Dispytch.dispatch` returns: a :class:`~dispytch.durable.RunHandle`
    (``id``, ``result()``, ``status()``) whose dispatch may still be under way;
    ``await``-ing it waits for the dispatch (not the run) and returns it."""

    __slots__ = ("_task", "awaited")

    def __init__(
        self,
        durable: Durable,
        run_id: str,
        function: DurableFunction[..., R],
        task: asyncio.Task[RunHandle[R]] | None,
    ) -> None:
        super().__init__(durable, run_id, function)
        self._task = task
        #: Whether someone awaits the dispatch (then its error is theirs, not logged).
        self.awaited = task is None

    def __await__(self) -> Generator[Any, None, RunHandle[R]]:
        return self._dispatched().__await__()

    async def _dispatched(self) -> RunHandle[R]:
        if self._task is not None:
            self.awaited = True
            await self._task
        return self

    async def status(self) -> RunRecord:
        """The run's row, once dispatched (see :meth:`RunHandle.status`)."""
        await self._dispatched()
        return await super().status()

    async def result(self, timeout: float | None = None) -> R:
        """The run's result, once dispatched (see :meth:`RunHandle.result`)."""
        await self._dispatched()
        return await super().result(timeout)


class AppFunction(Generic[P, R]):
    """A durable function registered through :meth:`Dispytch.function`.

    ``fn(*args)`` is the :class:`~dispytch.durable.Call` (awaited inside another durable
    function it is a step, as ever); ``fn.dispatch(*args)`` starts a run from a sync or
    async endpoint (:meth:`Dispytch.dispatch`).
    """

    def __init__(self, host: Dispytch, function: DurableFunction[P, R]) -> None:
        self.host = host
        self.durable_function = function
        self.name = function.name
        self.__doc__ = function.__doc__
        self.__name__ = function.__name__
        self.__qualname__ = function.__qualname__
        self.__module__ = function.__module__

    def __repr__(self) -> str:
        return f"<durable function {self.name} of {self.host.app!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        return self.durable_function(*args, **kwargs)

    def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> Dispatched[R]:
        """Start a run in the background (sync or async caller); its handle."""
        return self.host.dispatch(self.durable_function(*args, **kwargs))


async def idempotency_conflict_handler(request: Request, exc: Exception) -> JSONResponse:
    """Answer an :class:`~dispytch.durable.IdempotencyConflictError` with 409 and its
    message (``Dispytch(app)`` installs it; with :func:`lifespan`, install it yourself:
    ``app.add_exception_handler(IdempotencyConflictError, idempotency_conflict_handler)``)."""
    return JSONResponse({"detail": str(exc)}, status_code=409)


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

#: The lifespan's Durable: ``async def endpoint(jobs: Jobs)``, then
#: ``await jobs.handle(run_id, fn).status()``.
Jobs = dependency(JOBS, Durable)


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
