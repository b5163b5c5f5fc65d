"""``RabbitMQProducer``: confirmed, persistent publishing over aio-pika."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.abc import DeliveredMessage
from dispytch.cqrs.errors import NoRouteError
from dispytch.cqrs.wire import HEADER_CORRELATION_ID, HEADER_DEADLINE, ReplyHandler
from dispytch.errors import EmitError, EmitRejectedError, EmitTimeoutError, NotStartedError
from dispytch.rabbitmq import _codec, _compat
from dispytch.rabbitmq._common import (
    CONNECTION_ERRORS,
    connect_with,
    declare_exchanges,
    exchange_exists,
    log,
)
from dispytch.rabbitmq.options import CONSUMER_OPTIONS, PRODUCER_OPTIONS, parse
from dispytch.rabbitmq.routes import DEFAULT_TOPIC_EXCHANGE, RabbitMQEventRoute, RabbitMQExchange
from dispytch.routes import EventRoute, TopicRoute
from dispytch.transport import HEADER_CONTENT_TYPE, Message, OutgoingMessage
from pamqp.commands import Basic

_compat.install_tolerant_decoding()

#: RabbitMQ's direct reply-to pseudo-queue: replies to a channel without a reply queue.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: How long after its deadline a request may still wait in a queue: the responder answers
#: it "expired" (and counts it) until then; later the broker drops it, so requests nobody
#: serves never pile up.
EXPIRED_GRACE = 30.0

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    aiormq.exceptions.AMQPError,
    *CONNECTION_ERRORS,
)

#: What the producer may be built over: aio-pika exchanges, a channel, a connection, or a
#: coroutine function that opens a connection.
ConnectionFactory = Callable[[], Awaitable[AbstractConnection]]
ProducerTarget = (
    Iterable[AbstractExchange] | AbstractChannel | AbstractConnection | ConnectionFactory
)


class RabbitMQProducer:
    """Publishes events to RabbitMQ exchanges with publisher confirms.

    ``send`` returns once the broker confirmed the message (``basic.ack``): for a durable
    queue and a persistent message that means it is on disk. Messages are persistent by
    default and published ``mandatory``, so a message no queue receives is an error
    instead of vanishing.

    One constructor, over what you have:

    * aio-pika exchanges you declared (the seed documents' way)::

          channel = await connection.channel()          # confirms are on by default
          exchange = await channel.declare_exchange("user.events", ExchangeType.DIRECT)
          emitter = EventEmitter(RabbitMQProducer([exchange]))
          await emitter.emit(...)                       # no start() needed

      It publishes only to those exchanges (pass ``channel.default_exchange`` too to
      publish to queues by name).
    * an aio-pika channel: any exchange on it (one not known yet is checked passively,
      on a throwaway channel, before the first publish to it);
    * an aio-pika connection: the producer opens its own confirmed channel on it;
    * a connection factory (``lambda: aio_pika.connect_robust(url)``), called at
      ``start()``; :meth:`from_url` builds one.

    Over your objects the producer is usable at once, as long as they are: a closed
    channel or connection raises :class:`~dispytch.errors.NotStartedError` saying so.
    ``stop()`` stops it (sends then raise until ``start()``) and closes what it owns.

    Args:
        target: Exchanges, a channel, a connection, or a connection factory.
        owns: Whether ``stop()`` closes the connection (default: only one the producer
            opened through a factory). The only place ownership is read.
        declare: Exchanges to declare at start (:class:`RabbitMQExchange`; a channel,
            connection or factory target).
        topic_exchange: Where :class:`~dispytch.routes.TopicRoute` events go.
        timeout: Seconds a ``send`` may take in all, waiting for a lost connection to come
            back included, before :class:`~dispytch.errors.EmitTimeoutError`.
        persistent: Delivery mode 2 (written to disk in durable queues). Default ``True``.
        mandatory: Have the broker return messages no queue is bound for (then
            :class:`~dispytch.errors.EmitError`). Default ``True``.
        connect_timeout: Seconds a factory may take to connect.

    Raises:
        TypeError: For a target of another kind.
        ConfigError: For an invalid option.
    """

    def __init__(
        self,
        target: ProducerTarget,
        *,
        owns: bool | None = None,
        declare: Sequence[RabbitMQExchange] = (),
        topic_exchange: str = DEFAULT_TOPIC_EXCHANGE,
        timeout: float = 30.0,
        persistent: bool = True,
        mandatory: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        _, opts = parse(
            None,
            PRODUCER_OPTIONS,
            (),
            {
                "topic_exchange": topic_exchange,
                "timeout": timeout,
                "persistent": persistent,
                "mandatory": mandatory,
                "connect_timeout": connect_timeout,
            },
        )
        self.topic_exchange = opts.topic_exchange
        self.timeout = opts.timeout
        self.persistent = opts.persistent
        self.mandatory = opts.mandatory
        self.connect_timeout = opts.connect_timeout
        self._declare = tuple(declare)
        self._factory: ConnectionFactory | None = None
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None  # any exchange goes through it
        self._own_channel = False
        # exchange name -> the aio-pika channel to publish it on
        self._targets: dict[str, AbstractChannel] = {}
        self._fixed = False  # only the exchanges given
        if isinstance(target, AbstractChannel):
            self._channel = target
        elif isinstance(target, AbstractConnection):
            self._connection = target
        elif callable(target):
            self._factory = target
        else:
            exchanges = list(target)
            if not exchanges:
                raise TypeError(
                    "RabbitMQProducer([]) has no exchange to publish to.\n"
                    "Pass the aio-pika exchanges your events are routed to."
                )
            for ex in exchanges:
                if not isinstance(ex, AbstractExchange):
                    raise TypeError(
                        f"RabbitMQProducer cannot publish through {ex!r}.\n"
                        "Pass aio-pika exchanges, a channel, a connection, or a factory: "
                        "RabbitMQProducer.from_url('amqp://guest:guest@localhost:5672/')."
                    )
                self._targets[ex.name] = ex.channel  # type: ignore[attr-defined]
            self._fixed = True
        if self._declare and self._fixed:
            raise TypeError(
                "declare= needs a channel, a connection or a URL; with aio-pika exchanges, "
                "declare them on your channel yourself."
            )
        self.owns = self._factory is not None if owns is None else owns
        self._confirmed: set[int] = set()  # ids of channels checked for confirms
        self._lookups: dict[str, asyncio.Future[AbstractChannel]] = {}
        self._started = False
        self._stopped = False
        self._start_lock = asyncio.Lock()
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        # Request/reply: the requester's callback, and the aiormq channels consuming
        # direct reply-to (one consume per channel, made before its first request).
        self._deliver_reply: ReplyHandler | None = None
        self._reply_consumers: dict[int, asyncio.Future[Any]] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQProducer:
        """A producer owning a robust connection to ``url``.

        Query parameters ``topic_exchange``, ``timeout``, ``persistent``, ``mandatory``
        and ``connect_timeout`` (see :class:`~dispytch.rabbitmq.options.RabbitMQOptions`)
        and keyword ``options`` (which win) configure it; aio-pika's own parameters
        (``heartbeat``, ``reconnect_interval``, TLS files...) stay in the URL. Consumer
        options in the query are ignored (one URL may serve both sides).

        Raises:
            ConfigError: An unknown or invalid option.
        """
        declare = options.pop("declare", ())
        owns = options.pop("owns", True)
        clean, opts = parse(url, PRODUCER_OPTIONS, CONSUMER_OPTIONS, options)
        assert clean is not None
        values = opts.model_dump(include=set(PRODUCER_OPTIONS))
        return cls(
            connect_with(clean, within=opts.connect_timeout), owns=owns, declare=declare, **values
        )

    @property
    def connection(self) -> AbstractConnection | None:
        """The connection this producer publishes over, when it was given or opened one."""
        return self._connection

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect (factory), open the producer's channel (connection, factory), declare
        ``declare``; over exchanges or a channel, check they are open.

        Raises:
            NotStartedError: A channel or connection given is closed for good.
            ConnectionError: The broker cannot be reached (factory).
            ValueError: An exchange of ``declare`` exists with other settings.
        """
        async with self._start_lock:
            self._stopped = False
            if self._started:
                return
            if self._factory is not None and self._connection is None:
                self._connection = await asyncio.wait_for(self._factory(), self.connect_timeout)
            if self._connection is not None and self._channel is None:
                if self._connection.is_closed:
                    raise self._closed_error("connection")
                try:
                    self._channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    self._own_channel = True
                except RuntimeError as exc:
                    # aio-pika's answer for a connection that was never opened.
                    await self._release()
                    raise NotStartedError(
                        "The aio-pika connection given to RabbitMQProducer is not started: "
                        f"it cannot open a channel ({exc}).\nOpen it first "
                        "(`await connection.connect()`, or make it with "
                        "aio_pika.connect/connect_robust), or use "
                        "RabbitMQProducer.from_url(...)."
                    ) from exc
                except BaseException:
                    await self._release()
                    raise
            for channel in self._channels():
                self._check_usable(channel)
            if self._channel is not None:
                try:
                    await declare_exchanges(self._channel, self._declare)
                except BaseException:
                    await self._release()
                    raise
                self._targets.setdefault("", self._channel)
                for declared in self._declare:
                    self._targets[declared.name] = self._channel
            self._started = True

    async def stop(self) -> None:
        """Stop accepting sends, let sends in progress get their confirms (at most
        ``timeout``), then close the channel the producer opened and, when it owns it,
        the connection.
        """
        self._stopped = True
        if self._in_flight:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), self.timeout)
            except TimeoutError:
                log.warning(
                    "Stopping the RabbitMQ producer with %d send(s) still unconfirmed after "
                    "%gs; they fail.",
                    self._in_flight,
                    self.timeout,
                )
            finally:
                self._drained = None
        self._lookups.clear()
        self._reply_consumers.clear()
        await self._release()

    async def _release(self) -> None:
        self._started = False
        if self._own_channel and self._channel is not None:
            channel, self._channel = self._channel, None
            self._own_channel = False
            self._targets = {k: v for k, v in self._targets.items() if v is not channel}
            self._confirmed.discard(id(channel))
            if not channel.is_closed:
                try:
                    await asyncio.wait_for(channel.close(), 5)
                except _CLOSE_ERRORS:
                    log.debug("Closing the producer's channel failed", exc_info=True)
        if self.owns and self._connection is not None:
            conn = self._connection
            if self._factory is not None:
                self._connection = None
            try:
                await asyncio.wait_for(conn.close(), 5)
            except _CLOSE_ERRORS:
                log.debug("Closing the producer's connection failed", exc_info=True)

    async def __aenter__(self) -> RabbitMQProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- usability
    def _channels(self) -> list[AbstractChannel]:
        seen: dict[int, AbstractChannel] = {id(c): c for c in self._targets.values()}
        if self._channel is not None:
            seen[id(self._channel)] = self._channel
        return list(seen.values())

    def _closed_error(self, what: str) -> NotStartedError:
        return NotStartedError(
            f"The aio-pika {what} this RabbitMQProducer publishes through is closed.\n"
            f"Open a new one and build a new RabbitMQProducer over it (or use "
            "RabbitMQProducer.from_url(...), which reconnects by itself)."
        )

    def _check_usable(self, channel: AbstractChannel) -> None:
        if _compat.closed_for_good(channel):
            raise self._closed_error("channel")
        if id(channel) in self._confirmed:
            return
        if not getattr(channel, "publisher_confirms", True):
            raise ValueError(
                "The aio-pika channel given to RabbitMQProducer has publisher confirms off, "
                "so a published event could be lost unnoticed.\nOpen it with "
                "connection.channel(publisher_confirms=True) (the aio-pika default)."
            )
        self._confirmed.add(id(channel))

    async def _ready(self) -> None:
        """Make sure the producer may send; user objects need no ``start()``."""
        if self._stopped:
            raise NotStartedError(
                "The RabbitMQ producer was stopped.\n"
                "Call `await producer.start()` (or `await emitter.start()`) to use it again."
            )
        if self._started:
            return
        if self._factory is not None:
            raise NotStartedError(
                "The RabbitMQ producer is not started.\nCall `await emitter.start()` (or "
                "`await producer.start()`) or use `async with emitter:` before emitting."
            )
        if self._connection is not None and self._connection.is_closed:
            raise self._closed_error("connection")
        await self.start()

    # ----------------------------------------------------------------- publishing
    def _address(self, route: EventRoute) -> tuple[str, str, RabbitMQEventRoute | None]:
        if isinstance(route, RabbitMQEventRoute):
            return route.exchange, route.routing_key, route
        if isinstance(route, TopicRoute):
            return self.topic_exchange, route.topic, None
        raise EmitRejectedError(
            f"RabbitMQProducer cannot publish to {route!r}.\nUse "
            "RabbitMQEventRoute(exchange=..., routing_key=...) or TopicRoute(topic=...)."
        )

    async def _target(self, exchange: str) -> AbstractChannel:
        target = self._targets.get(exchange)
        if target is not None:
            return target
        if self._fixed:
            known = ", ".join(repr(n) for n in self._targets) or "none"
            hint = (
                " Pass channel.default_exchange to publish to queues by name."
                if exchange == ""
                else ""
            )
            raise EmitRejectedError(
                f"This RabbitMQProducer does not know the exchange {exchange!r} "
                f"(it publishes to: {known}).\nDeclare it and pass it: "
                f"RabbitMQProducer([..., exchange]).{hint}"
            )
        # Check once per name, however many sends race for it.
        pending = self._lookups.get(exchange)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(exchange))
            # Its error reaches every waiter; mark it retrieved even if all gave up.
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._lookups[exchange] = pending
        try:
            return await asyncio.shield(pending)
        finally:
            if pending.done():
                self._lookups.pop(exchange, None)

    async def _lookup(self, exchange: str) -> AbstractChannel:
        channel = self._channel
        assert channel is not None
        try:
            exists = await exchange_exists(_compat.connection_of(channel), exchange)
        except CONNECTION_ERRORS as exc:
            raise EmitError(
                f"Could not check that the exchange {exchange!r} exists: the connection to "
                f"RabbitMQ was lost ({exc}).\nNothing was published; emit again."
            ) from exc
        if not exists:
            raise EmitRejectedError(
                f"The exchange {exchange!r} does not exist.\nDeclare it "
                "(RabbitMQProducer.from_url(url, declare=[RabbitMQExchange("
                f"name={exchange!r}, type=...)]) or with your own tooling) before publishing."
            )
        self._targets[exchange] = channel
        return channel

    async def send(self, message: OutgoingMessage) -> None:
        """Publish one message and wait for the broker's confirm.

        If the connection drops, the send waits for the robust connection to come back
        and publishes again (a message whose confirm was lost may then arrive twice:
        at-least-once), all within ``timeout``.

        Raises:
            NotStartedError: Built from a URL and not started, stopped, or the channel or
                connection given is closed.
            EmitTimeoutError: No confirm within ``timeout``.
            EmitRejectedError: The broker refused the message (nack), or the exchange
                does not exist or is unknown.
            EmitError: No queue was bound for it (mandatory).
        """
        if not self._started or self._stopped:
            await self._ready()
        exchange, routing_key, route = self._address(message.route)
        properties = _codec.properties(message, route, persistent=self.persistent)
        deadline = asyncio.get_running_loop().time() + self.timeout
        self._in_flight += 1
        try:
            channel = self._targets.get(exchange)
            if channel is None:
                async with asyncio.timeout_at(deadline):
                    channel = await self._target(exchange)
            await self._publish(
                channel, exchange, routing_key, message.payload, properties, deadline
            )
        except TimeoutError:
            raise EmitTimeoutError(
                f"RabbitMQ did not confirm the message to {exchange or '(default)'!r} / "
                f"{routing_key!r} within {self.timeout:g}s (is the broker reachable?).\nIt "
                "may or may not have been stored: emit it again if it must arrive."
            ) from None
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._drained is not None:
                self._drained.set()

    async def _publish(
        self,
        channel: AbstractChannel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        deadline: float,
        *,
        mandatory: bool | None = None,
        before: Callable[[aiormq.abc.AbstractChannel], Awaitable[None]] | None = None,
        unroutable: type[Exception] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._started:
                raise NotStartedError(
                    "The RabbitMQ producer was stopped while this event waited to be "
                    "published; it was not confirmed.\nEmit it again after start()."
                )
            try:
                if channel.is_closed:
                    if _compat.closed_for_good(channel):
                        raise self._closed_error("channel")
                    async with asyncio.timeout_at(deadline):
                        await self._wait_ready(channel)
                raw = await _compat.underlay(channel)
                if before is not None:
                    await before(raw)
                # Queued without waiting for the socket to drain; the confirm is awaited.
                result = await _compat.publish_nowait(
                    raw,
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=self.mandatory if mandatory is None else mandatory,
                    timeout=max(deadline - loop.time(), 0.001),
                )
            except aiormq.exceptions.PublishError as exc:
                raise self._unroutable(exchange, routing_key, unroutable) from exc
            except aiormq.exceptions.DeliveryError as exc:
                raise EmitRejectedError(
                    f"RabbitMQ refused the message to {exchange or '(default)'!r} / "
                    f"{routing_key!r} (basic.nack: {exc.frame!r}); a queue may be over its "
                    "length limit with overflow=reject-publish.\nIt was not stored."
                ) from exc
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                if not self._fixed:
                    self._targets.pop(exchange, None)
                raise EmitRejectedError(
                    f"RabbitMQ has no exchange {exchange!r} ({exc}).\nDeclare it before publishing."
                ) from exc
            except aiormq.exceptions.AMQPChannelError as exc:
                raise EmitError(
                    f"RabbitMQ closed the channel publishing to {exchange or '(default)'!r} / "
                    f"{routing_key!r}: {exc}.\nEmit again once the cause is fixed."
                ) from exc
            except CONNECTION_ERRORS as exc:
                if _compat.closed_for_good(channel):
                    raise self._closed_error("channel") from exc
                # The connection went away before the confirm: wait for the robust
                # connection to come back and publish again (bounded by the deadline).
                log.warning(
                    "Publishing to %r / %r failed (%s: %s); waiting for the connection to "
                    "come back",
                    exchange,
                    routing_key,
                    type(exc).__name__,
                    exc,
                )
                async with asyncio.timeout_at(deadline):
                    await self._wait_ready(channel)
                continue
            if result is None:
                raise EmitRejectedError(
                    f"The channel publishing to {exchange!r} has publisher confirms off.\n"
                    "Open it with publisher_confirms=True."
                )
            if not isinstance(result, Basic.Ack):
                # A returned message on a channel opened with on_return_raises=False.
                raise self._unroutable(exchange, routing_key, unroutable)
            return

    # ----------------------------------------------------------------- request/reply
    async def open_replies(self, deliver: ReplyHandler) -> None:
        """Request/reply: replies for this producer go to ``deliver``.

        Replies use RabbitMQ's direct reply-to: no reply queue is declared; each channel
        the producer publishes requests on consumes ``amq.rabbitmq.reply-to`` once (no
        ack), before its first request, and any number of requests may be outstanding on
        it. Over exchanges you passed, that is your exchanges' channel.
        """
        self._deliver_reply = deliver

    async def send_request(self, message: OutgoingMessage) -> None:
        """Publish a request (transient, ``mandatory``) with ``reply_to`` set to direct
        reply-to and the correlation id as the AMQP ``correlation_id`` too.

        Raises:
            NoRouteError: No queue is bound for it (the broker returned it): at once.
            NotStartedError, EmitTimeoutError, EmitRejectedError, EmitError: As ``send``.
        """
        if self._deliver_reply is None:
            raise NotStartedError("open_replies() was not called before send_request().")
        if not self._started or self._stopped:
            await self._ready()
        exchange, routing_key, route = self._address(message.route)
        properties = _codec.properties(message, route, persistent=False)
        properties.reply_to = DIRECT_REPLY_TO
        properties.correlation_id = message.headers.get(HEADER_CORRELATION_ID)
        if properties.expiration is None:
            properties.expiration = _expiration(message.headers.get(HEADER_DEADLINE))
        deadline = asyncio.get_running_loop().time() + self.timeout
        self._in_flight += 1
        try:
            channel = self._targets.get(exchange)
            if channel is None:
                async with asyncio.timeout_at(deadline):
                    channel = await self._target(exchange)
            await self._publish(
                channel,
                exchange,
                routing_key,
                message.payload,
                properties,
                deadline,
                mandatory=True,
                before=self._replies_on,
                unroutable=NoRouteError,
            )
        except TimeoutError:
            raise EmitTimeoutError(
                f"RabbitMQ did not confirm the request to {exchange or '(default)'!r} / "
                f"{routing_key!r} within {self.timeout:g}s (is the broker reachable?)."
            ) from None
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._drained is not None:
                self._drained.set()

    async def _replies_on(self, raw: aiormq.abc.AbstractChannel) -> None:
        """Consume direct reply-to on ``raw`` (once; concurrent first requests share it).

        After a reconnection the robust channel has a new aiormq channel under it: that
        one consumes again before its first request (replies to requests outstanding on
        the lost channel are lost; their callers time out).
        """
        key = id(raw)
        pending = self._reply_consumers.get(key)
        if pending is not None and pending.done() and not _failed(pending):
            return  # consuming already: the common case
        if pending is None or (pending.done() and _failed(pending)):
            for old, fut in list(self._reply_consumers.items()):
                if fut.done() and (_failed(fut) or fut.result().is_closed):
                    del self._reply_consumers[old]  # a lost channel's consume
            pending = asyncio.ensure_future(self._consume_replies(raw))
            pending.add_done_callback(_failed)
            self._reply_consumers[key] = pending
        await asyncio.shield(pending)

    async def _consume_replies(self, raw: aiormq.abc.AbstractChannel) -> aiormq.abc.AbstractChannel:
        deliver = self._deliver_reply
        assert deliver is not None

        async def on_reply(delivered: DeliveredMessage) -> None:
            props = delivered.header.properties
            headers = _codec.text_headers(props.headers)
            if props.correlation_id and HEADER_CORRELATION_ID not in headers:
                headers[HEADER_CORRELATION_ID] = props.correlation_id
            if props.content_type and HEADER_CONTENT_TYPE not in headers:
                headers[HEADER_CONTENT_TYPE] = props.content_type
            deliver(Message(delivered.body, route=DIRECT_REPLY_TO, headers=headers))

        await raw.basic_consume(DIRECT_REPLY_TO, on_reply, no_ack=True)
        return raw

    async def _wait_ready(self, channel: AbstractChannel) -> None:
        if not _compat.is_robust(channel):
            raise self._closed_error("channel")
        await asyncio.sleep(0.05)
        await channel.ready()  # type: ignore[attr-defined]

    def _unroutable(
        self, exchange: str, routing_key: str, kind: type[Exception] | None = None
    ) -> Exception:
        if kind is not None:
            return kind(
                f"RabbitMQ could not route the request to {exchange or '(default)'!r} / "
                f"{routing_key!r}: no queue is bound for it.\nStart a dispatcher with a "
                "handler for it (its queue bound to that routing key) first."
            )
        return EmitError(
            f"RabbitMQ could not route the message to {exchange or '(default)'!r} / "
            f"{routing_key!r}: no queue is bound for it, so it would have been dropped.\n"
            "Declare and bind the consumer's queue before emitting (or publish with "
            "mandatory=False to allow dropping)."
        )

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish all messages at once and wait for every confirm.

        Raises:
            NotStartedError, EmitTimeoutError, EmitError: The first failure, after every
                message was attempted.
        """
        if not messages:
            return
        results = await asyncio.gather(*(self.send(m) for m in messages), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r


def _failed(fut: asyncio.Future[Any]) -> bool:
    """Whether ``fut`` ended without a result (its error counts as retrieved)."""
    return fut.cancelled() or fut.exception() is not None


def _expiration(deadline: str | None) -> str | None:
    """The AMQP ``expiration`` (ms, text) of a request: its deadline plus the grace."""
    if not deadline:
        return None
    try:
        remaining = float(deadline) - time.time()
    except ValueError:
        return None
    return str(max(1, int((remaining + EXPIRED_GRACE) * 1000)))
