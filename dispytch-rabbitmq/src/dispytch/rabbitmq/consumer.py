"""``RabbitMQConsumer``: acknowledged consumption of RabbitMQ queues over aio-pika."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any

import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from dispytch.errors import NotStartedError
from dispytch.rabbitmq._common import (
    CONNECTION_ERRORS,
    connect,
    declare_exchanges,
    exchange_exists,
    log,
    redact,
    text_headers,
)
from dispytch.rabbitmq.producer import APP_ID, HEADER_KEY
from dispytch.rabbitmq.routes import (
    DEFAULT_TOPIC_EXCHANGE,
    RabbitMQEventSubscription,
    RabbitMQExchange,
)
from dispytch.routes import EventSubscription, TopicSubscription
from dispytch.transport import HEADER_CONTENT_TYPE, HEADER_EVENT_ID, HEADER_EVENT_TYPE, Message

_STOP = object()
_CANCEL_TIMEOUT = 5.0
_CANCEL_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    aiormq.exceptions.AMQPError,
    *CONNECTION_ERRORS,
)


class RabbitMQConsumer:
    """Consumes RabbitMQ queues and acknowledges each delivery once Dispytch is done.

    Two ways to build one:

    * Over aio-pika queues you declared and bound (as Dispytch users write it today)::

          channel = await connection.channel()
          await channel.set_qos(prefetch_count=100)
          queue = await channel.declare_queue("user.events", durable=True)
          await queue.bind(exchange, routing_key="user.*")
          consumer = RabbitMQConsumer(queue)

      It consumes those queues, binds nothing, and never closes your channel. Use
      ``aio_pika.connect_robust`` so that consuming resumes after a reconnection.
    * From a URL, owning a robust connection::

          consumer = RabbitMQConsumer.from_url("amqp://guest:guest@localhost:5672/",
                                               queue="billing", prefetch_count=100)

      At start it declares each subscription's queue (durable) and binds it to the
      subscription's exchange with its routing key (``{name}`` segments become ``*``);
      a :class:`~dispytch.routes.TopicSubscription` binds ``queue`` to
      ``topic_exchange`` (``amq.topic``). Exchanges are declared only when listed in
      ``declare``; any other must exist already.

    Back-pressure: ``prefetch_count`` is the only buffer. The broker sends at most that
    many unacknowledged deliveries; ``listen()`` hands each over as it comes.

    Settling: ``ack`` acknowledges; ``nack(requeue=True)`` hands the delivery back
    (``basic.nack``, redelivered with the redelivered flag, so ``Message.attempt`` is 2
    or, on quorum queues, ``x-delivery-count + 1``); ``nack(requeue=False)`` rejects it
    (``basic.reject`` without requeue): the queue's dead-letter exchange receives it when
    one is configured (``x-dead-letter-exchange``), otherwise the broker drops it. A
    delivery whose channel was lost is not settled at all: the broker has already put it
    back and delivers it again.

    ``Message.route`` is the routing key; ``Message.metadata`` holds ``exchange``,
    ``queue``, ``routing_key``, ``delivery_tag``, ``redelivered``, ``message_id`` and
    ``consumer_tag``.

    Args:
        *queues: aio-pika queues to consume.
        url: Instead of queues: ``amqp://user:pass@host:port/vhost`` or ``amqps://``.
        queue: With ``url``: the queue for subscriptions that name none (the consumer
            group: consumers on one queue share its messages).
        prefetch_count: Unacknowledged deliveries in flight per queue consumed (RabbitMQ
            applies ``basic.qos`` per consumer). URL default 100; over your queues it is
            set on their channels only when given.
        declare: With ``url``: exchanges to declare at start.
        queue_arguments: With ``url``: arguments for the queues it declares
            (``{"x-dead-letter-exchange": "dlx", "x-queue-type": "quorum"}``).
        topic_exchange: The exchange :class:`~dispytch.routes.TopicSubscription` binds to.
        ordered: Hand messages of one queue to the dispatcher one after another
            (``Message.lane`` = the queue name). Default: handled concurrently.
        connect_timeout: With ``url``: seconds to wait for the first connection.

    Raises:
        ValueError: When neither or both of queues and ``url`` are given.
    """

    def __init__(
        self,
        *queues: AbstractQueue,
        url: str | None = None,
        queue: str | None = None,
        prefetch_count: int | None = None,
        declare: Sequence[RabbitMQExchange] = (),
        queue_arguments: Mapping[str, Any] | None = None,
        topic_exchange: str = DEFAULT_TOPIC_EXCHANGE,
        ordered: bool = False,
        connect_timeout: float = 10.0,
    ) -> None:
        if bool(queues) == (url is not None):
            raise ValueError(
                "RabbitMQConsumer needs either aio-pika queues (RabbitMQConsumer(queue, ...)) "
                "or a URL (RabbitMQConsumer.from_url('amqp://guest:guest@localhost:5672/', "
                "queue='my-service')), not " + ("both." if queues else "neither.")
            )
        if url is None and (queue is not None or declare or queue_arguments):
            raise ValueError(
                "queue=, declare= and queue_arguments= are for consumers built from a URL; "
                "over aio-pika queues, declare and bind them on your channel yourself."
            )
        if prefetch_count is not None and prefetch_count < 1:
            raise ValueError(
                f"prefetch_count={prefetch_count} would let the broker send without limit; "
                "use a positive number (e.g. 100)."
            )
        self._user_queues = list(queues)
        self._url = url
        self.queue_name = queue
        self.prefetch_count = prefetch_count if prefetch_count is not None or queues else 100
        self._declare = tuple(declare)
        self.queue_arguments = dict(queue_arguments) if queue_arguments else None
        self.topic_exchange = topic_exchange
        self.ordered = ordered
        self.connect_timeout = connect_timeout
        self._subscriptions: list[EventSubscription] = []
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queues: list[AbstractQueue] = []
        self._consumer_tags: list[tuple[AbstractQueue, aiormq.abc.AbstractChannel, str]] = []
        self._watched: list[Any] = []
        self._plain: list[Any] = []
        self._handoff: asyncio.Queue[Any] = asyncio.Queue()
        self._running = False
        self._stopping = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQConsumer:
        """A consumer owning a robust connection to ``url`` (see the class for options)."""
        return cls(url=url, **options)

    @property
    def queues(self) -> list[AbstractQueue]:
        """The aio-pika queues being consumed (after ``start``)."""
        return list(self._queues)

    # ----------------------------------------------------------------- setup
    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        """Learn the subscriptions; checked now, declared and bound at ``start``.

        Raises:
            TypeError: For a subscription type this transport does not understand.
            ValueError: When a subscription names a queue this consumer does not consume
                (over aio-pika queues), or none can be chosen (URL without ``queue``).
        """
        for sub in subscriptions:
            if not isinstance(sub, (RabbitMQEventSubscription, TopicSubscription)):
                raise TypeError(
                    f"RabbitMQConsumer cannot consume {sub!r}. Use "
                    "RabbitMQEventSubscription(exchange=..., queue=..., routing_key=...) or "
                    "TopicSubscription(topic=...)."
                )
            named = sub.queue if isinstance(sub, RabbitMQEventSubscription) else None
            if self._url is None:
                have = [q.name for q in self._user_queues]
                if named is not None and named not in have:
                    raise ValueError(
                        f"{sub!r} consumes the queue {named!r}, but this RabbitMQConsumer "
                        f"consumes {have}. Pass that queue: RabbitMQConsumer(..., queue)."
                    )
            elif named is None and self.queue_name is None:
                raise ValueError(
                    f"{sub!r} names no queue and the consumer has none. Name one: "
                    "RabbitMQConsumer.from_url(url, queue='my-service') (the consumer "
                    "group), or RabbitMQEventSubscription(queue=...)."
                )
            if (
                isinstance(sub, RabbitMQEventSubscription)
                and sub.binding_arguments is not None
                and sub.exchange is None
                and self._url is not None
            ):
                raise ValueError(f"{sub!r} has binding_arguments but no exchange to bind to.")
        self._subscriptions.extend(subscriptions)

    async def start(self) -> None:
        """Connect (URL), declare and bind, and start consuming.

        Raises:
            ConnectionError: The broker cannot be reached.
            ValueError: An exchange a subscription names does not exist, or a queue
                exists with other arguments.
        """
        if self._running:
            return
        self._stopping = False
        self._handoff = asyncio.Queue()
        try:
            if self._url is None:
                await self._start_over_queues()
            else:
                await self._start_from_url()
            for q in self._queues:
                await self._consume(q)
            for ch in {id(q.channel): q.channel for q in self._queues}.values():
                callbacks = getattr(ch, "reopen_callbacks", None)
                if callbacks is not None:
                    callbacks.add(self._on_reopen)
                    self._watched.append(ch)
                else:  # a plain channel: nothing will resume it, so say so
                    ch.close_callbacks.add(self._on_lost)
                    self._plain.append(ch)
        except BaseException:
            await self._cancel_consumers()
            await self._close_owned()
            raise
        self._running = True

    async def _start_over_queues(self) -> None:
        seen: set[int] = set()
        for q in self._user_queues:
            if id(q.channel) in seen:
                continue
            seen.add(id(q.channel))
            if self.prefetch_count is not None:
                await q.channel.set_qos(prefetch_count=self.prefetch_count)
            elif getattr(q.channel, "_prefetch_count", None) == 0:  # robust channels know
                log.warning(
                    "The channel of queue %r has no prefetch limit: RabbitMQ will push the "
                    "whole queue into memory. Pass RabbitMQConsumer(..., prefetch_count=100) "
                    "or call channel.set_qos(prefetch_count=...).",
                    q.name,
                )
        self._queues = list(self._user_queues)

    async def _start_from_url(self) -> None:
        assert self._url is not None
        self._connection = conn = await connect(self._url, within=self.connect_timeout)
        self._channel = channel = await conn.channel(publisher_confirms=False)
        assert self.prefetch_count is not None
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
                        f"The queue {name!r} exists with other settings ({exc.args[0]}). "
                        "Pass queue_arguments matching the existing queue, or delete it."
                    ) from exc
                queues[name] = q
            return q

        async def bind(q: AbstractQueue, exchange: str, key: str, args: Any) -> None:
            if exchange not in declared and exchange not in checked:
                if not await exchange_exists(conn, exchange):
                    raise ValueError(
                        f"The exchange {exchange!r} does not exist on "
                        f"{redact(self._url or '')}. Declare it first, or let the consumer "
                        f"declare it: declare=[RabbitMQExchange(name={exchange!r}, "
                        "type=...)]."
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
        raw = await q.channel.get_underlay_channel()
        raw.on_consumer_cancel_callbacks.add(self._on_cancelled)
        ok = await raw.basic_consume(q.name, self._callback(q.name), no_ack=False)
        assert ok.consumer_tag is not None
        self._consumer_tags.append((q, raw, ok.consumer_tag))

    def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled one of our consumers (its queue was deleted, ...)."""
        for entry in self._consumer_tags:
            if entry[2] == frame.consumer_tag:
                self._consumer_tags.remove(entry)
                if not self._stopping:
                    self._handoff.put_nowait(
                        ConnectionError(
                            f"RabbitMQ cancelled the consumer of queue {entry[0].name!r} (was "
                            "the queue deleted?). Nothing more arrives from it; re-create the "
                            "queue and restart the consumer."
                        )
                    )
                return

    async def _on_reopen(self, channel: Any) -> None:
        """A robust channel came back after a lost connection: consume its queues again.

        aio-pika has re-declared the queues and their bindings by then. Deliveries of the
        old channel are void: the broker has requeued them.
        """
        if self._stopping or not self._running:
            return
        self._consumer_tags = [t for t in self._consumer_tags if t[0].channel is not channel]
        for q in self._queues:
            if q.channel is channel:
                try:
                    await self._consume(q)
                except Exception:
                    log.exception("Could not resume consuming %r after a reconnection", q.name)
                else:
                    log.info("Consuming %r again after a reconnection", q.name)

    def _on_lost(self, channel: Any, exc: BaseException | None = None) -> None:
        """A channel that does not reconnect closed: make ``listen()`` fail loudly."""
        if self._stopping or not self._running:
            return
        self._handoff.put_nowait(
            ConnectionError(
                f"The RabbitMQ channel of this consumer closed ({exc}) and does not "
                "reconnect, so nothing more will arrive. Open the connection with "
                "aio_pika.connect_robust() (or build the consumer from a URL)."
            )
        )

    def _callback(self, queue_name: str) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        handoff = self._handoff

        async def on_message(delivered: DeliveredMessage) -> None:
            if self._stopping:
                await _settle(_Token(delivered, queue_name), requeue=True)
                return
            handoff.put_nowait(_Token(delivered, queue_name))

        return on_message

    # ----------------------------------------------------------------- consuming
    async def listen(self) -> AsyncIterator[Message]:
        """Yield deliveries as they arrive, until ``stop``.

        Raises:
            NotStartedError: When called before ``start``.
        """
        if not self._running:
            raise NotStartedError(
                "The RabbitMQ consumer is not started; call `await consumer.start()` first "
                "(the dispatcher does it for you)."
            )
        handoff = self._handoff
        ordered = self.ordered
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
            yield _message(item, ordered)
        await self._requeue_pending()

    async def ack(self, message: Message) -> None:
        """Acknowledge the delivery (it is done with)."""
        token: _Token = message.token
        if token.settled:
            return
        token.settled = True
        try:
            await token.channel.basic_ack(token.delivery_tag)
        except CONNECTION_ERRORS as exc:
            log.warning(
                "Could not acknowledge %r: its channel is gone (%s). RabbitMQ delivers it again.",
                message,
                exc,
            )

    async def nack(self, message: Message, *, requeue: bool) -> None:
        """Hand the delivery back (``requeue=True``) or reject it to the queue's DLX."""
        await _settle(message.token, requeue=requeue)

    # ----------------------------------------------------------------- shutdown
    async def stop(self) -> None:
        """Stop consuming; ``listen`` ends at once, undelivered messages go back."""
        if self._stopping:
            return
        self._stopping = True
        self._handoff.put_nowait(_STOP)
        await self._cancel_consumers()
        await self._requeue_pending()

    async def _cancel_consumers(self) -> None:
        tags, self._consumer_tags = self._consumer_tags, []
        for q, raw, tag in tags:
            if raw.is_closed:
                continue  # the broker dropped the consumer with the channel
            try:
                await asyncio.wait_for(raw.basic_cancel(tag), _CANCEL_TIMEOUT)
            except _CANCEL_ERRORS as exc:
                log.debug("Cancelling consumer %s on %r failed: %s", tag, q.name, exc)

    async def _requeue_pending(self) -> None:
        handoff = self._handoff
        while handoff.qsize():
            item = handoff.get_nowait()
            if isinstance(item, _Token):
                await _settle(item, requeue=True)
        if self._stopping:
            handoff.put_nowait(_STOP)  # a later listen() must end too

    async def close(self) -> None:
        """Stop, then close the connection if this consumer owns it.

        Deliveries still unsettled then go back to their queues (the broker requeues what
        a closed channel held). Queues passed in are left open: their channel is yours.
        """
        await self.stop()
        self._running = False
        for ch in self._watched:
            ch.reopen_callbacks.discard(self._on_reopen)
        self._watched = []
        for ch in self._plain:
            ch.close_callbacks.discard(self._on_lost)
        self._plain = []
        await self._close_owned()

    async def _close_owned(self) -> None:
        if self._connection is not None:
            conn, self._connection = self._connection, None
            self._channel = None
            with contextlib.suppress(*CONNECTION_ERRORS):
                await conn.close()

    async def __aenter__(self) -> RabbitMQConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


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


def _message(token: _Token, ordered: bool) -> Message:
    delivered = token.delivered
    delivery: Any = delivered.delivery
    props = delivered.header.properties
    raw = props.headers
    headers = text_headers(raw)
    key = None
    if raw and HEADER_KEY in raw:
        k = raw[HEADER_KEY]
        key = bytes(k) if isinstance(k, (bytes, bytearray)) else str(k).encode()
        del headers[HEADER_KEY]
    if props.app_id == APP_ID:  # see RabbitMQProducer: these travel as properties
        headers[HEADER_CONTENT_TYPE] = props.content_type  # type: ignore[assignment]
        headers[HEADER_EVENT_ID] = props.message_id  # type: ignore[assignment]
        headers[HEADER_EVENT_TYPE] = props.message_type  # type: ignore[assignment]
    elif HEADER_CONTENT_TYPE not in headers and props.content_type:
        headers[HEADER_CONTENT_TYPE] = props.content_type
    count = raw.get("x-delivery-count") if raw else None
    redelivered = bool(delivery.redelivered)
    # Quorum queues count earlier deliveries; classic queues only flag a redelivery.
    attempt = int(count) + 1 if isinstance(count, (int, str)) else 2 if redelivered else 1
    routing_key = delivery.routing_key or ""
    queue = token.queue
    return Message(
        delivered.body,
        route=routing_key,
        headers=headers,
        key=key,
        attempt=attempt,
        metadata={
            "exchange": delivery.exchange,
            "queue": queue,
            "routing_key": routing_key,
            "delivery_tag": token.delivery_tag,
            "redelivered": redelivered,
            "message_id": props.message_id,
            "consumer_tag": delivery.consumer_tag,
        },
        lane=queue if ordered else None,
        token=token,
    )
