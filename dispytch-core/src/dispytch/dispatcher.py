"""``EventDispatcher``: consume, route, run the middleware onion and the handler, settle.

How one message travels (``docs/architecture.md`` walks it file by file)::

    Consumer.listen() -> reader: a free slot, the message, its lane (dispatch/scheduler.py)
      -> route match (dispatch/routing.py: static routes O(1), patterns cached per route)
      -> for each matching handler (filtered by event type):
           dispatcher middlewares -> router middlewares -> handler middlewares
           -> decode Event[T] straight from bytes (serialization.DecoderCache)
           -> dependencies -> handler
      -> settle (dispatch/settle.py): ack (handled / filtered / dead-lettered / skipped),
         nack(requeue) (asked for redelivery), or the failure policy: logged at ERROR,
         then nack(requeue=False)

Concurrency: at most ``max_in_flight`` messages are between ``listen()`` and the end of
their handling; the consumer is not read while that many are held (back-pressure).
Messages that share a :attr:`~dispytch.Message.lane` (a Kafka partition) are handled one
after another, in order, and one lane holds at most ``max_in_flight_per_lane`` of them
before it is paused (or, where the consumer cannot pause, before reading waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dispytch.backoff import Backoff
from dispytch.context import HandlerContext, MessageState, Middleware, MiddlewareLike, Outcome
from dispytch.cqrs.serve import build_responder, unhandled_replier
from dispytch.dispatch.routing import HandlerEntry, RouteTable
from dispytch.dispatch.scheduler import LaneScheduler, default_lane_cap
from dispytch.dispatch.settle import AFTER, BEFORE, MANUAL, AckPolicy, Settler, settle_failed
from dispytch.emitter import EventEmitter
from dispytch.errors import ConsumerClosedError, NotStartedError
from dispytch.event import Event
from dispytch.message import HEADER_EVENT_TYPE, Message
from dispytch.plugins import notify, serializer_for, serializers, transport_for_url
from dispytch.router import Router, resolve_middleware
from dispytch.routes import EventSubscription
from dispytch.serialization import DecoderCache, Serializer
from dispytch.transport import (
    Acknowledger,
    Consumer,
    LanePausing,
    ReadAhead,
    capabilities_of,
)

__all__ = ["AckPolicy", "EventDispatcher", "HandlerEntry"]

log = logging.getLogger("dispytch.dispatcher")

F = TypeVar("F", bound=Callable[..., Any])

_DEAD_LETTERED, _FILTERED = Outcome.DEAD_LETTERED, Outcome.FILTERED
#: Seconds past stop()'s deadline that handing back and closing may each still take (a
#: broker that answers does both in milliseconds; a silent one is not waited for).
_STOP_TAIL = 0.4


def _served_content_types() -> list[str]:
    return [spec.content_type for spec in serializers().values()]


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
        max_in_flight: Messages held at once, running or waiting for their lane (the
            back-pressure bound).
        max_in_flight_per_lane: Messages of one lane (a Kafka partition, a queue, a
            stream) held at once; default a quarter of ``max_in_flight``. A lane at its
            cap is paused where the consumer can pause lanes, else reading waits for it,
            so one slow lane never takes the slots of the others.
        max_unsettled: ``AckPolicy.MANUAL``: messages whose handlers returned without
            settling them that may be held before reading waits (default 4 x
            ``max_in_flight``).
        ack_policy: When messages are acknowledged (see :class:`AckPolicy`).
        stop_timeout: On stop, how long in-flight work may take before it is cancelled
            and handed back to the broker for redelivery.
        requeue_delay: Wait before handing a message back for redelivery (doubling per
            delivery attempt, up to ``max_requeue_delay``); the broker waits instead where
            the consumer declares ``delayed_requeue``.
        max_requeue_delay: The longest such wait.
        owns_consumer: Close the consumer's connection on stop (set by ``from_url``).
        name: For logs.
        emitter: Where events that command and query handlers return or collect go
            (emitted only after the handler succeeded). You start and stop it.
        serializer: Serialises command and query replies (never pickle).
    """

    def __init__(
        self,
        consumer: Consumer,
        *,
        middlewares: Sequence[MiddlewareLike] = (),
        max_in_flight: int = 64,
        max_in_flight_per_lane: int | None = None,
        max_unsettled: int | None = None,
        ack_policy: AckPolicy | str = AckPolicy.AFTER,
        stop_timeout: float = 30.0,
        requeue_delay: float = 0.05,
        max_requeue_delay: float = 5.0,
        owns_consumer: bool = False,
        name: str | None = None,
        emitter: EventEmitter | None = None,
        serializer: str | Serializer = "json",
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1.")
        if max_in_flight_per_lane is not None and max_in_flight_per_lane < 1:
            raise ValueError("max_in_flight_per_lane must be at least 1.")
        if max_unsettled is not None and max_unsettled < 1:
            raise ValueError("max_unsettled must be at least 1.")
        self.consumer = consumer
        self.middlewares: tuple[Middleware, ...] = tuple(resolve_middleware(m) for m in middlewares)
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_lane = (
            default_lane_cap(max_in_flight)
            if max_in_flight_per_lane is None
            else max_in_flight_per_lane
        )
        self.max_unsettled = 4 * max_in_flight if max_unsettled is None else max_unsettled
        self.ack_policy = AckPolicy(ack_policy)
        self.stop_timeout = stop_timeout
        self.requeue_delay = requeue_delay
        self.max_requeue_delay = max_requeue_delay
        self.owns_consumer = owns_consumer
        self.name = name or type(consumer).__name__
        self.emitter = emitter
        self.reply_serializer = serializer
        self.router = Router()
        #: Counters: handled, filtered, dead_lettered, rejected, requeued, skipped,
        #: unknown_route, invalid_payload, failed_handlers, held_unsettled; for commands
        #: and queries also requests_answered, requests_failed, requests_expired,
        #: requests_unhandled (a request no handler takes, answered "no-handler").
        self.stats: Counter[str] = Counter()
        self.decoders = DecoderCache(serializer_for, _served_content_types)
        self._decode = self.decoders.decode
        self._routes = RouteTable()
        self._running = False
        self._stopping = False
        self._reader: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._stop_requested = asyncio.Event()
        self._closed = asyncio.Event()
        self._scheduler = LaneScheduler(self._process, max_in_flight=max_in_flight)
        self._settler = self._new_settler()

    def _new_settler(self) -> Settler:
        return Settler(
            self.consumer,
            self.ack_policy,
            self.stats,
            capabilities=capabilities_of(self.consumer),
            requeue_backoff=Backoff(
                initial=self.requeue_delay, factor=2.0, cap=max(0.0, self.max_requeue_delay)
            ),
            max_unsettled=self.max_unsettled,
            wake=self._scheduler.wake,
            refuse=unhandled_replier(self.consumer, self.name, self.stats),
        )

    # -- construction from a URL ------------------------------------------------------
    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        middlewares: Sequence[MiddlewareLike] = (),
        max_in_flight: int = 64,
        max_in_flight_per_lane: int | None = None,
        max_unsettled: int | None = None,
        ack_policy: AckPolicy | str = AckPolicy.AFTER,
        stop_timeout: float = 30.0,
        requeue_delay: float = 0.05,
        max_requeue_delay: float = 5.0,
        name: str | None = None,
        emitter: EventEmitter | None = None,
        serializer: str | Serializer = "json",
        **options: Any,
    ) -> EventDispatcher:
        """Build a dispatcher whose consumer comes from the plugin serving ``url``.

        The dispatcher owns that consumer: it is connected on :meth:`start` and closed on
        :meth:`stop`. ``options`` go to the transport's consumer factory.

        Raises:
            TransportNotFoundError: No installed plugin serves the scheme (the message says
                what to install).
        """
        spec = transport_for_url(url)
        consumer = spec.consumer_factory(url, **options)
        return cls(
            consumer,
            middlewares=middlewares,
            max_in_flight=max_in_flight,
            max_in_flight_per_lane=max_in_flight_per_lane,
            max_unsettled=max_unsettled,
            ack_policy=ack_policy,
            stop_timeout=stop_timeout,
            requeue_delay=requeue_delay,
            max_requeue_delay=max_requeue_delay,
            owns_consumer=True,
            name=name or spec.name,
            emitter=emitter,
            serializer=serializer,
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

    def command(self, command: type[Any], **kwargs: Any) -> Callable[[F], F]:
        """Register the one handler of a command; see :meth:`Router.command
        <dispytch.Router.command>`."""
        if self._running:
            raise RuntimeError("Register handlers before the dispatcher starts.")
        return self.router.command(command, **kwargs)

    def query(self, query: type[Any], **kwargs: Any) -> Callable[[F], F]:
        """Register the one handler of a query; see :meth:`Router.query
        <dispytch.Router.query>`."""
        if self._running:
            raise RuntimeError("Register handlers before the dispatcher starts.")
        return self.router.query(query, **kwargs)

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
        handlers = self.router.walk()
        around = None
        if any(spec.request is not None for spec, _ in handlers):
            around = build_responder(self, handlers)
        self._routes = RouteTable(handlers, self.middlewares, around=around)
        for entry in self._routes.entries:
            for model in entry.event_types:
                # Resolve the default decoders now (loading the serializer plugins), not
                # on the first message.
                self.decoders.decoder(None, model)

    def decode(self, msg: Message, model: Any) -> Any:
        """``msg``'s payload validated into ``model`` (see
        :meth:`DecoderCache.decode <dispytch.serialization.DecoderCache.decode>`).

        Raises:
            PayloadError: When the payload does not decode or validate, or its content
                type is one no serializer decodes.
        """
        return self.decoders.decode(msg, model)

    def acknowledger_for(self, message: Message) -> Acknowledger:
        """The manual acknowledger of ``message`` (``AckPolicy.MANUAL`` handlers get it)."""
        return self._settler.acknowledger_for(message)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe, connect the consumer and begin consuming in the background."""
        if self._running:
            return
        self._build()
        if not self._routes.entries:
            log.warning("Dispatcher %r starts with no handlers registered.", self.name)
        self.consumer.subscribe(self.subscriptions)
        if isinstance(self.consumer, ReadAhead):
            # What the consumer buffers follows what this dispatcher may hold taken and
            # unsettled (prefetch, COUNT, max_records): max_in_flight, and under MANUAL the
            # held messages too, or a broker window (RabbitMQ's prefetch) would stop
            # deliveries before max_unsettled is reached and settling in batches would stall.
            self.consumer.configure(max_in_flight=self.read_ahead)
        await self.consumer.start()
        self._running = True
        self._stopping = False
        self._failure = None
        self._stopper = None
        self._stop_requested = asyncio.Event()
        self._closed = asyncio.Event()
        self._scheduler = LaneScheduler(
            self._process,
            max_in_flight=self.max_in_flight,
            lane_cap=self.max_in_flight_per_lane,
            pauser=self._pauser(),
        )
        self._settler = self._new_settler()
        self._reader = asyncio.create_task(self._read(), name=f"dispytch-reader-{self.name}")
        notify("dispytch_dispatcher_started", dispatcher=self)

    def _pauser(self) -> LanePausing | None:
        consumer = self.consumer
        if not capabilities_of(consumer).pause_lanes:
            return None
        if isinstance(consumer, LanePausing):
            return consumer
        log.warning(
            "Consumer of %r declares pause_lanes but has no pause()/resume(); a full lane "
            "makes reading wait instead. Fix the transport's capabilities.",
            self.name,
        )
        return None

    @property
    def read_ahead(self) -> int:
        """How many messages this dispatcher may hold taken and not yet settled:
        ``max_in_flight``, or under ``AckPolicy.MANUAL`` ``max_unsettled - 1 +
        max_in_flight`` (what a :class:`~dispytch.transport.ReadAhead` consumer is told)."""
        if self.ack_policy is AckPolicy.MANUAL:
            return self.max_unsettled - 1 + self.max_in_flight
        return self.max_in_flight

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
        self._stop_requested.set()
        scheduler = self._scheduler
        scheduler.close()  # the reader stops waiting for slots and lanes
        deadline = self.stop_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        t_end = loop.time() + deadline
        try:
            await self.consumer.stop()
        except Exception:
            log.exception("Consumer of %r failed to stop fetching", self.name)
        reader = self._reader
        if reader is not None and not reader.done() and reader is not asyncio.current_task():
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
        if not await scheduler.drain(max(0.0, t_end - loop.time())):
            log.warning(
                "Dispatcher %r: %d message(s) still in flight after %.1fs; handing them "
                "back to the broker for redelivery.",
                self.name,
                len(self._settler.inflight),
                deadline,
            )
        scheduler.resume_all()
        # Handing back and closing talk to the broker, so they are bounded too: stop()
        # keeps its deadline while the broker does not answer. What is not handed back
        # stays unsettled at the broker, which delivers it again (Kafka: not committed;
        # RabbitMQ: when the connection goes; Redis Streams: after min_idle_time).
        try:
            await asyncio.wait_for(
                self._settler.hand_back(), max(0.0, t_end - loop.time()) + _STOP_TAIL
            )
        except TimeoutError:
            log.warning(
                "Dispatcher %r: the broker did not take unfinished messages back in time; "
                "they stay unsettled there and are delivered again.",
                self.name,
            )
        try:
            await asyncio.wait_for(
                self.consumer.close(), max(0.0, t_end - loop.time()) + _STOP_TAIL
            )
        except TimeoutError:
            log.warning("Consumer of %r did not close in time; left to the broker.", self.name)
        except Exception:
            log.exception("Consumer of %r failed to close", self.name)
        self._running = False
        self._closed.set()
        notify("dispytch_dispatcher_stopped", dispatcher=self)

    async def wait(self) -> None:
        """Wait until the dispatcher has stopped (by :meth:`stop`, or the consumer ended).

        Raises:
            NotStartedError: The dispatcher was never started.
            ConsumerClosedError: The consumer could not go on; the dispatcher stopped.
        """
        if self._reader is None:
            raise NotStartedError("The dispatcher was never started; call start() first.")
        await self._closed.wait()
        if self._failure is not None:
            raise self._failure

    @property
    def running(self) -> bool:
        """Whether the dispatcher is consuming."""
        return self._running and not self._stopping

    @property
    def in_flight(self) -> int:
        """Messages read and not yet settled, but for those held unsettled under
        ``AckPolicy.MANUAL``: being handled or waiting for their lane (at most
        ``max_in_flight``)."""
        settler = self._settler
        return len(settler.inflight) - len(settler.unsettled)

    @property
    def unsettled(self) -> int:
        """``AckPolicy.MANUAL``: messages held because no code settled them yet."""
        return len(self._settler.unsettled)

    @property
    def failure(self) -> BaseException | None:
        """Why the dispatcher stopped on its own (the consumer's error), else ``None``."""
        return self._failure

    async def __aenter__(self) -> EventDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the consume loop ---------------------------------------------------------------
    async def _read(self) -> None:
        sched = self._scheduler
        settler = self._settler
        submit = sched.submit
        inflight = settler.inflight
        manual = self.ack_policy is MANUAL
        inline = self.max_in_flight == 1
        backoff = Backoff(initial=0.1, factor=2.0, cap=10.0)
        retrying = False  # the last listen() failed: reset the backoff once one works
        while not self._stopping:
            messages = self.consumer.listen()
            try:
                while True:
                    # A free slot first, then the next message: nothing leaves the broker
                    # that the dispatcher could not start handling at once.
                    if manual:
                        # Messages held unsettled count too: below max_unsettled, so that
                        # at most max_unsettled - 1 + max_in_flight are ever held.
                        if sched.free <= 0 or settler.unsettled_full:
                            while (sched.free <= 0 or settler.unsettled_full) and not sched.closed:
                                await sched.park()
                            if self._stopping:
                                break
                    elif sched.free <= 0:
                        await sched.slot()
                        if self._stopping:
                            break
                    sched.free -= 1
                    try:
                        msg = await anext(messages)
                    except BaseException:
                        sched.release()
                        raise
                    inflight.add(msg)
                    if inline:
                        # One at a time anyway: no hand-off to a worker.
                        try:
                            await self._process(msg)
                        finally:
                            sched.release()
                    else:
                        wait = submit(msg)
                        if wait is not None:
                            await wait  # this lane holds its share: see scheduler.py
                    if retrying:
                        backoff.reset()
                        retrying = False
            except StopAsyncIteration:
                if not self._stopping:
                    log.info("Consumer of %r ended; the dispatcher stops.", self.name)
                break
            except asyncio.CancelledError:
                raise
            except ConsumerClosedError as exc:
                if not self._stopping:
                    self._failure = exc
                    log.error("Consumer of %r closed: %s; the dispatcher stops.", self.name, exc)
                break
            except Exception:
                if self._stopping:
                    break
                delay = backoff.next()
                retrying = True
                log.exception(
                    "Consumer of %r failed while fetching; retrying in %.1fs", self.name, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), delay)
            finally:
                aclose = getattr(messages, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
        if not self._stopping:
            # Keep a reference: the loop holds tasks weakly.
            self._stopper = asyncio.get_running_loop().create_task(
                self.stop(), name=f"dispytch-stop-{self.name}"
            )

    async def _process(self, msg: Message) -> None:
        """Handle one message and settle it. Never raises, but for a stop's cancellation
        and for ``SystemExit``/``KeyboardInterrupt`` (after settling the message)."""
        settler = self._settler
        consumer = self.consumer
        policy = self.ack_policy
        if policy is BEFORE:
            await settler.settle(msg, consumer.ack)
        matches = self._routes.match(msg.route)
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
                    await direct(Event(self._decode(msg, entry.model), msg, params))
                except Exception as exc:
                    requeue = settler.failed(entry.spec.name, msg, exc, 1)
                    await settler.conclude(msg, None, 1, requeue, None if requeue else exc)
                    return
                except BaseException as exc:
                    await self._handler_aborted(entry, msg, exc, 1, None)
                    return
                if policy is not AFTER:
                    await settler.conclude(msg, None, 1, False, None)
                    return
                self.stats["handled"] += 1
                # settler.settle(msg, consumer.ack) without its extra coroutine.
                settler.inflight.discard(msg)
                try:
                    await consumer.ack(msg)
                except Exception:
                    settle_failed(msg)
                return
        if not matches:
            await settler.unknown_route(msg)
            return
        etype: str | None = None
        typed = False  # etype read (only handlers limited to an event type need it)
        shared: MessageState | None = None
        ran = 0
        requeue = False
        failed: BaseException | None = None
        dead = False
        filtered = 0
        decode = self._decode
        acknowledge = settler.acknowledger_for
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
            ctx = HandlerContext(shared, entry, params, decode=decode, acknowledge=acknowledge)
            try:
                ctx.result = await entry.chain(ctx)
            except Exception as exc:
                if settler.failed(spec.name, msg, exc, ctx.attempt):
                    requeue = True
                else:
                    failed = exc
            except BaseException as exc:
                await self._handler_aborted(entry, msg, exc, ctx.attempt, shared)
                return
            else:
                outcome = ctx.outcome
                if outcome is _DEAD_LETTERED:
                    dead = True
                elif outcome is _FILTERED:
                    filtered += 1
        if policy is AFTER and ran and not (requeue or dead or filtered) and failed is None:
            # Handled: settler.conclude's common case without its two coroutines.
            self.stats["handled"] += 1
            settler.inflight.discard(msg)
            try:
                await consumer.ack(msg)
            except Exception:
                settle_failed(msg)
            return
        await settler.conclude(msg, shared, ran, requeue, failed, dead=dead, filtered=filtered)

    async def _handler_aborted(
        self,
        entry: HandlerEntry,
        msg: Message,
        exc: BaseException,
        attempt: int,
        shared: MessageState | None,
    ) -> None:
        """A handler ended with a ``BaseException`` that is not an ``Exception``.

        A cancellation by :meth:`stop` is let through (stop hands the message back). A
        ``CancelledError`` the handler raised itself, or another ``BaseException``, is a
        failure: settled by the failure policy, logged at ERROR, the slot returned. Only
        ``SystemExit`` and ``KeyboardInterrupt`` go on up after that.
        """
        me = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and me is not None and me.cancelling():
            raise exc  # cancelled by stop(), which hands the message back
        settler = self._settler
        self.stats["aborted_handlers"] += 1
        settler.failed(entry.spec.name, msg, exc, attempt)
        await settler.conclude(msg, shared, 1, False, exc)
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise exc


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
