"""``RabbitMQConsumer``: acknowledged consumption of RabbitMQ queues over aio-pika."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Mapping,
    Sequence,
)
from typing import Any

import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractQueue,
    AbstractRobustChannel,
)
from aiormq.abc import DeliveredMessage
from dispytch.backoff import Backoff
from dispytch.cqrs.wire import HEADER_CORRELATION_ID
from dispytch.errors import ConsumerClosedError, NotStartedError
from dispytch.rabbitmq import _codec, _compat, _delay
from dispytch.rabbitmq._common import (
    CONNECTION_ERRORS,
    connect_with,
    declare_exchanges,
    exchange_exists,
    log,
)
from dispytch.rabbitmq.options import CONSUMER_OPTIONS, PRODUCER_OPTIONS, parse
from dispytch.rabbitmq.routes import (
    DEFAULT_TOPIC_EXCHANGE,
    RabbitMQEventSubscription,
    RabbitMQExchange,
)
from dispytch.routes import EventSubscription, TopicSubscription
from dispytch.transport import HEADER_CONTENT_TYPE, Capabilities, Message
from pamqp.commands import Basic

_compat.install_tolerant_decoding()

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    aiormq.exceptions.AMQPError,
    *CONNECTION_ERRORS,
)

_STOP = object()
#: Seconds ``stop``/``close`` spend at most on the broker (cancelling consumers, closing
#: the channel and the connection): an unreachable broker must not hold a stop up.
_STOP_BUDGET = 2.0
#: Seconds ``close`` spends at most closing the channel and connection (together): the
#: broker requeues what a channel held however it was closed.
_CLOSE_BUDGET = 0.5
#: The prefetch before a dispatcher says its ``max_in_flight`` (its default).
DEFAULT_PREFETCH = 64
_CANCEL_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    aiormq.exceptions.AMQPError,
    *CONNECTION_ERRORS,
)

ConnectionFactory = Callable[[], Awaitable[AbstractConnection]]

#: A robust channel closed while its connection stays up (a channel error) is restored by
#: aio-pika at once; when that fails (a re-declaration the broker refuses), the consumer
#: tries again with this backoff (seconds), and after ``_RESTORE_ATTEMPTS`` failures in a
#: row ends (``ConsumerClosedError``) instead of consuming nothing while looking alive.
_RESTORE_BACKOFF = {"initial": 0.5, "factor": 2.0, "cap": 5.0}
_RESTORE_ATTEMPTS = 5
#: Seconds one restore attempt may take.
_RESTORE_TIMEOUT = 10.0


def capabilities(*, ordered: bool, delayed_requeue: bool = True) -> Capabilities:
    """What a RabbitMQ consumer offers (``ordered=True``: lanes, one per queue;
    ``delayed_requeue``: delay queues, on unless turned off)."""
    return Capabilities(
        delivery="at-least-once",
        ordered_lanes=ordered,
        requeue=True,
        delayed_requeue=delayed_requeue,
        pause_lanes=True,
        lease_extension=False,
        request_reply=True,
    )


class _Consuming:
    """One ``basic.consume`` of one queue."""

    __slots__ = ("channel", "queue", "tag")

    def __init__(self, queue: AbstractQueue, channel: aiormq.abc.AbstractChannel, tag: str):
        self.queue = queue
        self.channel = channel
        self.tag = tag


class RabbitMQConsumer:
    """Consumes RabbitMQ queues and acknowledges each delivery once Dispytch is done.

    One constructor, over what you have:

    * aio-pika queues you declared and bound (the seed documents' way)::

          queue = await channel.declare_queue("user.events", durable=True)
          await queue.bind(exchange, routing_key="user.*")
          dispatcher = EventDispatcher(RabbitMQConsumer(queue))

      It consumes those queues and binds nothing. Use ``aio_pika.connect_robust`` so that
      consuming resumes after a reconnection; over a plain connection a lost channel ends
      the consumer (:class:`~dispytch.errors.ConsumerClosedError`).
    * an aio-pika connection, or a connection factory (``lambda:
      aio_pika.connect_robust(url)``, what :meth:`from_url` builds): the consumer opens
      its own channel and, at start, declares each subscription's queue (durable) and
      binds it to the subscription's exchange with its routing key (``{name}`` segments
      become ``*``); a :class:`~dispytch.routes.TopicSubscription` binds ``queue`` to
      ``topic_exchange`` (``amq.topic``). Exchanges are declared only when listed in
      ``declare``; any other must exist already.

    Back-pressure: the broker sends at most ``prefetch_count`` unacknowledged deliveries
    per queue consumed (``basic.qos``), and nothing else buffers. Unless set explicitly,
    ``prefetch_count`` follows the dispatcher's ``max_in_flight`` (the dispatcher calls
    :meth:`configure`); over your channels it is set there, except on a robust channel
    that already has a prefetch of yours (then a mismatch is logged once).

    Settling: ``ack`` acknowledges; ``nack(requeue=True)`` hands the delivery back
    (``basic.nack``, redelivered with the redelivered flag, so ``Message.attempt`` is 2
    or, on quorum queues, ``x-delivery-count + 1``); ``nack(requeue=True, delay=s)``
    parks it in an auto-expiring delay queue that dead-letters it back after ``s``
    (rounded up to a bucket; see :meth:`nack`); ``nack(requeue=False)`` rejects it
    (``basic.reject`` without requeue): the queue's dead-letter exchange receives it when
    one is configured (``x-dead-letter-exchange``), otherwise the broker drops it.

    A consumer that cannot go on (its channel closed for good, the broker cancelled it
    because its queue was deleted) raises :class:`~dispytch.errors.ConsumerClosedError`
    from ``listen()``: the dispatcher stops instead of waiting forever.

    ``Message.route`` is the routing key; ``Message.metadata`` holds ``exchange``,
    ``queue``, ``routing_key``, ``delivery_tag``, ``redelivered``, ``message_id`` and
    ``consumer_tag``. With ``ordered=True`` the lane is the queue name, and
    :meth:`pause`/:meth:`resume` of a lane cancel and resume that queue's
    ``basic.consume``, so the broker stops sending it.

    Args:
        *sources: aio-pika queues to consume, or one connection or connection factory.
        owns: Whether ``close()`` closes the connection (default: only one opened through
            a factory). Queues' channels are never closed: they are yours.
        queue: With a connection/factory: the queue of subscriptions that name none (the
            consumer group: consumers on one queue share its messages).
        group: Another name for ``queue``.
        prefetch_count: Unacknowledged deliveries in flight per queue consumed. Default:
            the dispatcher's ``max_in_flight`` (64 before it says).
        declare: With a connection/factory: exchanges to declare at start.
        queue_arguments: With a connection/factory: arguments of the queues it declares
            (``{"x-dead-letter-exchange": "dlx", "x-queue-type": "quorum"}``).
        topic_exchange: The exchange :class:`~dispytch.routes.TopicSubscription` binds to.
        ordered: Hand messages of one queue over one after another (``Message.lane`` =
            the queue name). Default: handled concurrently.
        delayed_requeue: ``nack(requeue=True, delay=s)`` through delay queues
            (``dispytch.delay.<ms>ms.<queue>``, declared on demand, deleted by the broker
            when unused), declared as ``Capabilities.delayed_requeue``. ``False``: a delay
            is waited in the process, holding the delivery.
        connect_timeout: Seconds a factory may take to connect.

    Raises:
        TypeError: Sources of another kind, or queues mixed with a connection.
        ConfigError: An invalid option, or declaring options over queues.
    """

    def __init__(
        self,
        *sources: AbstractQueue | AbstractConnection | ConnectionFactory,
        owns: bool | None = None,
        queue: str | None = None,
        group: str | None = None,
        prefetch_count: int | None = None,
        declare: Sequence[RabbitMQExchange] = (),
        queue_arguments: dict[str, Any] | None = None,
        topic_exchange: str = DEFAULT_TOPIC_EXCHANGE,
        ordered: bool = False,
        delayed_requeue: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        _, opts = parse(
            None,
            CONSUMER_OPTIONS,
            (),
            {
                "queue": queue,
                "group": group,
                "prefetch_count": prefetch_count,
                "topic_exchange": topic_exchange,
                "ordered": ordered,
                "delayed_requeue": delayed_requeue,
                "connect_timeout": connect_timeout,
            },
        )
        self._user_queues: list[AbstractQueue] = []
        self._connection: AbstractConnection | None = None
        self._factory: ConnectionFactory | None = None
        for source in sources:
            if isinstance(source, AbstractQueue):
                self._user_queues.append(source)
            elif isinstance(source, AbstractConnection) and len(sources) == 1:
                self._connection = source
            elif callable(source) and len(sources) == 1:
                self._factory = source
            else:
                raise TypeError(
                    f"RabbitMQConsumer cannot consume from {source!r}.\nPass aio-pika "
                    "queues, or one connection or connection factory: "
                    "RabbitMQConsumer.from_url('amqp://guest:guest@localhost:5672/', "
                    "queue='my-service')."
                )
        if not sources:
            raise TypeError(
                "RabbitMQConsumer needs aio-pika queues (RabbitMQConsumer(queue, ...)) or a "
                "connection (RabbitMQConsumer.from_url(url, queue='my-service')).\n"
                "Pass one of them."
            )
        self.queue_name = opts.queue_name()
        if self._user_queues and (self.queue_name is not None or declare or queue_arguments):
            from dispytch.errors import ConfigError

            raise ConfigError(
                "queue=, declare= and queue_arguments= are for consumers that declare their "
                "queues (over a connection or a URL).\nOver aio-pika queues, declare and "
                "bind them on your channel yourself."
            )
        self.owns = self._factory is not None if owns is None else owns
        self._explicit_prefetch = opts.prefetch_count
        self._max_in_flight = DEFAULT_PREFETCH
        self._mismatch_logged = False
        self._declare = tuple(declare)
        self.queue_arguments = dict(queue_arguments) if queue_arguments else None
        self.topic_exchange = opts.topic_exchange
        self.ordered = opts.ordered
        self.delayed_requeue = opts.delayed_requeue
        self.connect_timeout = opts.connect_timeout
        self.capabilities = capabilities(ordered=self.ordered, delayed_requeue=self.delayed_requeue)
        self._subscriptions: list[EventSubscription] = []
        self._channel: AbstractChannel | None = None  # the channel this consumer opened
        self._queues: list[AbstractQueue] = []
        self._dlx_channel: aiormq.abc.AbstractChannel | None = None
        # One dead-letter publish in flight at a time (see _dead_letter_with_error).
        self._dlx_lock = asyncio.Lock()
        # Delayed requeue: the confirm-mode channel copies go out on, and when each delay
        # queue was last declared (loop time).
        self._delay_channel: aiormq.abc.AbstractChannel | None = None
        self._delay_open_lock = asyncio.Lock()
        self._delay_queues: dict[str, float] = {}
        self._consuming: dict[str, _Consuming] = {}
        self._watched: list[AbstractChannel] = []
        self._paused: set[str] = set()
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._restorers: dict[int, asyncio.Task[None]] = {}  # id(channel) -> its watcher
        self._handoff: asyncio.Queue[Any] = asyncio.Queue()
        self._dead: ConsumerClosedError | None = None
        self._running = False
        self._stopping = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQConsumer:
        """A consumer owning a robust connection to ``url``.

        Query parameters ``queue`` (or ``group``), ``prefetch_count``, ``topic_exchange``,
        ``ordered`` and ``connect_timeout`` and keyword ``options`` (which win) configure
        it; aio-pika's own parameters stay in the URL; producer options are ignored.

        Raises:
            ConfigError: An unknown or invalid option.
        """
        extra = {k: options.pop(k) for k in ("declare", "queue_arguments", "owns") if k in options}
        clean, opts = parse(url, CONSUMER_OPTIONS, PRODUCER_OPTIONS, options)
        assert clean is not None
        values = opts.model_dump(include=set(CONSUMER_OPTIONS))
        extra.setdefault("owns", True)
        return cls(connect_with(clean, within=opts.connect_timeout), **extra, **values)

    @property
    def queues(self) -> list[AbstractQueue]:
        """The aio-pika queues being consumed (after ``start``)."""
        return list(self._queues)

    @property
    def prefetch_count(self) -> int:
        """What the broker sends ahead per queue: the explicit setting, else the
        dispatcher's ``max_in_flight``."""
        if self._explicit_prefetch is not None:
            return self._explicit_prefetch
        return self._max_in_flight

    # ----------------------------------------------------------------- setup
    def configure(self, *, max_in_flight: int) -> None:
        """Follow the dispatcher's ``max_in_flight`` (called before ``start``).

        An explicit ``prefetch_count`` that differs is kept, and logged once.
        """
        self._max_in_flight = max_in_flight
        explicit = self._explicit_prefetch
        if explicit is not None and explicit != max_in_flight and not self._mismatch_logged:
            self._mismatch_logged = True
            log.warning(
                "RabbitMQConsumer prefetch_count=%d differs from the dispatcher's "
                "max_in_flight=%d: %s. Leave prefetch_count unset to follow max_in_flight.",
                explicit,
                max_in_flight,
                "deliveries wait taken but unhandled"
                if explicit > max_in_flight
                else "handler slots stay idle",
            )

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        """Learn the subscriptions; checked now, declared and bound at ``start``.

        Raises:
            TypeError: For a subscription type this transport does not understand.
            ValueError: When a subscription names a queue this consumer does not consume
                (over aio-pika queues), or none can be chosen (no ``queue``).
        """
        declaring = not self._user_queues
        for sub in subscriptions:
            if not isinstance(sub, (RabbitMQEventSubscription, TopicSubscription)):
                raise TypeError(
                    f"RabbitMQConsumer cannot consume {sub!r}.\nUse "
                    "RabbitMQEventSubscription(exchange=..., queue=..., routing_key=...) or "
                    "TopicSubscription(topic=...)."
                )
            named = sub.queue if isinstance(sub, RabbitMQEventSubscription) else None
            if not declaring:
                have = [q.name for q in self._user_queues]
                if named is not None and named not in have:
                    raise ValueError(
                        f"{sub!r} consumes the queue {named!r}, but this RabbitMQConsumer "
                        f"consumes {have}.\nPass that queue: RabbitMQConsumer(..., queue)."
                    )
            elif named is None and self.queue_name is None:
                raise ValueError(
                    f"{sub!r} names no queue and the consumer has none.\nName one: "
                    "RabbitMQConsumer.from_url(url, queue='my-service') (the consumer "
                    "group), or RabbitMQEventSubscription(queue=...)."
                )
            if (
                isinstance(sub, RabbitMQEventSubscription)
                and sub.binding_arguments is not None
                and sub.exchange is None
                and declaring
            ):
                raise ValueError(
                    f"{sub!r} has binding_arguments but no exchange to bind to.\n"
                    "Name the exchange: RabbitMQEventSubscription(exchange=..., ...)."
                )
        self._subscriptions.extend(subscriptions)

    async def start(self) -> None:
        """Connect (factory), declare and bind (connection, factory), set the prefetch
        and start consuming.

        Raises:
            ConnectionError: The broker cannot be reached.
            NotStartedError: A queue's channel, or the connection given, is closed.
            ValueError: An exchange a subscription names does not exist, or a queue
                exists with other arguments.
        """
        if self._running:
            return
        self._stopping = False
        self._dead = None
        self._handoff = asyncio.Queue()
        try:
            if self._user_queues:
                await self._start_over_queues()
            else:
                await self._start_declaring()
            for q in self._queues:
                if q.name not in self._paused:
                    await self._consume(q)
            for ch in {id(q.channel): q.channel for q in self._queues}.values():
                ch.close_callbacks.add(self._on_close)
                if _compat.is_robust(ch):
                    ch.reopen_callbacks.add(self._on_reopen)  # type: ignore[attr-defined]
                self._watched.append(ch)
        except BaseException:
            await self._cancel_consumers(_STOP_BUDGET)
            self._unwatch()
            await self._close_owned()
            raise
        self._running = True

    def _closed_error(self, what: str) -> ConsumerClosedError:
        return ConsumerClosedError(
            f"The aio-pika {what} of this RabbitMQConsumer is closed and nothing reopens it, "
            "so nothing more arrives.\nOpen the connection with aio_pika.connect_robust() "
            "(it reconnects), or build the consumer with RabbitMQConsumer.from_url(...)."
        )

    async def _start_over_queues(self) -> None:
        seen: set[int] = set()
        prefetch = self.prefetch_count
        for q in self._user_queues:
            channel = q.channel
            if id(channel) in seen:
                continue
            seen.add(id(channel))
            if _compat.closed_for_good(channel):
                raise NotStartedError(
                    f"The aio-pika channel of queue {q.name!r} is closed.\n"
                    "Open a new channel, declare the queue on it and pass that queue."
                )
            theirs = _compat.prefetch_of(channel)
            if self._explicit_prefetch is None and theirs:
                if theirs != self._max_in_flight and not self._mismatch_logged:
                    self._mismatch_logged = True
                    log.warning(
                        "The channel of queue %r has prefetch_count=%d and the dispatcher "
                        "max_in_flight=%d; keeping the channel's. Pass RabbitMQConsumer(..., "
                        "prefetch_count=...) to choose.",
                        q.name,
                        theirs,
                        self._max_in_flight,
                    )
                continue
            # A plain channel does not say its QoS: set it, so that nothing is unbounded.
            await channel.set_qos(prefetch_count=prefetch)
        self._queues = list(self._user_queues)

    async def _start_declaring(self) -> None:
        if self._connection is None:
            assert self._factory is not None
            self._connection = await asyncio.wait_for(self._factory(), self.connect_timeout)
        conn = self._connection
        if conn.is_closed:
            raise NotStartedError(
                "The aio-pika connection given to RabbitMQConsumer is closed.\n"
                "Connect again and pass the new connection."
            )
        self._channel = channel = await conn.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self.prefetch_count)
        await declare_exchanges(channel, self._declare)
        declared = {ex.name for ex in self._declare}
        checked: set[str] = set()
        queues: dict[str, AbstractQueue] = {}

        async def queue(name: str) -> AbstractQueue:
            q = queues.get(name)
            if q is None:
                try:
                    q = await channel.declare_queue(
                        name, durable=True, arguments=self.queue_arguments
                    )
                except aiormq.exceptions.ChannelPreconditionFailed as exc:
                    raise ValueError(
                        f"The queue {name!r} exists with other settings ({exc.args[0]}).\n"
                        "Pass queue_arguments matching the existing queue, or delete it."
                    ) from exc
                queues[name] = q
            return q

        async def bind(q: AbstractQueue, exchange: str, key: str, args: Any) -> None:
            if exchange not in declared and exchange not in checked:
                if not await exchange_exists(conn, exchange):
                    raise ValueError(
                        f"The exchange {exchange!r} does not exist.\nDeclare it first, or "
                        f"let the consumer declare it: declare=[RabbitMQExchange(name="
                        f"{exchange!r}, type=...)]."
                    )
                checked.add(exchange)
            await q.bind(exchange, routing_key=key, arguments=dict(args) if args else None)

        for sub in self._subscriptions:
            if isinstance(sub, RabbitMQEventSubscription):
                name = sub.queue if sub.queue is not None else self.queue_name
                assert name is not None
                q = await queue(name)
                if sub.exchange:  # "" is the default exchange: every queue is bound to it
                    await bind(q, sub.exchange, sub.compiled.amqp, sub.binding_arguments)
            else:
                assert self.queue_name is not None
                q = await queue(self.queue_name)
                await bind(q, self.topic_exchange, sub.compiled.amqp, None)
        if not self._subscriptions and self.queue_name is not None:
            await queue(self.queue_name)
        self._queues = list(queues.values())

    async def _consume(self, q: AbstractQueue) -> None:
        """Register a consumer on the queue's current (underlying) channel.

        aiormq hands deliveries straight to :meth:`_callback`'s function: no aio-pika
        message object per delivery, and no buffer but the handoff (bounded by prefetch).
        """
        raw = await _compat.underlay(q.channel)
        raw.on_consumer_cancel_callbacks.add(self._on_cancelled)
        ok = await raw.basic_consume(q.name, self._callback(q.name), no_ack=False)
        assert ok.consumer_tag is not None
        self._consuming[q.name] = _Consuming(q, raw, ok.consumer_tag)

    def _die(self, error: ConsumerClosedError) -> None:
        if self._dead is None and not self._stopping and self._running:
            self._dead = error
            self._handoff.put_nowait(error)

    def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled one of our consumers (its queue was deleted, ...)."""
        for name, entry in list(self._consuming.items()):
            if entry.tag == frame.consumer_tag:
                del self._consuming[name]
                self._die(
                    ConsumerClosedError(
                        f"RabbitMQ cancelled the consumer of queue {name!r} (was the queue "
                        "deleted?), so nothing more arrives from it.\nRe-create the queue "
                        "and start the consumer again."
                    )
                )
                return

    def _on_close(self, channel: Any, exc: BaseException | None = None) -> None:
        """A channel closed: the end, unless it is robust and will reopen (watched until
        it has: see :meth:`_watch_restore`)."""
        if self._stopping or not self._running:
            return
        if _compat.closed_for_good(channel):
            self._die(self._closed_error("channel"))
            return
        key = id(channel)
        watcher = self._restorers.get(key)
        if watcher is None or watcher.done():
            self._restorers[key] = asyncio.get_running_loop().create_task(
                self._watch_restore(channel)
            )

    async def _watch_restore(self, channel: AbstractChannel) -> None:
        """Wait for a robust channel to be back; restore it when aio-pika's own attempt
        failed while the connection stayed up, with a backoff, and end the consumer when
        it cannot be restored.

        An outage of the connection is not counted: the robust connection reconnects
        (however long that takes) and restores its channels itself.
        """
        backoff = Backoff(**_RESTORE_BACKOFF)
        failures = 0
        last: BaseException | None = None
        while self._running and not self._stopping:
            await asyncio.sleep(backoff.next())
            if not channel.is_closed or self._stopping or not self._running:
                return
            if _compat.closed_for_good(channel):
                self._die(self._closed_error("channel"))
                return
            if not _compat.connection_is_up(_compat.connection_of(channel)):
                backoff.reset()  # the connection's outage: the robust connection's work
                failures = 0
                continue
            if not isinstance(channel, AbstractRobustChannel):
                return  # only robust channels are watched
            try:
                await asyncio.wait_for(channel.restore(), _RESTORE_TIMEOUT)
            except Exception as exc:  # whatever the re-declarations raised
                failures += 1
                last = exc
                log.warning(
                    "Could not restore the channel of %s (attempt %d of %d): %s: %s",
                    self._queue_names(channel),
                    failures,
                    _RESTORE_ATTEMPTS,
                    type(exc).__name__,
                    exc,
                )
                if failures >= _RESTORE_ATTEMPTS:
                    self._die(
                        ConsumerClosedError(
                            f"The robust channel of {self._queue_names(channel)} closed and "
                            f"could not be restored ({failures} attempts; the last: "
                            f"{type(last).__name__}: {last}), although the connection is up, "
                            "so nothing more arrives.\nFix what the broker refused (an "
                            "exchange or queue re-created with other settings?) and start "
                            "the consumer again."
                        )
                    )
                    return
            else:
                if not channel.is_closed:
                    return

    def _queue_names(self, channel: AbstractChannel) -> str:
        names = [q.name for q in self._queues if q.channel is channel]
        return ", ".join(repr(n) for n in names) or "the consumer"

    async def _on_reopen(self, channel: Any) -> None:
        """A robust channel came back after a lost connection: consume its queues again.

        aio-pika has re-declared the queues and their bindings by then. Deliveries of the
        old channel are void: the broker has requeued them.
        """
        if self._stopping or not self._running:
            return
        for name, entry in list(self._consuming.items()):
            if entry.queue.channel is channel:
                del self._consuming[name]
        for q in self._queues:
            if q.channel is channel and q.name not in self._paused:
                try:
                    await self._consume(q)
                except Exception:
                    log.exception("Could not resume consuming %r after a reconnection", q.name)
                else:
                    log.info("Consuming %r again after a reconnection", q.name)

    def _callback(self, queue_name: str) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        handoff = self._handoff

        async def on_message(delivered: DeliveredMessage) -> None:
            if self._stopping:
                await _settle(_Token(delivered, queue_name), requeue=True)
                return
            handoff.put_nowait(_Token(delivered, queue_name))

        return on_message

    # ----------------------------------------------------------------- lanes
    def pause(self, lane: Hashable) -> None:
        """Stop the broker sending the queue named ``lane`` (``basic.cancel``) until
        :meth:`resume`. Deliveries already taken are still yielded (idempotent)."""
        if isinstance(lane, str) and lane not in self._paused:
            self._paused.add(lane)
            self._apply_lane(lane)

    def resume(self, lane: Hashable) -> None:
        """Consume the queue named ``lane`` again (idempotent)."""
        if isinstance(lane, str) and lane in self._paused:
            self._paused.discard(lane)
            self._apply_lane(lane)

    def _apply_lane(self, name: str) -> None:
        if not self._running or self._stopping:
            return
        task = self._lane_tasks.get(name)
        if task is None or task.done():
            self._lane_tasks[name] = asyncio.get_running_loop().create_task(self._settle_lane(name))

    async def _settle_lane(self, name: str) -> None:
        """Bring the queue's consumer to the wanted state (paused or consuming), however
        often pause and resume alternated meanwhile."""
        queue = next((q for q in self._queues if q.name == name), None)
        if queue is None:
            return
        for _ in range(100):  # each round changes the state; bounded all the same
            if not self._running or self._stopping:
                return
            entry = self._consuming.get(name)
            try:
                if name in self._paused and entry is not None:
                    del self._consuming[name]
                    await entry.channel.basic_cancel(entry.tag)
                elif name not in self._paused and entry is None:
                    await self._consume(queue)
                else:
                    return
            except _CANCEL_ERRORS as exc:
                log.warning("Could not %s queue %r: %s", "pause" if entry else "resume", name, exc)
                return

    # ----------------------------------------------------------------- consuming
    async def listen(self) -> AsyncIterator[Message]:
        """Yield deliveries as they arrive, until ``stop``.

        Raises:
            NotStartedError: When called before ``start``.
            ConsumerClosedError: The consumer cannot go on (its channel closed for good,
                or the broker cancelled it): the dispatcher stops.
        """
        if self._dead is not None:
            raise self._dead
        if not self._running:
            raise NotStartedError(
                "The RabbitMQ consumer is not started.\nCall `await consumer.start()` first "
                "(the dispatcher does it for you)."
            )
        handoff = self._handoff
        ordered = self.ordered
        message = _codec.message
        while not self._stopping:
            item = handoff.get_nowait() if handoff.qsize() else await handoff.get()
            if item is _STOP:
                break
            if isinstance(item, BaseException):
                raise item
            if self._stopping:
                await _settle(item, requeue=True)
                break
            if item.channel.is_closed:
                # Its channel is gone: the broker has put it back and delivers it again.
                continue
            yield message(
                item.delivered,
                item.queue,
                token=item,
                ordered=ordered,
                delivery_tag=item.delivery_tag,
            )
        await self._requeue_pending()

    async def ack(self, message: Message) -> None:
        """Acknowledge the delivery (it is done with)."""
        token: _Token = message.token
        if token.settled:
            return
        token.settled = True
        try:
            # Queued for the connection's writer, in order, without waiting for the socket
            # to drain (an ack has no reply to wait for either way).
            await token.channel.basic_ack(token.delivery_tag, wait=False)
        except CONNECTION_ERRORS as exc:
            log.warning(
                "Could not acknowledge %r: its channel is gone (%s). RabbitMQ delivers it again.",
                message,
                exc,
            )

    async def nack(self, message: Message, *, requeue: bool, delay: float | None = None) -> None:
        """Hand the delivery back (``requeue=True``, after ``delay`` seconds if given) or
        reject it to the queue's DLX.

        With ``delay`` (and ``delayed_requeue`` on, the default) a copy of the delivery is
        published, confirmed, to the queue's delay queue for that delay (rounded up to a
        bucket, see :mod:`dispytch.rabbitmq._delay`), and then the original is
        acknowledged: the broker brings it back to the end of its queue when the delay is
        over, with ``Message.attempt`` one higher, and nothing in this process waits
        meanwhile. If that copy is not confirmed, the delivery is requeued the plain way
        once the delay has passed (nothing is lost). With ``delayed_requeue=False`` a
        delay is waited here, then the delivery is requeued.

        A rejected delivery whose queue has a dead-letter exchange
        (``x-dead-letter-exchange`` among the queue's arguments) and whose
        :attr:`Message.error <dispytch.Message.error>` says why is published to that
        exchange by this consumer, with the error in ``dispytch-error-type`` /
        ``dispytch-error-message`` (``basic.reject`` cannot add headers), confirmed, and
        then acknowledged. Where that publish is not confirmed the delivery is rejected
        with ``basic.reject`` as before, so the broker's own DLX copy (without the error)
        still keeps it.

        Raises:
            ValueError: A ``delay`` longer than RabbitMQ's TTL allows (about 49 days); the
                delivery is left unsettled (a ``delay`` of 0 or less requeues at once).
        """
        token: _Token = message.token
        if requeue and delay is not None and delay > 0 and not token.settled:
            ttl = _delay.bucket_ms(delay)
            if self.delayed_requeue and await self._requeue_later(token, message.attempt, ttl):
                return
            await asyncio.sleep(delay)
        error = getattr(message, "error", None)
        if (
            not requeue
            and error is not None
            and not token.settled
            and await self._dead_letter_with_error(message, error)
        ):
            return
        await _settle(token, requeue=requeue)

    async def _requeue_later(self, token: _Token, attempt: int, ttl: int) -> bool:
        """Publish the delivery to its delay queue (confirmed), then ack the original.

        ``False`` (and a WARNING) when the copy was not confirmed: the caller requeues.
        Copies are published concurrently on one confirm-mode channel: they go to the
        default exchange, which always exists, so the broker does not close that channel
        under a publish (the declarations, which may fail, run on channels of their own).
        """
        name = _delay.queue_name(token.queue, ttl)
        delivered = token.delivered
        properties = _codec.delayed_properties(
            delivered.header.properties,
            attempt=attempt + 1,
            exchange=delivered.exchange or "",
            routing_key=delivered.routing_key or "",
        )
        try:
            async with asyncio.timeout(_DEAD_LETTER_TIMEOUT):
                for first in (True, False):
                    await self._declare_delay_queue(token, name, ttl, renew=not first)
                    channel = await self._open_delay_channel(token)
                    try:
                        await channel.basic_publish(
                            delivered.body,
                            exchange="",
                            routing_key=name,
                            properties=properties,
                            mandatory=True,
                        )
                    except aiormq.exceptions.PublishError:
                        if not first:
                            raise
                        # Returned: the delay queue is gone (deleted, or expired while
                        # this process slept): declare it again and publish once more.
                        continue
                    break
        except _DEAD_LETTER_ERRORS as exc:
            self._delay_queues.pop(name, None)
            log.warning(
                "Could not park the delivery from %r in its delay queue %r (%s: %s); it "
                "is requeued once the delay has passed.",
                token.queue,
                name,
                type(exc).__name__,
                exc,
            )
            return False
        await _settle_ack(token)
        return True

    async def _declare_delay_queue(
        self, token: _Token, name: str, ttl: int, *, renew: bool
    ) -> None:
        """Declare the delay queue unless this consumer did so recently (a declaration
        renews the queue's ``x-expires`` lease, see :mod:`dispytch.rabbitmq._delay`)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._delay_queues.get(name)
        if not renew and last is not None and now - last < _delay.margin_ms(ttl) / 2000:
            return
        queue = next(q for q in self._queues if q.name == token.queue)
        channel = await _compat.raw_channel(_compat.connection_of(queue.channel))
        try:
            await channel.queue_declare(
                name, durable=True, arguments=_delay.arguments(token.queue, ttl)
            )
        finally:
            if not channel.is_closed:
                await channel.close()
        self._delay_queues[name] = now

    async def _open_delay_channel(self, token: _Token) -> aiormq.abc.AbstractChannel:
        channel = self._delay_channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._delay_open_lock:  # one channel, however many copies race for it
            channel = self._delay_channel
            if channel is None or channel.is_closed:
                queue = next(q for q in self._queues if q.name == token.queue)
                connection = _compat.connection_of(queue.channel)
                channel = self._delay_channel = await _compat.raw_channel(
                    connection, publisher_confirms=True
                )
            return channel

    def _dead_letter_target(self, queue: str) -> tuple[str, str | None] | None:
        for q in self._queues:
            if q.name == queue:
                args = q.arguments or {}
                exchange = args.get("x-dead-letter-exchange")
                if exchange is None:
                    return None
                key = args.get("x-dead-letter-routing-key")
                return str(exchange), None if key is None else str(key)
        return None

    async def _dead_letter_with_error(self, message: Message, error: BaseException) -> bool:
        token: _Token = message.token
        target = self._dead_letter_target(token.queue)
        if target is None:
            return False
        exchange, key = target
        delivered = token.delivered
        # The route it was first published with: a delivery back from a delay queue came
        # through the default exchange under the queue's name (Message.route undoes that).
        route = message.route
        origin = str(message.metadata.get("exchange") or "")
        routing_key = key if key is not None else (route or token.queue)
        # One publish at a time on the dead-letter channel, each waiting for its confirm.
        # When the broker closes the channel (the exchange is missing), aiormq sends
        # channel.close-ok before it marks the channel closed; a second publish written
        # in between reaches the broker after the close-ok, and RabbitMQ then closes the
        # whole connection (504 "expected 'channel.open'"): the consumer's channel with
        # it, so the deliveries being rejected come back. Serialised, the next publish
        # sees the closed channel and opens a new one (after that close-ok).
        async with self._dlx_lock:
            channel: aiormq.abc.AbstractChannel | None = None
            try:
                async with asyncio.timeout(_DEAD_LETTER_TIMEOUT):
                    channel = await self._dead_letter_channel(token)
                    await channel.basic_publish(
                        delivered.body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=_codec.dead_letter_properties(
                            delivered.header.properties,
                            error,
                            route=route,
                            queue=token.queue,
                            exchange=origin,
                        ),
                        mandatory=True,
                    )
            except _DEAD_LETTER_ERRORS as exc:
                await self._drop_dead_letter_channel(channel)
                log.warning(
                    "Could not publish the rejected delivery from %r to its dead-letter "
                    "exchange %r with its error (%s: %s); rejecting it with basic.reject, so "
                    "the broker's dead-letter copy (without the error) keeps it.",
                    token.queue,
                    exchange,
                    type(exc).__name__,
                    exc,
                )
                return False
        await _settle_ack(token)
        return True

    async def _drop_dead_letter_channel(self, channel: aiormq.abc.AbstractChannel | None) -> None:
        """Forget the dead-letter channel after a failure; close it if it is still open
        (a publish that timed out), so no channel leaks."""
        if self._dlx_channel is channel:
            self._dlx_channel = None
        if channel is not None and not channel.is_closed:
            try:
                await asyncio.wait_for(channel.close(), _CLOSE_BUDGET)
            except _CLOSE_ERRORS as exc:
                log.debug("Closing the dead-letter channel failed: %r", exc)

    async def _dead_letter_channel(self, token: _Token) -> aiormq.abc.AbstractChannel:
        """One confirm-mode channel for dead letters, outside aio-pika's bookkeeping: a
        publish to a missing exchange closes it, never the channel deliveries come on."""
        channel = self._dlx_channel
        if channel is None or channel.is_closed:
            self._dlx_channel = None
            queue = next(q for q in self._queues if q.name == token.queue)
            connection = _compat.connection_of(queue.channel)
            channel = self._dlx_channel = await _compat.raw_channel(
                connection, publisher_confirms=True
            )
        return channel

    # ----------------------------------------------------------------- request/reply
    def reply_address(self, request: Message) -> str | None:
        """Request/reply: the request's AMQP ``reply_to`` (direct reply-to), if any."""
        token = request.token
        if not isinstance(token, _Token):
            return None
        reply_to: str | None = token.delivered.header.properties.reply_to
        return reply_to or None

    async def send_reply(
        self, request: Message, payload: bytes, headers: Mapping[str, str]
    ) -> None:
        """Publish a reply to the request's ``reply_to`` through the default exchange, on
        the channel the request came on (not confirmed: direct reply-to is transient, and
        a requester that is gone loses it)."""
        token: _Token = request.token
        reply_to = self.reply_address(request)
        if reply_to is None:
            return
        hdrs: dict[str, Any] = dict(headers)
        content_type = hdrs.pop(HEADER_CONTENT_TYPE, None)
        props = Basic.Properties(
            content_type=content_type,
            headers=hdrs,
            correlation_id=headers.get(HEADER_CORRELATION_ID)
            or token.delivered.header.properties.correlation_id,
            delivery_mode=1,
        )
        try:
            await _compat.publish_nowait(
                token.channel, payload, exchange="", routing_key=reply_to, properties=props
            )
        except _CANCEL_ERRORS as exc:
            log.warning(
                "Could not send the reply to %r (%s: %s); its caller will time out.",
                reply_to,
                type(exc).__name__,
                exc,
            )

    # ----------------------------------------------------------------- shutdown
    async def stop(self) -> None:
        """Stop consuming; ``listen`` ends at once, undelivered messages go back.

        Bounded: with the broker unreachable it gives up after about two seconds (the
        broker requeues whatever the lost channel held).
        """
        if self._stopping:
            return
        self._stopping = True
        self._handoff.put_nowait(_STOP)
        for task in (*self._lane_tasks.values(), *self._restorers.values()):
            task.cancel()
        self._lane_tasks = {}
        self._restorers = {}
        loop = asyncio.get_running_loop()
        end = loop.time() + _STOP_BUDGET
        await self._cancel_consumers(_STOP_BUDGET)
        try:
            await asyncio.wait_for(self._requeue_pending(), max(end - loop.time(), 0.1))
        except TimeoutError:
            log.warning("RabbitMQ did not take back the undelivered messages in time")

    async def _cancel_consumers(self, budget: float) -> None:
        entries, self._consuming = list(self._consuming.values()), {}
        loop = asyncio.get_running_loop()
        end = loop.time() + budget
        for entry in entries:
            if entry.channel.is_closed:
                continue  # the broker dropped the consumer with the channel
            try:
                await asyncio.wait_for(
                    entry.channel.basic_cancel(entry.tag), max(end - loop.time(), 0.01)
                )
            except _CANCEL_ERRORS as exc:
                log.debug("Cancelling consumer %s on %r failed: %s", entry.tag, entry.queue, exc)

    async def _requeue_pending(self) -> None:
        handoff = self._handoff
        while handoff.qsize():
            item = handoff.get_nowait()
            if isinstance(item, _Token):
                await _settle(item, requeue=True)
        if self._stopping:
            handoff.put_nowait(_STOP)  # a later listen() must end too

    async def close(self) -> None:
        """Stop, then close the channel this consumer opened and, when it owns it, the
        connection (bounded, as :meth:`stop`).

        Deliveries still unsettled then go back to their queues (the broker requeues what
        a closed channel held). Queues passed in keep their channel: it is yours.
        """
        await self.stop()
        self._running = False
        self._unwatch()
        await self._close_owned()

    def _unwatch(self) -> None:
        for ch in self._watched:
            ch.close_callbacks.discard(self._on_close)
            if _compat.is_robust(ch):
                ch.reopen_callbacks.discard(self._on_reopen)  # type: ignore[attr-defined]
        self._watched = []

    async def _close_owned(self) -> None:
        channel, self._channel = self._channel, None
        dlx, self._dlx_channel = self._dlx_channel, None
        delay, self._delay_channel = self._delay_channel, None
        conn = self._connection
        if self._factory is not None:
            self._connection = None

        async def closing() -> None:
            for raw in (dlx, delay):
                if raw is not None and not raw.is_closed:
                    with contextlib.suppress(*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
                        await raw.close()
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
                    await channel.close()
            if self.owns and conn is not None:
                await conn.close()

        try:
            await asyncio.wait_for(closing(), _CLOSE_BUDGET)
        except _CLOSE_ERRORS as exc:
            log.debug("Closing the consumer's channel/connection failed: %r", exc)

    async def __aenter__(self) -> RabbitMQConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


#: How long a dead-letter publish may take (opening its channel and waiting for the
#: confirm) before the delivery is rejected the broker's way instead.
_DEAD_LETTER_TIMEOUT = 5.0
#: What a dead-letter publish may raise that sends the delivery the broker's way instead
#: (``TypeError``/``ValueError``: pamqp could not encode the copy's properties; nothing was
#: sent then, and the broker's own copy keeps the delivery as it came).
_DEAD_LETTER_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    aiormq.exceptions.AMQPError,
    TimeoutError,
    TypeError,
    ValueError,
)


class _Token:
    """What ``Message.token`` holds: the delivery and whether it was settled.

    Settling a delivery twice would make the broker close the channel
    (``PRECONDITION_FAILED - unknown delivery tag``), so it is guarded here.
    """

    __slots__ = ("channel", "delivered", "delivery_tag", "queue", "settled")

    def __init__(self, delivered: DeliveredMessage, queue: str) -> None:
        self.delivered = delivered
        self.channel = delivered.channel
        self.delivery_tag: int = delivered.delivery.delivery_tag or 0  # type: ignore[union-attr]
        self.queue = queue
        self.settled = False


async def _settle_ack(token: _Token) -> None:
    if token.settled:
        return
    token.settled = True
    try:
        await token.channel.basic_ack(token.delivery_tag)
    except CONNECTION_ERRORS as exc:
        log.warning(
            "Could not acknowledge a dead-lettered delivery from %r: its channel is gone "
            "(%s). RabbitMQ delivers it again (its dead letter may then arrive twice).",
            token.queue,
            exc,
        )


async def _settle(token: _Token, *, requeue: bool) -> None:
    if token.settled:
        return
    token.settled = True
    try:
        if requeue:
            await token.channel.basic_nack(token.delivery_tag, requeue=True)
        else:
            await token.channel.basic_reject(token.delivery_tag, requeue=False)
    except CONNECTION_ERRORS as exc:
        log.warning(
            "Could not %s a delivery from %r: its channel is gone (%s). RabbitMQ delivers it "
            "again.",
            "requeue" if requeue else "reject",
            token.queue,
            exc,
        )
