"""``EventDispatcher``: consume, route, run the middleware onion and the handler, settle.

How one message travels::

    Consumer.listen() -> route match (static routes O(1), patterns cached per route)
      -> for each matching handler (filtered by event type):
           dispatcher middlewares -> router middlewares -> handler middlewares
           -> decode Event[T] straight from bytes -> dependencies -> handler
      -> ack (handled / filtered / dead-lettered), nack(requeue) (asked for redelivery),
         or the failure policy: logged at ERROR, then nack(requeue=False)

Concurrency: at most ``max_in_flight`` messages are between ``listen()`` and their
acknowledgement; the consumer is not read while that many are in flight (back-pressure).
Messages that share a :attr:`~dispytch.Message.lane` (a Kafka partition) are handled one
after another, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from dispytch.errors import NotStartedError, PayloadError, RequeueMessage
from dispytch.event import Event
from dispytch.middleware.base import (
    CallNext,
    HandlerContext,
    MessageState,
    Middleware,
    MiddlewareLike,
    Outcome,
    compose,
    resolve_middleware,
)
from dispytch.patterns import RoutePattern
from dispytch.router import HandlerSpec, Router
from dispytch.routes import EventSubscription
from dispytch.serialization import JSON_CONTENT_TYPE, Serializer
from dispytch.transport import (
    HEADER_CONTENT_TYPE,
    HEADER_EVENT_TYPE,
    Acknowledger,
    Consumer,
    Message,
)

log = logging.getLogger("dispytch.dispatcher")

F = TypeVar("F", bound=Callable[..., Any])

_ROUTE_CACHE_LIMIT = 4096


class AckPolicy(enum.StrEnum):
    """When a message is acknowledged.

    ``AFTER`` (default, at-least-once): once every handler finished, or the message was
    dead-lettered. ``BEFORE`` (at-most-once): as soon as it is received; a crash or a
    failure afterwards loses it. ``MANUAL``: never by Dispytch; handlers take an
    :class:`~dispytch.Acknowledger` parameter and settle it themselves.
    """

    AFTER = "after"
    BEFORE = "before"
    MANUAL = "manual"


@dataclass(frozen=True)
class HandlerEntry:
    """A handler as the dispatcher runs it: its spec plus the composed middleware chain.

    ``direct`` is the handler itself when it takes only its ``Event[T]`` (``model``), no
    middleware wraps it and its subscription does not filter messages: alone on a route,
    the dispatcher calls it with the event it decoded, without a
    :class:`HandlerContext` or a plan walk.
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
    def plan(self) -> Any:
        return self.spec.plan

    @property
    def event_type(self) -> str | None:
        return self.spec.event_type


_Match = tuple[tuple[HandlerEntry, dict[str, str]], ...]

# Enum members read once: a member looked up on its class costs a descriptor call, and
# these are compared for every message.
_AFTER, _BEFORE, _MANUAL = AckPolicy.AFTER, AckPolicy.BEFORE, AckPolicy.MANUAL
_DEAD_LETTERED, _FILTERED = Outcome.DEAD_LETTERED, Outcome.FILTERED


class EventDispatcher:
    """Consumes messages and runs the handlers registered for them.

    Example::

        dispatcher = EventDispatcher(KafkaConsumer(raw_consumer))

        @dispatcher.handler(KafkaEventSubscription(topic="user_events"))
        async def on_user(event: Event[UserRegistered]): ...

        async with dispatcher:          # start; stop gracefully on exit
            await dispatcher.wait()     # until stopped or the consumer ends

    Args:
        consumer: The transport's consumer.
        middlewares: Outermost middleware level, around every handler.
        max_in_flight: Messages handled at once (and the back-pressure bound).
        ack_policy: When messages are acknowledged (see :class:`AckPolicy`).
        stop_timeout: On stop, how long in-flight work may take before it is cancelled
            and handed back to the broker for redelivery.
        owns_consumer: Close the consumer's connection on stop (set by ``from_url``).
        name: For logs.
    """

    def __init__(
        self,
        consumer: Consumer,
        *,
        middlewares: Sequence[MiddlewareLike] = (),
        max_in_flight: int = 64,
        ack_policy: AckPolicy | str = AckPolicy.AFTER,
        stop_timeout: float = 30.0,
        owns_consumer: bool = False,
        name: str | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1.")
        self.consumer = consumer
        self.middlewares: tuple[Middleware, ...] = tuple(resolve_middleware(m) for m in middlewares)
        self.max_in_flight = max_in_flight
        self.ack_policy = AckPolicy(ack_policy)
        self.stop_timeout = stop_timeout
        #: Wait before handing a message back for redelivery (doubles per delivery attempt,
        #: up to ``max_requeue_delay``).
        self.requeue_delay = 0.05
        self.max_requeue_delay = 5.0
        self.owns_consumer = owns_consumer
        self.name = name or type(consumer).__name__
        self.router = Router()
        #: Counters: handled, filtered, dead_lettered, rejected, requeued, unknown_route,
        #: invalid_payload, failed_handlers.
        self.stats: Counter[str] = Counter()
        self._entries: list[HandlerEntry] = []
        self._static: dict[str, list[HandlerEntry]] = {}
        self._dynamic: list[tuple[RoutePattern, list[HandlerEntry]]] = []
        self._route_cache: dict[str, _Match] = {}
        self._decoders: dict[tuple[str | None, Any], Callable[[bytes], Any]] = {}
        self._running = False
        self._stopping = False
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lanes: dict[Hashable, deque[Message]] = {}
        self._ready: deque[Message] = deque()
        self._free_workers = 0
        self._abandoning = False
        self._slots: _Slots | None = None
        self._inflight: set[Message] = set()
        self._closed = asyncio.Event()

    # -- construction from a URL ------------------------------------------------------
    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        middlewares: Sequence[MiddlewareLike] = (),
        max_in_flight: int = 64,
        ack_policy: AckPolicy | str = AckPolicy.AFTER,
        stop_timeout: float = 30.0,
        name: str | None = None,
        **options: Any,
    ) -> EventDispatcher:
        """Build a dispatcher whose consumer comes from the plugin serving ``url``.

        The dispatcher owns that consumer: it is connected on :meth:`start` and closed on
        :meth:`stop`. ``options`` go to the transport's consumer factory.

        Raises:
            TransportNotFoundError: No installed plugin serves the scheme (the message says
                what to install).
        """
        from dispytch.plugins import transport_for_url

        spec = transport_for_url(url)
        consumer = spec.consumer_factory(url, **options)
        return cls(
            consumer,
            middlewares=middlewares,
            max_in_flight=max_in_flight,
            ack_policy=ack_policy,
            stop_timeout=stop_timeout,
            owns_consumer=True,
            name=name or spec.name,
        )

    # -- registration -------------------------------------------------------------------
    def handler(
        self,
        subscription: EventSubscription | None = None,
        *,
        topic: str | None = None,
        event: str | None = None,
        middlewares: Sequence[MiddlewareLike] = (),
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register a handler; see :meth:`Router.handler <dispytch.Router.handler>`."""
        if self._running:
            raise RuntimeError("Register handlers before the dispatcher starts.")
        return self.router.handler(
            subscription, topic=topic, event=event, middlewares=middlewares, name=name
        )

    def add_router(self, router: Router) -> None:
        """Add a router's handlers (and those of routers nested in it)."""
        if self._running:
            raise RuntimeError("Add routers before the dispatcher starts.")
        self.router.include_router(router)

    include_router = add_router

    @property
    def subscriptions(self) -> list[EventSubscription]:
        """Every distinct subscription of the registered handlers."""
        seen: list[EventSubscription] = []
        for spec, _ in self.router.walk():
            if spec.subscription not in seen:
                seen.append(spec.subscription)
        return seen

    def _build(self) -> None:
        self._entries = []
        self._static = {}
        self._dynamic = []
        self._route_cache = {}
        dynamic: dict[RoutePattern, list[HandlerEntry]] = {}
        for spec, router_mws in self.router.walk():
            middlewares = (*self.middlewares, *router_mws, *spec.middlewares)
            plan = spec.plan
            chain = compose(middlewares, plan.call)
            plain = not middlewares and not spec.subscription.filters_messages
            direct = plan.direct if plain else None
            entry = HandlerEntry(spec, chain, direct, plan.event_types[0] if direct else None)
            for model in plan.event_types:
                # Resolve the default decoders now (loading the serializer plugins), not
                # on the first message.
                self._decoder(None, model)
            self._entries.append(entry)
            pattern = spec.subscription.compiled
            if pattern.is_static:
                self._static.setdefault(pattern.pattern, []).append(entry)
            else:
                dynamic.setdefault(pattern, []).append(entry)
        self._dynamic = list(dynamic.items())

    def _match(self, route: str) -> _Match:
        found = self._route_cache.get(route)
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
        if len(self._route_cache) >= _ROUTE_CACHE_LIMIT:
            self._route_cache.clear()
        self._route_cache[route] = result
        return result

    def _decoder(self, content_type: str | None, model: Any) -> Callable[[bytes], Any]:
        key = (content_type, model)
        decode = self._decoders.get(key)
        if decode is None:
            serializer: Serializer = _serializer(content_type or JSON_CONTENT_TYPE)
            decode = self._decoders[key] = serializer.decoder(model)
        return decode

    def decode(self, msg: Message, model: Any) -> Any:
        """``msg``'s payload validated into ``model``, by the serializer its content type
        names (JSON when it names none).

        Raises:
            PayloadError: When the payload does not decode or validate (the message says
                which fields are wrong).
        """
        decode = self._decoder(msg.headers.get(HEADER_CONTENT_TYPE), model)
        try:
            return decode(msg.payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[:3]
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in first
            )
            raise PayloadError(
                f"Payload on route {msg.route!r} ({len(msg.payload)} bytes) is not a valid "
                f"{getattr(model, '__name__', model)}: {detail}"
            ) from exc
        except Exception as exc:
            raise PayloadError(
                f"Payload on route {msg.route!r} ({len(msg.payload)} bytes) could not be "
                f"decoded: {type(exc).__name__}: {exc}"
            ) from exc

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe, connect the consumer and begin consuming in the background."""
        if self._running:
            return
        self._build()
        if not self._entries:
            log.warning("Dispatcher %r starts with no handlers registered.", self.name)
        self.consumer.subscribe(self.subscriptions)
        await self.consumer.start()
        self._running = True
        self._stopping = False
        self._closed = asyncio.Event()
        self._slots = _Slots(self.max_in_flight)
        self._lanes = {}
        self._ready = deque()
        self._free_workers = 0
        self._tasks = set()
        self._abandoning = False
        self._loop = asyncio.get_running_loop()
        self._reader = asyncio.create_task(self._read(), name=f"dispytch-reader-{self.name}")
        from dispytch.plugins.manager import notify

        notify("dispytch_dispatcher_started", dispatcher=self)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop fetching, let in-flight work finish (up to ``timeout``,
        default ``stop_timeout``), hand back what did not finish, then close.
        """
        if self._reader is None:
            return  # never started: nothing to stop
        if not self._running or self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        deadline = self.stop_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        t_end = loop.time() + deadline
        try:
            await self.consumer.stop()
        except Exception:
            log.exception("Consumer of %r failed to stop fetching", self.name)
        reader = self._reader
        if reader is not None and not reader.done():
            try:
                await asyncio.wait_for(asyncio.shield(reader), max(0.0, t_end - loop.time()))
            except TimeoutError:
                await _cancel(reader)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not reader.done() or (me is not None and me.cancelling()):
                    await _cancel(reader)
                    raise  # the caller of stop() was cancelled: let it be
                # else the reader itself was cancelled (a crash): carry on stopping
        pending_tasks = set(self._tasks)
        while pending_tasks:
            # Tasks finishing may start the next message of their lane: wait again.
            _, still = await asyncio.wait(pending_tasks, timeout=max(0.0, t_end - loop.time()))
            if still:
                log.warning(
                    "Dispatcher %r: %d message(s) still in flight after %.1fs; handing them "
                    "back to the broker for redelivery.",
                    self.name,
                    len(self._inflight),
                    deadline,
                )
                self._abandoning = True  # cancelled work must not start what waits behind it
                for t in still:
                    t.cancel()
                await asyncio.gather(*still, return_exceptions=True)
                self._lanes.clear()
                break
            pending_tasks = set(self._tasks)
        await self._requeue_unsettled()
        try:
            await self.consumer.close()
        except Exception:
            log.exception("Consumer of %r failed to close", self.name)
        self._running = False
        self._tasks = set()
        self._lanes = {}
        self._closed.set()
        from dispytch.plugins.manager import notify

        notify("dispytch_dispatcher_stopped", dispatcher=self)

    async def _requeue_unsettled(self) -> None:
        for msg in list(self._inflight):
            self._inflight.discard(msg)
            try:
                await self.consumer.nack(msg, requeue=True)
            except Exception:
                log.exception("Could not hand %r back to the broker", msg)

    def acknowledger_for(self, message: Message) -> Acknowledger:
        """The manual acknowledger of ``message`` (``AckPolicy.MANUAL`` handlers get it)."""
        return Acknowledger(self.consumer, message, on_settled=self._inflight.discard)

    async def wait(self) -> None:
        """Wait until the dispatcher has stopped (by :meth:`stop`, or the consumer ended)."""
        if self._reader is None:
            raise NotStartedError("The dispatcher was never started; call start() first.")
        await self._closed.wait()

    @property
    def running(self) -> bool:
        """Whether the dispatcher is consuming."""
        return self._running and not self._stopping

    async def __aenter__(self) -> EventDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the consume loop ---------------------------------------------------------------
    async def _read(self) -> None:
        slots = self._slots
        assert slots is not None
        submit = self._submit
        inflight = self._inflight
        inline = self.max_in_flight == 1
        backoff = 0.1
        while not self._stopping:
            messages = self.consumer.listen()
            try:
                while True:
                    # A free slot first, then the next message: nothing leaves the broker
                    # that the dispatcher could not start handling at once.
                    if slots.free <= 0:
                        await slots.wait()
                    slots.free -= 1
                    try:
                        msg = await anext(messages)
                    except BaseException:
                        slots.release()
                        raise
                    inflight.add(msg)
                    if inline:
                        # One at a time anyway: no hand-off to a worker.
                        try:
                            await self._process(msg)
                        finally:
                            slots.release()
                    else:
                        submit(msg)
                    backoff = 0.1
            except StopAsyncIteration:
                if self._stopping:
                    break
                log.info("Consumer of %r ended; the dispatcher stops.", self.name)
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:
                    break
                log.exception(
                    "Consumer of %r failed while fetching; retrying in %.1fs", self.name, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                aclose = getattr(messages, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
        if not self._stopping:
            asyncio.get_running_loop().create_task(self.stop())

    # Scheduling. Workers are tasks that handle messages from a deque until it is empty,
    # then end. Messages without a lane share one deque and as many workers as it takes
    # to keep every free slot busy: a new worker starts only when a message waits and no
    # worker is free to take it. A lane has its own deque and at most one worker, so its
    # messages are handled in order. While handlers keep up, a burst of messages costs
    # one task in all, not one per message.
    def _submit(self, msg: Message) -> None:
        lane = msg.lane
        if lane is None:
            self._ready.append(msg)
            if self._free_workers == 0:
                self._free_workers += 1
                self._spawn(self._ready, None)
            return
        waiting = self._lanes.get(lane)
        if waiting is not None:
            waiting.append(msg)
            return
        waiting = self._lanes[lane] = deque((msg,))
        self._spawn(waiting, lane)

    def _spawn(self, queue: deque[Message], lane: Hashable | None) -> None:
        task = self._loop.create_task(self._work(queue, lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, queue: deque[Message], lane: Hashable | None) -> None:
        slots = self._slots
        assert slots is not None
        process = self._process
        shared = lane is None
        try:
            while queue and not self._abandoning:
                msg = queue.popleft()
                if shared:
                    self._free_workers -= 1
                    if queue and not self._free_workers:
                        # More is waiting and this worker may be busy for a while.
                        self._free_workers += 1
                        self._spawn(queue, None)
                try:
                    await process(msg)
                finally:
                    slots.release()
                    if shared:
                        self._free_workers += 1
        finally:
            if shared:
                self._free_workers -= 1
            else:
                self._lanes.pop(lane, None)

    async def _process(self, msg: Message) -> None:
        """Handle one message and settle it. Never raises (but for cancellation)."""
        consumer = self.consumer
        policy = self.ack_policy
        if policy is _BEFORE:
            await self._settle(msg, consumer.ack)
        matches = self._match(msg.route)
        if len(matches) == 1:
            entry, params = matches[0]
            direct = entry.direct
            wanted = entry.spec.event_type
            if direct is not None and (
                wanted is None or msg.headers.get(HEADER_EVENT_TYPE) in (None, wanted)
            ):
                # The common case, kept short: one plain handler that takes this message
                # (another event type goes the long way, to be counted as skipped).
                try:
                    await direct(Event(self.decode(msg, entry.model), msg, params))
                except asyncio.CancelledError:
                    raise  # cancelled by stop(), which hands the message back
                except Exception as exc:
                    requeue = self._handler_failed(entry, msg, exc, 1)
                    await self._conclude(msg, None, 1, requeue, None if requeue else exc)
                    return
                if policy is not _AFTER:
                    await self._conclude(msg, None, 1, False, None)
                    return
                self.stats["handled"] += 1
                # _settle(msg, consumer.ack) without its extra coroutine.
                self._inflight.discard(msg)
                try:
                    await consumer.ack(msg)
                except Exception:
                    _settle_failed(msg)
                return
        if not matches:
            self.stats["unknown_route"] += 1
            log.warning(
                "No handler for route %r (%d bytes, headers %s); rejecting it.",
                msg.route,
                len(msg.payload),
                dict(msg.headers),
            )
            if policy is _AFTER:
                await self._settle(msg, consumer.nack, requeue=False)
            else:
                self._inflight.discard(msg)
            return
        etype: str | None = None
        typed = False  # etype read (only handlers limited to an event type need it)
        shared: MessageState | None = None
        ran = 0
        requeue = False
        failed: BaseException | None = None
        dead = False
        filtered = 0
        for entry, params in matches:
            spec = entry.spec
            if spec.event_type is not None:
                if not typed:
                    etype, typed = msg.headers.get(HEADER_EVENT_TYPE), True
                if etype is not None and etype != spec.event_type:
                    continue
            sub = spec.subscription
            if sub.filters_messages and not sub.accepts(msg):
                continue
            ran += 1
            if shared is None:
                shared = MessageState(msg)
            ctx = HandlerContext(shared, entry, params, self)
            try:
                ctx.result = await entry.chain(ctx)
            except asyncio.CancelledError:
                raise  # cancelled by stop(), which hands the message back
            except Exception as exc:
                if self._handler_failed(entry, msg, exc, ctx.attempt):
                    requeue = True
                else:
                    failed = exc
            else:
                outcome = ctx.outcome
                if outcome is _DEAD_LETTERED:
                    dead = True
                elif outcome is _FILTERED:
                    filtered += 1
        await self._conclude(msg, shared, ran, requeue, failed, dead=dead, filtered=filtered)

    def _handler_failed(
        self, entry: HandlerEntry, msg: Message, exc: Exception, attempt: int
    ) -> bool:
        """Log and count a handler's failure; True when it asked for redelivery."""
        if isinstance(exc, RequeueMessage):
            log.warning("Handler %r asked to redeliver %r: %s", entry.name, msg.route, exc)
            return True
        self.stats["failed_handlers"] += 1
        if isinstance(exc, PayloadError):
            self.stats["invalid_payload"] += 1
        log.error(
            "Handler %r failed for good on route %r (%d bytes, attempt %d, delivery %d): %s: %s",
            entry.name,
            msg.route,
            len(msg.payload),
            attempt,
            msg.attempt,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return False

    async def _conclude(
        self,
        msg: Message,
        shared: MessageState | None,
        ran: int,
        requeue: bool,
        failed: BaseException | None,
        *,
        dead: bool = False,
        filtered: int = 0,
    ) -> None:
        """Count how the handling of ``msg`` ended and settle it as the policy says."""
        consumer = self.consumer
        policy = self.ack_policy
        if requeue:
            self.stats["requeued"] += 1
            if policy is _AFTER:
                # Brokers redeliver a requeued message at once; a short backoff that grows
                # with the delivery attempt keeps a persistent cause (a dead-letter route
                # that is down) from turning into a hot loop.
                delay = min(self.requeue_delay * 2 ** (msg.attempt - 1), self.max_requeue_delay)
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._settle(msg, consumer.nack, requeue=True)
                return
        elif failed is not None:
            self.stats["rejected"] += 1
            if policy is _AFTER:
                await self._settle(msg, consumer.nack, requeue=False)
                return
        elif dead:
            self.stats["dead_lettered"] += 1
        elif ran and filtered == ran:
            self.stats["filtered"] += 1
        elif ran:
            self.stats["handled"] += 1
        else:
            # Handlers take this route, but none takes this event type.
            self.stats["skipped"] += 1
            log.debug(
                "No handler for event type %r on %r; acknowledging it.",
                msg.headers.get(HEADER_EVENT_TYPE),
                msg.route,
            )
        if policy is _AFTER:
            await self._settle(msg, consumer.ack)
        elif policy is _MANUAL:
            ack = shared.acknowledger if shared is not None else None
            if ack is None or not ack.settled:
                log.warning(
                    "Manual acknowledgement: a message on %r was neither acked nor nacked by "
                    "its handlers; the broker will deliver it again.",
                    msg.route,
                )
            self._inflight.discard(msg)
        else:
            self._inflight.discard(msg)

    async def _settle(self, msg: Message, action: Callable[..., Any], **kw: Any) -> None:
        self._inflight.discard(msg)
        try:
            await action(msg, **kw)
        except Exception:
            _settle_failed(msg)


def _settle_failed(msg: Message) -> None:
    log.exception(
        "Could not settle a message on %r with the broker; it will be delivered again",
        msg.route,
    )


class _Slots:
    """The in-flight bound. Only the reader takes slots, workers give them back: a
    counter and at most one waiter, without asyncio.Semaphore's per-call coroutine and
    FIFO bookkeeping, which a single taker does not need."""

    __slots__ = ("_waiter", "free")

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Return once a slot is free (the caller then takes it: ``free -= 1``)."""
        while self.free <= 0:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        self.free += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _serializer(content_type: str) -> Serializer:
    from dispytch.plugins import serializer_for

    return serializer_for(content_type)
