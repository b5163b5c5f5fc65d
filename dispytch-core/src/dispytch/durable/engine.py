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
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
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
)
from dispytch.durable.store import (
    ChildOutcome,
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
]

log = logging.getLogger("dispytch.durable")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TRANSPORT = "memory://dispytch-durable"
DEFAULT_STORE = "sqlite:///.dispytch/journal.sqlite3"
DEFAULT_TOPIC = "dispytch.durable.runs"


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


@dataclass
class _RunState:
    durable: Durable
    run_id: str
    token: int
    journal: Journal
    prefix: str = ""
    counter: int = 0

    def next_position(self) -> str:
        self.counter += 1
        return f"{self.prefix}{self.counter}"

    def nested(self, position: str) -> _RunState:
        return _RunState(self.durable, self.run_id, self.token, self.journal, f"{position}.")


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
        self, durable: Durable, func: Callable[P, Any], name: str, *, max_attempts: int | None
    ) -> None:
        self.durable = durable
        self.func = func
        self.name = name
        self.max_attempts = max_attempts
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
            backoff = Backoff(initial=0.002, factor=1.5, cap=0.2)
            event = durable._waiters.setdefault(self.id, asyncio.Event())
            # A run created a moment ago is not over yet: read after the first wait.
            skip_read, self._fresh = self._fresh, False
            try:
                while True:
                    # A worker of this process wakes the wait with the outcome it stored;
                    # the reads are for runs handled elsewhere (none while one runs here:
                    # its worker wakes this wait when it lets the tick go).
                    final = durable._finals.pop(self.id, None)
                    if final is not None:
                        return durable._final_value(self.id, final, self.function)  # type: ignore[no-any-return]
                    event.clear()  # what set it is handled: the outcome above, or a read
                    if self.id in durable._local:
                        wait = durable.settings.lease_ttl
                    elif skip_read:
                        skip_read = False
                        wait = backoff.next()
                    else:
                        record = await durable.store.get_run(self.id)
                        if record is None:
                            raise DurableError(f"No run {self.id!r} in {durable.store!r}.")
                        if record.final:
                            return durable._outcome(record, self.function)  # type: ignore[no-any-return]
                        wait = backoff.next()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), wait)
            finally:
                durable._waiters.pop(self.id, None)
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
        self._waiters: dict[str, asyncio.Event] = {}
        #: Outcomes (``ok``/``error``, JSON text) of runs finished here that a waiter awaits.
        self._finals: dict[str, tuple[str, str]] = {}
        #: Runs a worker of this process is handling now (how many ticks of each).
        self._local: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Durable({self.transport!r}, store={self.store!r}, topic={self.topic!r})"

    # -- registration ---------------------------------------------------------------
    @overload
    def function(self, func: Callable[P, Coroutine[Any, Any, R]]) -> DurableFunction[P, R]: ...

    @overload
    def function(self, func: Callable[P, R]) -> DurableFunction[P, R]: ...

    @overload
    def function(
        self, *, name: str | None = None, max_attempts: int | None = None
    ) -> Callable[[Callable[..., Any]], DurableFunction[..., Any]]: ...

    def function(
        self,
        func: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        max_attempts: int | None = None,
    ) -> Any:
        """Register a sync or async function as durable (usable bare or with options).

        Args:
            name: Its name in the journal and on the wire (default ``module.qualname``):
                workers find the function by it, so keep it when you move the code.
            max_attempts: This function's own attempt budget as a run.

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
                self, target, fname, max_attempts=max_attempts
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
                    name=self.name,
                )
            else:
                dispatcher = EventDispatcher.from_url(
                    self.transport,
                    ack_policy=AckPolicy.MANUAL,
                    max_in_flight=self.max_in_flight,
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
        await self.store.open()
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
        if self._dispatcher is not None:
            await self._dispatcher.stop(timeout)
            self._dispatcher = None
        if self._emitter_started and self._emitter is not None:
            await self._emitter.stop()
            self._emitter = None
            self._emitter_started = False
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
            if not await self._later(ack, message, 1.0) and ack.claim():
                await self.dispatcher.consumer.nack(message, requeue=True)
        finally:
            left = local.pop(run_id) - 1
            if left:
                local[run_id] = left
            else:
                self._wake(run_id)  # a waiter that skipped reads meanwhile reads now

    async def _later(self, ack: Acknowledger, message: Message, delay: float) -> bool:
        """Redeliver the tick after ``delay`` where the consumer can; else False."""
        consumer = self.dispatcher.consumer
        if capabilities_of(consumer).delayed_requeue:
            if ack.claim():
                await consumer.nack(message, requeue=True, delay=delay)  # type: ignore[call-arg]
            return True
        await asyncio.sleep(delay)
        return False

    async def _execute(self, run_id: str, ack: Acknowledger, message: Message) -> None:
        contention = Backoff(initial=0.01, factor=2.0, cap=min(1.0, self.settings.lease_ttl))
        # A store may read the journal and take the lease in one statement.
        fused = getattr(self.store, "load_and_acquire", None)
        while True:
            token: int | None = None
            if fused is not None:
                journal, token = await fused(run_id, self.settings.lease_ttl, time.time())
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
                self._wake(run_id)
                await ack.ack()
                return
            now = time.time()
            wait = run.due - now
            if token is None and wait <= 0:
                if fused is None:
                    token = await self.store.acquire(run_id, self.settings.lease_ttl)
                if token is None:  # another worker holds the run
                    wait = min(max(run.lease_until - now, 0.0), contention.next())
                    wait = max(wait, 0.005)
            if token is None:
                if await self._later(ack, message, wait):
                    return
                continue
            fn = self._functions.get(run.function)
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
        beat = asyncio.create_task(self._heartbeat(run.id, token))
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
            await self.store.set_retry(run.id, token, attempts, time.time() + delay)
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

    async def _heartbeat(self, run_id: str, token: int) -> None:
        interval = self.settings.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.store.renew(run_id, token, self.settings.lease_ttl)
            except Exception as exc:  # the store is down: try again next time
                log.warning("Run %s: renewing the lease failed: %s", run_id, exc)
                continue
            if not renewed:
                log.warning("Run %s: the lease was taken over; this attempt's writes fail.", run_id)
                return

    def _wake(self, run_id: str, final: tuple[str, str] | None = None) -> None:
        event = self._waiters.get(run_id)
        if event is not None:
            if final is not None:  # stored already: the waiter need not read it back
                self._finals[run_id] = final
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
                journal.steps[position] = step
            raise
        finally:
            _current.reset(reset)
        text = fn.codec.encode_result(value)
        step = StepRecord(position, fn.name, call.args_hash, "ok", text)
        await self.store.put_step(state.run_id, state.token, step)
        journal.steps[position] = step
        decoded: R = fn.codec.decode_result(text)
        return decoded

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
                winner = int(decision.outcome)
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
    is journalled, so a replay returns the same. Calls still running go on (they are not
    cancelled). Outside a durable function: dispatched and awaited.
    """
    state = _current.get()
    if state is None:
        handles = [await c.dispatch() for c in calls]
        errors: list[BaseException] = []
        for fut in asyncio.as_completed([h.result() for h in handles]):
            try:
                return await fut
            except Exception as exc:
                errors.append(exc)
        raise AnyFailedError(f"All {len(calls)} calls of any() failed.", errors)
    return await state.durable._fan(state, calls, "any")


async def race(*calls: Call[Any]) -> Any:
    """The first call to finish, value or error.

    Inside a durable function: the lowest-index finished call the parent sees when a
    completion wakes it; journalled, so a replay returns the same. Calls still running go
    on. Outside a durable function: dispatched and awaited.
    """
    state = _current.get()
    if state is None:
        handles = [await c.dispatch() for c in calls]
        for fut in asyncio.as_completed([h.result() for h in handles]):
            return await fut
        raise ValueError("race() needs at least one call.")
    return await state.durable._fan(state, calls, "race")
