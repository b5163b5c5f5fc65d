"""Durable functions: runs as messages on an at-least-once transport, steps in a journal.

A run is a row in the journal store and a *tick* message (``{"run": id}``) on the
Durable's topic. A worker handling a tick loads the run's journal in one read, takes the
run's lease (a fencing token), and calls the function from the top: each awaited durable
function inside it is a step at a position in call order; a finished step's result comes
from the journal without running it again, a new one runs inline and is journalled. The
tick is acknowledged once the run finished, failed, or suspended on ``gather`` children.
A worker killed at any point leaves its tick unacknowledged: the broker delivers it to
another worker, which resumes the run from the journal. There is no coordinator and no
owner id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import time
import uuid
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Generator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar, overload

from dispytch.backoff import Backoff
from dispytch.dispatcher import AckPolicy, EventDispatcher
from dispytch.durable.codec import FunctionCodec, canonical, decode_error, encode_error
from dispytch.durable.errors import (
    AnyFailedError,
    DurableError,
    IdempotencyConflictError,
    LeaseLostError,
    NonDeterminismError,
    RunCancelledError,
)
from dispytch.durable.store import (
    RETRYABLE_STATUSES,
    ChildOutcome,
    CompletionFeed,
    Journal,
    JournalStore,
    NewRun,
    RunRecord,
    StepRecord,
)
from dispytch.durable.stores import journal_store_for_url
from dispytch.emitter import EventEmitter
from dispytch.errors import ConfigError
from dispytch.event import Event, EventBase
from dispytch.plugins import transport_for_url
from dispytch.routes import TopicRoute, TopicSubscription
from dispytch.transport import Acknowledger, Consumer, Message, capabilities_of

__all__ = [
    "Call",
    "Durable",
    "DurableFunction",
    "RunHandle",
    "default_transient",
    "any_success",
    "gather",
    "race",
    "sleep",
]

log = logging.getLogger("dispytch.durable")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TRANSPORT = "memory://dispytch-durable"
DEFAULT_STORE = "sqlite:///.dispytch/journal.sqlite3"
DEFAULT_TOPIC = "dispytch.durable.runs"


#: A result waiter on a store with a completion feed asks for a notice after this long.
_WATCH_GRACE = 0.05

#: Waits up to this long (lease contention) happen in the handler; longer ones park the tick.
_INLINE_WAIT = 0.05


def _now() -> float:
    """Wall-clock now, following the running loop's clock: ``time.time()`` under a normal
    loop (whose ``time()`` is ``time.monotonic()``), moved on by the jumps of a virtual
    clock (:mod:`dispytch.testing.clock`), so due times of retries and durable sleeps
    are reached when the loop's timers say so."""
    try:
        skew = asyncio.get_running_loop().time() - time.monotonic()
    except RuntimeError:
        skew = 0.0
    return time.time() + skew


class RunTick(EventBase):
    """The message that drives a run: its id, nothing else (the rest is in the journal)."""

    __event_type__ = "dispytch.durable.tick"
    run: str


def default_transient(exc: BaseException) -> bool:
    """Whether an error is transient (retried): timeouts, connection and OS errors.

    An exception's own ``retryable`` attribute decides first. Errors of durable machinery
    (a changed step, an unencodable value, a failed child) are permanent, and so are
    ``PermissionError`` and ``FileNotFoundError``.
    """
    if isinstance(exc, DurableError):
        return False
    own = getattr(exc, "retryable", None)
    if isinstance(own, bool):
        return own
    if isinstance(exc, PermissionError | FileNotFoundError):
        return False
    return isinstance(exc, TimeoutError | ConnectionError | OSError)


class _Suspend(BaseException):
    """Unwinds a run waiting on children (not an Exception: user code does not catch it)."""


class _Sleep(BaseException):
    """Unwinds a run in a durable sleep until ``wake`` (epoch seconds, journalled)."""

    def __init__(self, wake: float) -> None:
        super().__init__(wake)
        self.wake = wake


#: The journal's function name of a durable sleep step.
SLEEP_STEP = "dispytch.durable.sleep"

#: A durable sleep up to this long waits in place (the run keeps its lease); a longer one
#: suspends the run: lease given up, message back at the wake-up time.
_HOLD_SLEEP = 1.0


#: A step starting this long (seconds) after the run's last confirmed journal write first
#: confirms the lease (one renew), so a cancel is seen before the step starts.
_CONFIRM_WINDOW = 0.05


@dataclass
class _Lease:
    """The attempt's hold on its run: ``confirmed`` when a write last proved it held
    (``time.monotonic()``), ``lost`` once a renewal was refused (taken over or
    cancelled): no further step starts."""

    confirmed: float = field(default_factory=time.monotonic)
    lost: bool = False


@dataclass
class _RunState:
    durable: Durable
    run_id: str
    token: int
    journal: Journal
    prefix: str = ""
    counter: int = 0
    lease: _Lease = field(default_factory=_Lease)

    def next_position(self) -> str:
        self.counter += 1
        return f"{self.prefix}{self.counter}"

    def nested(self, position: str) -> _RunState:
        return _RunState(
            self.durable, self.run_id, self.token, self.journal, f"{position}.", lease=self.lease
        )

    def confirmed(self) -> None:
        """A fenced write just succeeded: the lease is held now."""
        self.lease.confirmed = time.monotonic()

    async def check(self) -> None:
        """At a step boundary, before a new step starts: raise when the lease is lost (a
        cancel, a takeover). Free right after a journal write; after a longer gap, one
        renew asks the store."""
        lease = self.lease
        if not lease.lost and time.monotonic() - lease.confirmed > _CONFIRM_WINDOW:
            durable = self.durable
            if await durable.store.renew(self.run_id, self.token, durable.settings.lease_ttl):
                self.confirmed()
            else:
                lease.lost = True
        if lease.lost:
            raise LeaseLostError(
                f"Run {self.run_id}: the lease of token {self.token} is lost (the run was "
                "cancelled or taken over); no further step starts here."
            )


_current: ContextVar[_RunState | None] = ContextVar("dispytch_durable_run", default=None)


class Call(Generic[R]):
    """A call of a durable function, arguments validated and encoded, not yet running.

    Inside a durable async function, ``await call`` is a durable step. Elsewhere
    ``await call.dispatch()`` starts it as a run of its own (``await call`` does that and
    waits for the result).
    """

    __slots__ = ("args", "args_hash", "args_json", "function", "kwargs")

    def __init__(
        self,
        function: DurableFunction[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        args_json: str,
        args_hash: str,
    ) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.args_json = args_json
        self.args_hash = args_hash

    def __repr__(self) -> str:
        return f"Call({self.function.name}, {self.args_json})"

    def __await__(self) -> Generator[Any, None, R]:
        return self._await().__await__()

    async def _await(self) -> R:
        state = _current.get()
        if state is None:
            handle = await self.dispatch()
            return await handle.result()
        result: R = await state.durable._step(state, self)
        return result

    async def dispatch(self, *, id: str | None = None) -> RunHandle[R]:
        """Start the call as a run (in the background) and return its handle.

        Args:
            id: An idempotency key: a run of that id with the same arguments is returned
                as it is (one execution); with other arguments it is a conflict.

        Raises:
            IdempotencyConflictError: ``id`` exists with different arguments.
        """
        return await self.function.durable._dispatch(self, id)


class DurableFunction(Generic[P, R]):
    """A function registered on a :class:`Durable` (what ``@durable.function`` returns).

    Calling it returns a :class:`Call` (nothing runs yet); ``await fn.dispatch(...)`` runs it
    in the background; ``await fn(...)`` inside another durable function is a step.
    """

    def __init__(
        self,
        durable: Durable,
        func: Callable[P, Any],
        name: str,
        *,
        max_attempts: int | None,
        concurrency: int | None = None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency={concurrency!r}: give at least 1 (or None: no limit).")
        self.durable = durable
        self.func = func
        self.name = name
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.codec = FunctionCodec(func, name)
        self.is_async = inspect.iscoroutinefunction(func)
        self.__doc__ = func.__doc__
        self.__name__ = getattr(func, "__name__", name)
        self.__qualname__ = getattr(func, "__qualname__", name)
        self.__module__ = getattr(func, "__module__", __name__)

    def __repr__(self) -> str:
        return f"<durable function {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        call_args, call_kwargs, text, digest = self.codec.encode_args(args, kwargs)
        return Call(self, call_args, call_kwargs, text, digest)

    async def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]:
        """Start a run in the background; the handle's ``result()`` waits for it."""
        return await self(*args, **kwargs).dispatch()

    async def invoke(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Run the function itself (a sync one in a worker thread)."""
        if self.is_async:
            return await self.func(*args, **kwargs)
        return await asyncio.to_thread(self.func, *args, **kwargs)


class RunHandle(Generic[R]):
    """A run, by id: usable from any process that opens the same journal store."""

    __slots__ = ("_fresh", "durable", "function", "id")

    def __init__(self, durable: Durable, run_id: str, function: DurableFunction[..., R]):
        self.durable = durable
        self.id = run_id
        self.function = function
        #: Created by this handle's dispatch just now: the first wait need not read first.
        self._fresh = False

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r}, {self.function.name})"

    async def cancel(self, *, reason: str = "cancelled") -> list[str]:
        """Cancel this run (see :meth:`Durable.cancel`)."""
        return await self.durable.cancel(self.id, reason=reason)

    async def status(self) -> RunRecord:
        """The run's row: status, attempts, outcome text."""
        await self.durable.connect()
        record = await self.durable.store.get_run(self.id)
        if record is None:
            raise DurableError(f"No run {self.id!r} in {self.durable.store!r}.")
        return record

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the run's outcome: its result as its type, or its error raised.

        A registered error type is raised as itself, any other as
        :class:`~dispytch.durable.errors.RunFailedError`.

        Raises:
            TimeoutError: The run did not finish within ``timeout`` seconds.
        """
        durable = self.durable
        await durable.connect()
        async with asyncio.timeout(timeout):
            # Pushed: woken by this process's worker, or by the store's completion feed
            # (another process finished it; the run is watched after a 50 ms grace): one
            # read per wake-up, no poll. A store with no feed (SQLite): woken the same
            # way in this process, else a bounded poll backing off from 2 ms to 200 ms.
            pushed = durable._feed_stop is not None
            watching = False
            backoff = Backoff(initial=0.002, factor=1.5, cap=0.2)
            event = asyncio.Event()
            waiters = durable._waiters.setdefault(self.id, set())
            waiters.add(event)
            # A run its dispatch created a moment ago is not over yet: no read first.
            fresh, self._fresh = self._fresh, False
            try:
                while True:
                    event.clear()
                    final = durable._finals.get(self.id)
                    if final is not None:  # this process's worker stored it: no read back
                        return durable._final_value(self.id, final, self.function)  # type: ignore[no-any-return]
                    if self.id in durable._local:
                        # This process's worker runs it and wakes this wait when it lets
                        # the tick go: no read, no watch meanwhile.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(event.wait(), durable.settings.lease_ttl)
                        continue
                    if fresh:
                        fresh = False
                    else:
                        record = await durable.store.get_run(self.id)
                        if record is None:
                            raise DurableError(f"No run {self.id!r} in {durable.store!r}.")
                        if record.final:
                            return durable._outcome(record, self.function)  # type: ignore[no-any-return]
                    if pushed:
                        if not watching:
                            # This process's worker may finish it soon: that wake needs
                            # no notice. Past a grace, ask the store to notify, and read
                            # again (it may have finished before the watch).
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(event.wait(), _WATCH_GRACE)
                            if not event.is_set() and self.id not in durable._local:
                                assert durable._feed is not None
                                await durable._feed.watch_run(self.id)
                                watching = True
                            continue
                        await event.wait()
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), backoff.next())
            finally:
                waiters.discard(event)
                if not waiters and durable._waiters.get(self.id) is waiters:
                    del durable._waiters[self.id]
                    durable._finals.pop(self.id, None)


@dataclass
class _Settings:
    max_attempts: int
    backoff: Backoff
    lease_ttl: float
    is_transient: Callable[[BaseException], bool]
    registered: dict[str, type[BaseException]] = field(default_factory=dict)


class Durable:
    """Durable functions over a transport and a journal store.

    Example::

        durable = Durable("redis+streams://127.0.0.1:6379", store="sqlite:///jobs.db")

        @durable.function
        async def pipeline(msg: str) -> str:
            msg = await transform(msg)  # a step: journalled, never redone once finished
            return await publish(msg)

        call = await pipeline.dispatch("hello")
        print(await call.result(timeout=10))

    Workers: ``dispytch run module:durable`` (a Durable starts and stops like a
    dispatcher), or ``async with durable:`` in a process of your own.

    Args:
        transport: A transport URL (at-least-once: memory, Redis Streams, RabbitMQ, Kafka).
            Default: ``$DISPYTCH_DURABLE_TRANSPORT``, else the in-process memory broker.
        store: A journal store URL (``sqlite:///path.db``, a plugin's) or object. Default:
            ``$DISPYTCH_DURABLE_STORE``, else ``sqlite:///.dispytch/journal.sqlite3``.
        emitter: Send ticks through this emitter instead of one built from ``transport``
            (you start and stop it).
        consumer: Consume ticks with this consumer instead of one built from ``transport``.
        topic: Where ticks travel (a Redis stream, a Kafka topic, a RabbitMQ routing key).
        consumer_options: Options of the transport's consumer factory (``group=``...).
        max_attempts: Attempts of a run before it is dead (transient errors only).
        backoff: Delays between attempts (``Backoff(initial=1, factor=2, cap=300)``).
        lease_ttl: How long a worker holds a run without renewing (renewed every third).
        max_in_flight: Runs one worker handles at once.
        max_parked: Runs one worker holds parked, waiting for a due time (a retry backoff,
            a durable sleep, a concurrency limit) on a transport without delayed requeue
            (default ``4 * max_in_flight``; beyond it the worker reads no more messages
            until one is due).
        is_transient: Which errors are retried (default :func:`default_transient`).
    """

    def __init__(
        self,
        transport: str | None = None,
        *,
        store: str | JournalStore | None = None,
        emitter: EventEmitter | None = None,
        consumer: Consumer | None = None,
        topic: str = DEFAULT_TOPIC,
        consumer_options: Mapping[str, Any] | None = None,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        lease_ttl: float = 30.0,
        max_in_flight: int = 64,
        max_parked: int | None = None,
        is_transient: Callable[[BaseException], bool] = default_transient,
        name: str = "durable",
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1.")
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive.")
        import os

        self.transport = (
            transport or os.environ.get("DISPYTCH_DURABLE_TRANSPORT") or (DEFAULT_TRANSPORT)
        )
        store = store or os.environ.get("DISPYTCH_DURABLE_STORE") or DEFAULT_STORE
        self.store: JournalStore = journal_store_for_url(store) if isinstance(store, str) else store
        self.topic = topic
        self.name = name
        self.max_in_flight = max_in_flight
        self.max_parked = max_parked
        self.consumer_options = dict(consumer_options or {})
        if self.transport.startswith("memory:"):
            self.consumer_options.setdefault("group", "dispytch-durable")
        self.settings = _Settings(
            max_attempts=max_attempts,
            backoff=backoff or Backoff(initial=1.0, factor=2.0, cap=300.0),
            lease_ttl=lease_ttl,
            is_transient=is_transient,
        )
        self._given_emitter = emitter
        self._given_consumer = consumer
        self._emitter: EventEmitter | None = emitter
        self._dispatcher: EventDispatcher | None = None
        self._functions: dict[str, DurableFunction[..., Any]] = {}
        self._route = TopicRoute(topic=topic)
        self._connected = False
        self._emitter_started = False
        self._waiters: dict[str, set[asyncio.Event]] = {}
        #: Outcomes (``ok``/``error``, JSON text) of runs finished here that a waiter awaits.
        self._finals: dict[str, tuple[str, str]] = {}
        #: Runs a worker of this process is handling now (how many ticks of each).
        self._local: dict[str, int] = {}
        self._feed: CompletionFeed | None = None
        self._feed_stop: Callable[[], Awaitable[None]] | None = None
        self._parked: set[asyncio.Task[None]] = set()
        self._limited: dict[str, Backoff] = {}
        self._limit_cap = 1.0
        self.register_error(RunCancelledError)

    def __repr__(self) -> str:
        return f"Durable({self.transport!r}, store={self.store!r}, topic={self.topic!r})"

    # -- registration ---------------------------------------------------------------
    @overload
    def function(self, func: Callable[P, Coroutine[Any, Any, R]]) -> DurableFunction[P, R]: ...

    @overload
    def function(self, func: Callable[P, R]) -> DurableFunction[P, R]: ...

    @overload
    def function(
        self,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
        concurrency: int | None = None,
    ) -> Callable[[Callable[..., Any]], DurableFunction[..., Any]]: ...

    def function(
        self,
        func: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
        concurrency: int | None = None,
    ) -> Any:
        """Register a sync or async function as durable (usable bare or with options).

        Args:
            name: Its name in the journal and on the wire (default ``module.qualname``):
                workers find the function by it, so keep it when you move the code.
            max_attempts: This function's own attempt budget as a run.
            concurrency: At most this many runs of the function execute at once,
                **cluster-wide**: counted over the leases in the journal store, so every
                worker process of the store shares the limit. A run over the limit has
                status ``limited`` and its message comes back later (backing off up to
                1 s); it is not lost and takes no worker slot while it waits (other
                functions go on). A run waiting on children or sleeping holds no slot of
                the limit. Steps (awaited inside another run) are not limited: they run
                inside their caller's run.

        Raises:
            ValueError: Another function is registered under that name.
        """

        def register(target: Callable[..., Any]) -> DurableFunction[..., Any]:
            fname = name or f"{target.__module__}.{target.__qualname__}"
            known = self._functions.get(fname)
            if known is not None and known.func is not target:
                raise ValueError(
                    f"A durable function named {fname!r} is registered already.\n"
                    "Give one of them another name: @durable.function(name=...)."
                )
            fn: DurableFunction[..., Any] = DurableFunction(
                self, target, fname, max_attempts=max_attempts, concurrency=concurrency
            )
            self._functions[fname] = fn
            return fn

        return register if func is None else register(func)

    def register_error(self, *types: type[BaseException]) -> None:
        """Revive these exception types as themselves (built from the stored message)."""
        for t in types:
            self.settings.registered[f"{t.__module__}.{t.__qualname__}"] = t

    @property
    def functions(self) -> Mapping[str, DurableFunction[..., Any]]:
        """The registered functions by name."""
        return dict(self._functions)

    # -- lifecycle ------------------------------------------------------------------
    @property
    def emitter(self) -> EventEmitter:
        """The emitter ticks go out through (built from ``transport`` on first use)."""
        if self._emitter is None:
            self._emitter = EventEmitter.from_url(self.transport)
        return self._emitter

    @property
    def dispatcher(self) -> EventDispatcher:
        """The worker: an EventDispatcher consuming this Durable's ticks."""
        if self._dispatcher is None:
            if self._given_consumer is not None:
                dispatcher = EventDispatcher(
                    self._given_consumer,
                    ack_policy=AckPolicy.MANUAL,
                    max_in_flight=self.max_in_flight,
                    max_unsettled=self.max_parked,
                    name=self.name,
                )
            else:
                dispatcher = EventDispatcher.from_url(
                    self.transport,
                    ack_policy=AckPolicy.MANUAL,
                    max_in_flight=self.max_in_flight,
                    max_unsettled=self.max_parked,
                    name=self.name,
                    **self.consumer_options,
                )
            delivery = capabilities_of(dispatcher.consumer).delivery
            if self._given_consumer is None and delivery == "at-least-once":
                # the consumer may not say; the transport's record may
                delivery = transport_for_url(self.transport).capabilities.delivery
            if delivery != "at-least-once":
                raise ConfigError(
                    f"{type(dispatcher.consumer).__name__} delivers {delivery}: a worker "
                    "killed mid-run would lose the run.\nUse an at-least-once transport "
                    "for durable functions (Redis Streams, RabbitMQ, Kafka, memory)."
                )
            dispatcher.handler(TopicSubscription(topic=self.topic))(self._on_tick)
            self._dispatcher = dispatcher
        return self._dispatcher

    def worker(self) -> EventDispatcher:
        """The worker's dispatcher (start it yourself, or start the Durable)."""
        return self.dispatcher

    async def connect(self) -> None:
        """Open the store and start the emitter: enough to dispatch and read results."""
        if self._connected:
            return
        if self._given_emitter is None and self._given_consumer is None:
            # Refused here too, not only when a worker is built: a process that only
            # dispatches would otherwise leave runs pending that no worker ever hears.
            delivery = transport_for_url(self.transport).capabilities.delivery
            if delivery != "at-least-once":
                raise ConfigError(
                    f"{self.transport!r} delivers {delivery}: a run dispatched over it is "
                    "lost when no worker hears it, and a worker killed mid-run would lose "
                    "the run.\nUse an at-least-once transport for durable functions (Redis "
                    "Streams: redis+streams://, RabbitMQ, Kafka, memory)."
                )
        await self.store.open()
        if isinstance(self.store, CompletionFeed) and self._feed_stop is None:
            self._feed_stop = await self.store.watch_completions(self._wake)
            self._feed = self.store
        if self._given_emitter is None and not self._emitter_started:
            await self.emitter.start()
            self._emitter_started = True
        self._connected = True

    async def start(self) -> None:
        """Connect, then start a worker consuming runs."""
        await self.connect()
        await self.dispatcher.start()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the worker (runs in flight are handed back), the emitter and the store."""
        for timer in list(self._parked):  # their held ticks are handed back by the stop
            timer.cancel()
        if self._parked:
            await asyncio.gather(*self._parked, return_exceptions=True)
        if self._dispatcher is not None:
            await self._dispatcher.stop(timeout)
            self._dispatcher = None
        if self._emitter_started and self._emitter is not None:
            await self._emitter.stop()
            self._emitter = None
            self._emitter_started = False
        feed_stop, self._feed_stop, self._feed = self._feed_stop, None, None
        if feed_stop is not None:
            await feed_stop()
        await self.store.close()
        self._connected = False

    async def wait(self) -> None:
        """Until the worker stops (raises what stopped it)."""
        await self.dispatcher.wait()

    @property
    def running(self) -> bool:
        return self._dispatcher is not None and self._dispatcher.running

    async def __aenter__(self) -> Durable:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self, call: Call[R], *, timeout: float | None = None) -> R:
        """Run ``call`` until it is done and return its result.

        A worker runs in this process for the while, unless the Durable is started already.
        """
        own = not self.running
        if own:
            await self.start()
        try:
            handle = await call.dispatch()
            return await handle.result(timeout)
        finally:
            if own:
                await self.stop()

    def handle(self, run_id: str, function: DurableFunction[..., R]) -> RunHandle[R]:
        """The handle of an existing run, by id (from any process)."""
        return RunHandle(self, run_id, function)

    # -- operations -----------------------------------------------------------------
    async def list_runs(
        self,
        *,
        status: str | Collection[str] | None = None,
        function: str | DurableFunction[..., Any] | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs in the store, newest first.

        Args:
            status: Only runs in this status (or these), e.g. ``"failed"`` or
                ``{"failed", "dead"}`` (see :data:`~dispytch.durable.store.STATUSES`).
            function: Only runs of this function (a durable function or its name).
            limit: At most this many.
        """
        await self.store.open()
        statuses = [status] if isinstance(status, str) else status
        name = function.name if isinstance(function, DurableFunction) else function
        return await self.store.list_runs(status=statuses, function=name, limit=limit)

    async def show_run(self, run_id: str) -> Journal:
        """A run with its steps (results and errors as stored JSON text, each with its
        time) and its children's outcomes: ``journal.run.status``, ``.attempts``,
        ``.created``, ``.updated``, ``journal.steps[position]``.

        Raises:
            DurableError: No such run.
        """
        await self.store.open()
        journal = await self.store.load(run_id)
        if journal is None:
            raise DurableError(f"No run {run_id!r} in {self.store!r}.")
        return journal

    async def retry(self, run_id: str) -> RunRecord:
        """Start a failed, dead or cancelled run over: its attempt budget anew, its failed
        steps (and failed or cancelled children) run again, its finished steps not.

        Returns:
            The run's row, now ``pending``; a worker picks it up.

        Raises:
            DurableError: No such run, or it is not failed, dead or cancelled.
        """
        await self.connect()
        if not await self.store.retry_run(run_id):
            record = await self.store.get_run(run_id)
            if record is None:
                raise DurableError(f"No run {run_id!r} in {self.store!r}.")
            raise DurableError(
                f"Run {run_id!r} is {record.status}; only a failed, dead or cancelled run "
                f"is retried ({', '.join(sorted(RETRYABLE_STATUSES))})."
            )
        await self._send_tick(run_id)
        record = await self.store.get_run(run_id)
        assert record is not None
        return record

    async def cancel(self, run_id: str, *, reason: str = "cancelled") -> list[str]:
        """Cancel a run that is not over, and its unfinished children.

        A pending, retrying, sleeping or waiting run is cancelled at once; a running one
        stops at its next step boundary (the step in flight finishes, its result is not
        journalled, no further step starts). Its status is ``cancelled`` and
        ``await call.result()`` raises :class:`~dispytch.durable.errors.RunCancelledError`.

        Returns:
            The ids cancelled: the run and its descendants (empty when it was over).

        Raises:
            DurableError: No such run.
        """
        await self.connect()
        error = RunCancelledError(f"Run {run_id} was cancelled: {reason}.")
        ids = await self.store.cancel_run(run_id, encode_error(error, retryable=False))
        if not ids:
            if await self.store.get_run(run_id) is None:
                raise DurableError(f"No run {run_id!r} in {self.store!r}.")
            return []
        for rid in ids:
            self._wake(rid)
        # One tick settles it: a worker sees the run final, tells its parent (if any),
        # and acknowledges. Descendants' pending ticks are acknowledged the same way.
        await self._send_tick(run_id)
        return ids

    # -- dispatching ----------------------------------------------------------------
    async def _dispatch(self, call: Call[R], run_id: str | None) -> RunHandle[R]:
        await self.connect()
        rid = run_id or uuid.uuid4().hex
        record, created = await self.store.create_run(
            NewRun(rid, call.function.name, call.args_json, call.args_hash)
        )
        if not created and (
            record.args_hash != call.args_hash or record.function != call.function.name
        ):
            raise IdempotencyConflictError(
                f"Run {rid!r} exists for {record.function} with other arguments.\n"
                "Use a new id for a different call (an id names one call exactly)."
            )
        if created or not record.final:
            await self._send_tick(rid)
        handle = RunHandle(self, rid, call.function)
        handle._fresh = created
        return handle

    async def _send_tick(self, run_id: str) -> None:
        await self.emitter.emit(RunTick(run=run_id), route=self._route, key=run_id)

    def _final_value(
        self, run_id: str, final: tuple[str, str], function: DurableFunction[..., Any]
    ) -> Any:
        status, outcome = final
        if status == "ok":
            return function.codec.decode_result(outcome)
        raise decode_error(run_id, outcome, self.settings.registered)

    def _outcome(self, record: RunRecord, function: DurableFunction[..., Any]) -> Any:
        if record.status == "succeeded":
            return function.codec.decode_result(record.outcome or "null")
        raise decode_error(record.id, record.outcome or "{}", self.settings.registered)

    # -- the worker -----------------------------------------------------------------
    async def _on_tick(self, event: Event[RunTick], ack: Acknowledger, message: Message) -> None:
        run_id = event.body.run
        local = self._local
        local[run_id] = local.get(run_id, 0) + 1
        try:
            await self._execute(run_id, ack, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The store or the broker failed: hand the tick back; the journal has the rest.
            log.exception("Run %s: the tick could not be handled; handing it back.", run_id)
            if not await self._later(ack, message, 1.0, run_id) and ack.claim():
                await self.dispatcher.consumer.nack(message, requeue=True)
        finally:
            left = local.pop(run_id) - 1
            if left:
                local[run_id] = left
            else:
                self._wake(run_id)  # a waiter that did not read meanwhile reads now

    async def _later(self, ack: Acknowledger, message: Message, delay: float, run_id: str) -> bool:
        """Have the tick come back after ``delay``, without holding a worker slot where
        possible; False when the caller should wait and go on itself (a short wait).

        A consumer declaring ``delayed_requeue`` gets it back with ``nack(delay=)``. On
        the others a wait of more than :data:`_INLINE_WAIT` *parks* the tick: the handler
        returns with it unsettled (held by the dispatcher, not counted in
        ``max_in_flight``), and a timer sends a fresh tick at the due time, then
        acknowledges the held one. A crash meanwhile leaves the held tick unacknowledged,
        so the broker delivers it again; a stop hands it back.
        """
        consumer = self.dispatcher.consumer
        if capabilities_of(consumer).delayed_requeue:
            if ack.claim():
                await consumer.nack(message, requeue=True, delay=delay)  # type: ignore[call-arg]
            return True
        if delay <= _INLINE_WAIT:
            await asyncio.sleep(max(delay, 0.0))
            return False
        ack.hold()  # parked on purpose: no "neither acked nor nacked" warning
        timer = asyncio.get_running_loop().create_task(
            self._unpark(run_id, ack, message, delay), name=f"dispytch-durable-park-{run_id}"
        )
        self._parked.add(timer)
        timer.add_done_callback(self._parked.discard)
        return True

    async def _unpark(self, run_id: str, ack: Acknowledger, message: Message, delay: float) -> None:
        await asyncio.sleep(delay)
        if not ack.claim():  # settled meanwhile (a stop handed it back)
            return
        consumer = self.dispatcher.consumer
        try:
            await self._send_tick(run_id)
        except Exception:
            log.exception("Run %s: could not send its tick again; handing it back.", run_id)
            with contextlib.suppress(Exception):
                await consumer.nack(message, requeue=True)
            return
        try:
            await consumer.ack(message)
        except Exception:  # the fresh tick is out; a duplicate tick is harmless
            log.warning("Run %s: acknowledging its parked tick failed.", run_id, exc_info=True)

    async def _execute(self, run_id: str, ack: Acknowledger, message: Message) -> None:
        contention = Backoff(initial=0.01, factor=2.0, cap=min(1.0, self.settings.lease_ttl))
        # A store may read the journal and take the lease in one statement (no limits).
        fused = getattr(self.store, "load_and_acquire", None)
        if fused is not None and any(f.concurrency for f in self._functions.values()):
            fused = None
        while True:
            token: int | None = None
            if fused is not None:
                journal, token = await fused(run_id, self.settings.lease_ttl, _now())
            else:
                journal = await self.store.load(run_id)
            if journal is None:
                log.warning("A tick for run %s, which the journal does not have: dropped.", run_id)
                await ack.ack()
                return
            run = journal.run
            if run.final:
                if run.parent is not None:  # a crash may have come between the two writes
                    await self._notify_parent(run)
                self._limited.pop(run_id, None)
                self._wake(run_id)
                await ack.ack()
                return
            fn = self._functions.get(run.function)
            now = _now()
            wait = run.due - now
            if token is None and wait <= 0:
                limit = fn.concurrency if fn is not None else None
                if fused is None:
                    token = await self.store.acquire(
                        run_id, self.settings.lease_ttl, concurrency=limit
                    )
                if token is None:
                    if limit is not None and run.lease_until < time.time():
                        # over the function's limit: wait, backing off per run
                        backoff = self._limited.setdefault(
                            run_id, Backoff(initial=0.05, factor=1.5, cap=self._limit_cap)
                        )
                        wait = backoff.next()
                    else:  # another worker holds the run
                        wait = min(max(run.lease_until - time.time(), 0.0), contention.next())
                        wait = max(wait, 0.005)
                else:
                    self._limited.pop(run_id, None)
            if token is None:
                if await self._later(ack, message, wait, run_id):
                    return
                continue
            if fn is None:
                error = DurableError(
                    f"No durable function {run.function!r} is registered on this worker.\n"
                    "Register it (same name) on every worker of this topic."
                )
                text = encode_error(error, retryable=False)
                if await self.store.complete(run_id, token, "failed", text):
                    await self._finished(run, "error", text)
                await ack.ack()
                return
            try:
                done = await self._attempt(fn, journal, token)
            except LeaseLostError as exc:
                log.warning("%s", exc)
                continue
            if done:
                await ack.ack()
                return

    async def _attempt(self, fn: DurableFunction[..., Any], journal: Journal, token: int) -> bool:
        """One replay of the run; True when the tick is settled (done or suspended)."""
        run = journal.run
        state = _RunState(self, run.id, token, journal)
        beat = asyncio.create_task(self._heartbeat(run.id, token, state.lease))
        try:
            reset = _current.set(state)
            try:
                args, kwargs = fn.codec.decode_args(run.args)
                value = await fn.invoke(args, kwargs)
                outcome = fn.codec.encode_result(value)
            finally:
                _current.reset(reset)
        except _Suspend:
            await self.store.release(run.id, token, "waiting")
            return True
        except _Sleep as sleeping:
            # The wake-up time is journalled (the step and the run's due): the tick comes
            # back then, on whichever worker; nobody holds the run meanwhile.
            await self.store.release(run.id, token, "sleeping", due=sleeping.wake)
            return False
        except asyncio.CancelledError:
            # Stopping: the tick goes back to the broker; give the lease up so that the
            # next worker need not wait for it to expire.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(run.id, token))
            raise
        except LeaseLostError:
            raise
        except Exception as exc:
            return await self._failed(fn, run, token, exc)
        finally:
            beat.cancel()
        if await self.store.complete(run.id, token, "succeeded", outcome):
            await self._finished(run, "ok", outcome)
        return True

    async def _failed(
        self, fn: DurableFunction[..., Any], run: RunRecord, token: int, exc: Exception
    ) -> bool:
        settings = self.settings
        transient = settings.is_transient(exc)
        attempts = run.attempts + 1
        budget = fn.max_attempts or settings.max_attempts
        if transient and attempts < budget:
            delay = settings.backoff.delay(attempts)
            await self.store.set_retry(run.id, token, attempts, _now() + delay)
            log.warning(
                "Run %s (%s) attempt %d/%d failed (%s: %s); retrying in %.3f s.",
                run.id, fn.name, attempts, budget, type(exc).__name__, exc, delay,
            )  # fmt: skip
            return False
        status = "dead" if transient else "failed"
        error = encode_error(exc, retryable=transient)
        log.error(
            "Run %s (%s) %s after %d attempt(s): %s: %s",
            run.id, fn.name, status, attempts, type(exc).__name__, exc,
        )  # fmt: skip
        if await self.store.complete(run.id, token, status, error):
            await self._finished(run, "error", error)
        return True

    async def _heartbeat(self, run_id: str, token: int, lease: _Lease) -> None:
        interval = self.settings.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.store.renew(run_id, token, self.settings.lease_ttl)
            except Exception as exc:  # the store is down: try again next time
                log.warning("Run %s: renewing the lease failed: %s", run_id, exc)
                continue
            if not renewed:
                lease.lost = True
                log.warning(
                    "Run %s: the lease was taken over or the run cancelled; this attempt "
                    "stops at its next step.",
                    run_id,
                )
                return

    def _wake(self, run_id: str | None, final: tuple[str, str] | None = None) -> None:
        """Wake the waiters of a run (None: every waiter, to read again); ``final``: the
        outcome this process stored, handed to them so that they need not read it."""
        if run_id is None:
            for every in self._waiters.values():
                for event in every:
                    event.set()
            return
        waiters = self._waiters.get(run_id)
        if waiters:
            if final is not None:
                self._finals[run_id] = final
            for event in waiters:
                event.set()

    async def _finished(self, run: RunRecord, status: str, outcome: str) -> None:
        self._wake(run.id, (status, outcome))
        if run.parent is not None:
            await self._complete_child(run.parent, ChildOutcome(status, outcome))

    async def _notify_parent(self, run: RunRecord) -> None:
        assert run.parent is not None
        status = "ok" if run.status == "succeeded" else "error"
        await self._complete_child(run.parent, ChildOutcome(status, run.outcome or "null"))

    async def _complete_child(
        self, parent: tuple[str, str, int, int], outcome: ChildOutcome
    ) -> None:
        parent_id, position, index, count = parent
        _, done = await self.store.complete_child(parent_id, position, index, outcome)
        if done >= count:  # the last child wakes the parent (a duplicate tick is a no-op)
            await self._send_tick(parent_id)

    # -- steps ----------------------------------------------------------------------
    async def _step(self, state: _RunState, call: Call[R]) -> R:
        position = state.next_position()
        fn = call.function
        journal = state.journal
        record = journal.steps.get(position)
        if record is not None:
            if record.function != fn.name or record.args_hash != call.args_hash:
                raise NonDeterminismError(
                    f"Run {state.run_id}, step {position}: the journal has "
                    f"{record.function}(args {record.args_hash[:12]}), the code now calls "
                    f"{fn.name}(args {call.args_hash[:12]}).\nThe code changed incompatibly; "
                    "restore the old step order or start a new run."
                )
            if record.status == "ok":
                result: R = fn.codec.decode_result(record.outcome)
                return result
            raise decode_error(state.run_id, record.outcome, self.settings.registered)
        await state.check()
        reset = _current.set(state.nested(position))
        try:
            value = await fn.invoke(call.args, call.kwargs)
        except Exception as exc:
            if not isinstance(exc, LeaseLostError | NonDeterminismError) and not (
                self.settings.is_transient(exc)
            ):
                # A permanent error is part of the history: the run may catch it.
                error = encode_error(exc, retryable=False)
                step = StepRecord(position, fn.name, call.args_hash, "error", error)
                await self.store.put_step(state.run_id, state.token, step)
                state.confirmed()
                journal.steps[position] = step
            raise
        finally:
            _current.reset(reset)
        text = fn.codec.encode_result(value)
        step = StepRecord(position, fn.name, call.args_hash, "ok", text)
        await self.store.put_step(state.run_id, state.token, step)
        state.confirmed()
        journal.steps[position] = step
        decoded: R = fn.codec.decode_result(text)
        return decoded

    async def _cancel_loser(self, state: _RunState, position: str, index: int, mode: str) -> None:
        child_id = f"{state.run_id}/{position}.{index}"
        error = encode_error(
            RunCancelledError(
                f"Run {child_id} was cancelled: it lost the {mode}() of run {state.run_id}, "
                f"step {position}."
            ),
            retryable=False,
        )
        cancelled = await self.store.cancel_run(child_id, error)
        for rid in cancelled:
            self._wake(rid)
        if child_id in cancelled:
            # Its outcome in the slot now; the child's own late completion is a no-op there.
            outcome = ChildOutcome("error", error)
            await self.store.complete_child(state.run_id, position, index, outcome)
            state.journal.children.setdefault(position, {})[index] = outcome

    async def _sleep(self, state: _RunState, seconds: float) -> None:
        position = state.next_position()
        record = state.journal.steps.get(position)
        if record is not None:
            if record.function != SLEEP_STEP:
                raise NonDeterminismError(
                    f"Run {state.run_id}, step {position}: the journal has "
                    f"{record.function}(args {record.args_hash[:12]}), the code now calls "
                    f"sleep({seconds!r}).\nThe code changed incompatibly; restore the old "
                    "step order or start a new run."
                )
            wake = float(record.outcome)  # the journalled wake-up time wins
        else:
            await state.check()
            wake = _now() + max(0.0, float(seconds))
            digest = hashlib.sha256(canonical(float(seconds)).encode()).hexdigest()[:32]
            step = StepRecord(position, SLEEP_STEP, digest, "ok", repr(wake))
            await self.store.put_step(state.run_id, state.token, step)
            state.journal.steps[position] = step
        left = wake - _now()
        if left <= 0:
            return
        if left <= _HOLD_SLEEP:
            await asyncio.sleep(left)
            return
        raise _Sleep(wake)

    async def _fan(self, state: _RunState, calls: Sequence[Call[Any]], mode: str) -> Any:
        """``gather`` / ``any`` / ``race``: children as runs, their outcomes in the slot."""
        position = state.next_position()
        journal = state.journal
        registered = self.settings.registered
        count = len(calls)
        digest = hashlib.sha256(
            canonical([[c.function.name, c.args_hash] for c in calls]).encode()
        ).hexdigest()[:32]
        record = journal.steps.get(position)
        if record is None:
            record = StepRecord(position, mode, digest, "waiting", str(count))
            await self.store.put_step(state.run_id, state.token, record)
            journal.steps[position] = record
        elif record.function != mode or record.args_hash != digest:
            raise NonDeterminismError(
                f"Run {state.run_id}, step {position}: the journal has {record.function}"
                f"(args {record.args_hash[:12]}), the code now calls {mode} of {count} calls "
                f"(args {digest[:12]}).\nThe code changed incompatibly; restore the old "
                "step order or start a new run."
            )
        done = journal.children.get(position, {})

        def child_error(index: int) -> BaseException:
            child_id = f"{state.run_id}/{position}.{index}"
            return decode_error(child_id, done[index].outcome, registered)

        def value(index: int) -> Any:
            return calls[index].function.codec.decode_result(done[index].outcome)

        if mode == "gather" and len(done) >= count:
            values: list[Any] = []
            for index in range(count):
                if done[index].status != "ok":
                    raise child_error(index)
                values.append(value(index))
            return values
        if mode != "gather":
            # The winner is decided once, under the lease, and journalled: every later
            # replay returns the same one whatever finished meanwhile.
            decision_pos = f"{position}.0"
            decision = journal.steps.get(decision_pos)
            winner: int | None = None
            if decision is not None:
                # After an operator's retry the decided child may run again: wait for it
                # (and for "all failed", for every child, then the lowest success).
                decided = int(decision.outcome)
                if decided in done:
                    winner = decided
                elif decided == -1 and len(done) >= count:
                    ok = [i for i, c in done.items() if c.status == "ok"]
                    winner = min(ok) if ok else -1
            elif mode == "race" and done:
                winner = min(done)
            elif mode == "any":
                ok = [i for i, c in done.items() if c.status == "ok"]
                if ok:
                    winner = min(ok)
                elif len(done) >= count:
                    winner = -1
            if winner is not None:
                if decision is None:
                    step = StepRecord(decision_pos, mode, digest, "ok", str(winner))
                    await self.store.put_step(state.run_id, state.token, step)
                    journal.steps[decision_pos] = step
                # The losers still out are cancelled (each recorded in the slot, so a
                # replay finds nothing left to cancel).
                for index in range(count):
                    if index != winner and index not in done:
                        await self._cancel_loser(state, position, index, mode)
                if winner == -1:
                    raise AnyFailedError(
                        f"Run {state.run_id}, step {position}: all {count} calls of any() "
                        "failed.\nSee .errors for each child's error.",
                        [child_error(i) for i in range(count)],
                    )
                if done[winner].status != "ok":
                    raise child_error(winner)
                return value(winner)
        if count == 0:
            if mode == "gather":
                return []
            raise ValueError(f"{mode}() needs at least one call.")
        await state.check()
        wake = count if mode == "gather" else 1  # any/race: every completion wakes it
        for index, call in enumerate(calls):
            if index in done:
                continue
            child_id = f"{state.run_id}/{position}.{index}"
            child_run, _ = await self.store.create_run(
                NewRun(
                    child_id,
                    call.function.name,
                    call.args_json,
                    call.args_hash,
                    parent=(state.run_id, position, index, wake),
                )
            )
            if child_run.final:
                await self._notify_parent(child_run)
            else:
                await self._send_tick(child_id)
        raise _Suspend


async def sleep(seconds: float) -> None:
    """Sleep durably: inside a durable function, a step that journals its wake-up time.

    A sleep of more than a second suspends the run: its lease is given up, its status is
    ``sleeping`` with ``due`` the wake-up time, and its message comes back then (with a
    delayed redelivery where the transport declares ``delayed_requeue``, else parked by
    the worker without holding a slot). A crash meanwhile changes nothing: whichever
    worker gets the message next waits for the journalled time, and the replay returns
    at once from a sleep already over. Shorter sleeps wait in place. Outside a durable
    function it is ``asyncio.sleep``.
    """
    state = _current.get()
    if state is None:
        await asyncio.sleep(seconds)
        return
    await state.durable._sleep(state, seconds)


async def gather(*calls: Call[Any]) -> list[Any]:
    """Run calls concurrently, each as its own run; their results in input order.

    Inside a durable function the parent suspends (its tick is acknowledged) and the last
    child to finish wakes it: nothing polls. The first failed child (in input order) raises
    its error. Outside a durable function the calls are dispatched and awaited.
    """
    state = _current.get()
    if state is None:
        handles = [await c.dispatch() for c in calls]
        return list(await asyncio.gather(*(h.result() for h in handles)))
    result: list[Any] = await state.durable._fan(state, calls, "gather")
    return result


async def any_success(*calls: Call[Any]) -> Any:
    """The first call to succeed (exported as ``dispytch.durable.any``).

    Inside a durable function: each call a run of its own; the parent wakes on each
    completion and returns the lowest-index success it sees; when every call failed it
    raises :class:`~dispytch.durable.errors.AnyFailedError` holding each error. The choice
    is journalled, so a replay returns the same. The calls still out are cancelled: their
    runs are marked ``cancelled``, running ones stop at their next step (see
    :meth:`Durable.cancel`). Outside a durable function: dispatched and awaited, the
    losers cancelled the same way.
    """
    state = _current.get()
    if state is None:
        if not calls:
            raise ValueError("any() needs at least one call.")
        handles = [await c.dispatch() for c in calls]
        return await _first(handles, "any")
    return await state.durable._fan(state, calls, "any")


async def _first(handles: Sequence[RunHandle[Any]], mode: str) -> Any:
    """Outside a durable function: the first success (``any``) or outcome (``race``) of
    runs already dispatched; the others cancelled."""
    tasks = {asyncio.ensure_future(h.result()): i for i, h in enumerate(handles)}
    pending = set(tasks)
    errors: dict[int, BaseException] = {}
    try:
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(finished, key=tasks.__getitem__):  # lowest index first
                exc = task.exception()
                if exc is None or mode == "race":
                    return task.result()
                errors[tasks[task]] = exc
        raise AnyFailedError(
            f"All {len(handles)} calls of any() failed.",
            [errors[i] for i in range(len(handles))],
        )
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            handle = handles[tasks[task]]
            with contextlib.suppress(Exception):
                await handle.durable.cancel(handle.id, reason=f"it lost a {mode}()")


async def race(*calls: Call[Any]) -> Any:
    """The first call to finish, value or error.

    Inside a durable function: the lowest-index finished call the parent sees when a
    completion wakes it; journalled, so a replay returns the same. The calls still out
    are cancelled (runs marked ``cancelled``, running ones stop at their next step).
    Outside a durable function: dispatched and awaited, the losers cancelled the same way.
    """
    state = _current.get()
    if state is None:
        if not calls:
            raise ValueError("race() needs at least one call.")
        handles = [await c.dispatch() for c in calls]
        return await _first(handles, "race")
    return await state.durable._fan(state, calls, "race")
