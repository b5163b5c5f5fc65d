"""``RabbitMQProducer``: confirmed, persistent publishing over aio-pika."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import aiormq
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from dispytch.errors import EmitError, EmitTimeoutError, NotStartedError
from dispytch.rabbitmq._common import (
    CONNECTION_ERRORS,
    connect,
    declare_exchanges,
    exchange_exists,
    log,
    redact,
)
from dispytch.rabbitmq.routes import DEFAULT_TOPIC_EXCHANGE, RabbitMQEventRoute, RabbitMQExchange
from dispytch.routes import EventRoute, TopicRoute
from dispytch.transport import (
    HEADER_CONTENT_TYPE,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    OutgoingMessage,
)
from pamqp.commands import Basic

#: Header carrying ``OutgoingMessage.key`` (RabbitMQ has no partitioning key of its own).
HEADER_KEY = "dispytch-key"
#: ``app_id`` of messages whose Dispytch headers travel as AMQP properties.
APP_ID = "dispytch"

_PERSISTENT = 2
_TRANSIENT = 1


class RabbitMQProducer:
    """Publishes events to RabbitMQ exchanges with publisher confirms.

    ``send`` returns once the broker confirmed the message (``basic.ack``): for a durable
    queue and a persistent message that means it is on disk. Messages are persistent by
    default and published ``mandatory``, so a message no queue receives is an error
    instead of vanishing.

    Two ways to build one:

    * Over aio-pika exchanges you declared (as Dispytch users write it today)::

          channel = await connection.channel()          # confirms are on by default
          exchange = await channel.declare_exchange("user.events", ExchangeType.DIRECT)
          producer = RabbitMQProducer([exchange])

      It publishes only to those exchanges (pass ``channel.default_exchange`` too to
      publish to queues by name) and never closes your connection.
    * From a URL, owning a robust connection that reconnects by itself::

          producer = RabbitMQProducer.from_url("amqp://guest:guest@localhost:5672/",
                                               exchanges=[RabbitMQExchange(name="user.events",
                                                                           type="topic")])

      It declares exactly the exchanges listed and checks any other exchange a route
      names passively (it must exist already): nothing is created behind your back.

    Routes: :class:`RabbitMQEventRoute` (exchange + routing key) or the transport-neutral
    :class:`~dispytch.routes.TopicRoute`, which publishes its topic as the routing key to
    ``topic_exchange`` (``amq.topic`` by default, a durable topic exchange every broker
    has).

    Args:
        exchanges: aio-pika exchanges to publish to (their channels must have publisher
            confirms on, aio-pika's default).
        url: Instead of ``exchanges``: ``amqp://user:pass@host:port/vhost`` or ``amqps://``.
        declare: With ``url``: exchanges to declare at start (:class:`RabbitMQExchange`).
        topic_exchange: Where :class:`~dispytch.routes.TopicRoute` events go.
        timeout: Seconds a ``send`` may take in all, waiting for a lost connection to come
            back included, before :class:`~dispytch.errors.EmitTimeoutError`.
        persistent: Delivery mode 2 (written to disk in durable queues). Default ``True``.
        mandatory: Have the broker return messages no queue is bound for (then
            :class:`~dispytch.errors.EmitError`). Default ``True``.
        connect_timeout: With ``url``: seconds to wait for the first connection.

    Raises:
        ValueError: When neither or both of ``exchanges`` and ``url`` are given.
    """

    def __init__(
        self,
        exchanges: Iterable[AbstractExchange] | None = None,
        *,
        url: str | None = None,
        declare: Sequence[RabbitMQExchange] = (),
        topic_exchange: str = DEFAULT_TOPIC_EXCHANGE,
        timeout: float = 30.0,
        persistent: bool = True,
        mandatory: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        if (exchanges is None) == (url is None):
            raise ValueError(
                "RabbitMQProducer needs either aio-pika exchanges "
                "(RabbitMQProducer([exchange, ...])) or a URL "
                "(RabbitMQProducer.from_url('amqp://guest:guest@localhost:5672/')), not "
                + ("both." if url is not None else "neither.")
            )
        if declare and url is None:
            raise ValueError(
                "declare= is for producers built from a URL; with aio-pika exchanges, "
                "declare them on your channel yourself."
            )
        self._user_exchanges = list(exchanges) if exchanges is not None else []
        if exchanges is not None and not self._user_exchanges:
            raise ValueError(
                "RabbitMQProducer([]) has no exchange to publish to; pass the aio-pika "
                "exchanges your events are routed to."
            )
        self._url = url
        self._declare = tuple(declare)
        self.topic_exchange = topic_exchange
        self.timeout = timeout
        self.persistent = persistent
        self.mandatory = mandatory
        self.connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        # exchange name -> the aio-pika channel to publish it on
        self._targets: dict[str, AbstractChannel] = {}
        self._lookups: dict[str, asyncio.Future[AbstractChannel]] = {}
        self._running = False
        self._in_flight = 0
        self._drained: asyncio.Event | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQProducer:
        """A producer owning a robust connection to ``url`` (see the class for options)."""
        return cls(url=url, **options)

    @property
    def connection(self) -> AbstractRobustConnection | None:
        """The connection this producer owns (``None`` over user exchanges or unstarted)."""
        return self._connection

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect (URL) or check the exchanges' channels (aio-pika exchanges).

        Raises:
            ValueError: When a passed exchange's channel has publisher confirms off (a
                confirmed publish could not be told from a lost one).
            ConnectionError: When the broker cannot be reached.
        """
        if self._running:
            return
        if self._url is None:
            targets: dict[str, AbstractChannel] = {}
            for ex in self._user_exchanges:
                channel: AbstractChannel = ex.channel  # type: ignore[attr-defined]
                if not getattr(channel, "publisher_confirms", True):
                    raise ValueError(
                        f"The channel of exchange {ex.name!r} has publisher confirms off, so "
                        "a published event could be lost unnoticed. Open it with "
                        "connection.channel(publisher_confirms=True) (the aio-pika default)."
                    )
                targets[ex.name] = channel
            self._targets = targets
        else:
            self._connection = await connect(self._url, within=self.connect_timeout)
            try:
                self._channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                await declare_exchanges(self._channel, self._declare)
            except BaseException:
                await self._connection.close()
                self._connection = None
                raise
            self._targets = {"": self._channel}
            for declared in self._declare:
                self._targets[declared.name] = self._channel
        self._running = True

    async def stop(self) -> None:
        """Stop accepting sends, let sends in progress get their confirms (at most
        ``timeout``), then close the connection when this producer owns it.
        """
        self._running = False
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
        if self._connection is not None:
            conn, self._connection = self._connection, None
            self._channel = None
            await conn.close()

    async def __aenter__(self) -> RabbitMQProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- publishing
    def _address(self, route: EventRoute) -> tuple[str, str, RabbitMQEventRoute | None]:
        if isinstance(route, RabbitMQEventRoute):
            return route.exchange, route.routing_key, route
        if isinstance(route, TopicRoute):
            return self.topic_exchange, route.topic, None
        raise EmitError(
            f"RabbitMQProducer cannot publish to {route!r}. Use "
            "RabbitMQEventRoute(exchange=..., routing_key=...) or TopicRoute(topic=...)."
        )

    async def _target(self, exchange: str) -> AbstractChannel:
        target = self._targets.get(exchange)
        if target is not None:
            return target
        if self._url is None:
            known = ", ".join(repr(n) for n in self._targets) or "none"
            hint = (
                " Pass channel.default_exchange to publish to queues by name."
                if exchange == ""
                else ""
            )
            raise EmitError(
                f"This RabbitMQProducer does not know the exchange {exchange!r} "
                f"(it publishes to: {known}). Declare it and pass it: "
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
        assert self._connection is not None and self._channel is not None
        try:
            exists = await exchange_exists(self._connection, exchange)
        except CONNECTION_ERRORS as exc:
            raise EmitError(
                f"Could not check that the exchange {exchange!r} exists: the connection to "
                f"RabbitMQ was lost ({exc}). Nothing was published; emit again."
            ) from exc
        if not exists:
            raise EmitError(
                f"The exchange {exchange!r} does not exist on {redact(self._url or '')}. "
                "Declare it (RabbitMQProducer.from_url(url, declare=[RabbitMQExchange("
                f"name={exchange!r}, type=...)]) or with your own tooling) before publishing."
            )
        self._targets[exchange] = self._channel
        return self._channel

    def _properties(
        self, message: OutgoingMessage, route: RabbitMQEventRoute | None
    ) -> Basic.Properties:
        headers: dict[str, Any] = dict(message.headers)
        content_type = headers.get(HEADER_CONTENT_TYPE)
        event_id = headers.get(HEADER_EVENT_ID)
        event_type = headers.get(HEADER_EVENT_TYPE)
        app_id = None
        if content_type is not None and event_id is not None and event_type is not None:
            # Dispytch's own headers travel as the standard AMQP properties they are
            # (content_type, message_id, type): other AMQP clients read them there, and
            # the header table, which the client encodes and decodes in Python, shrinks.
            # app_id marks the message so the consumer restores exactly these headers.
            del headers[HEADER_CONTENT_TYPE], headers[HEADER_EVENT_ID], headers[HEADER_EVENT_TYPE]
            app_id = APP_ID
        if message.key is not None:
            headers[HEADER_KEY] = bytearray(message.key)  # AMQP byte array: any bytes travel
        persistent = self.persistent
        priority = expiration = None
        if route is not None:
            if route.persistent is not None:
                persistent = route.persistent
            priority = route.priority
            if route.expiration_ms is not None:
                expiration = str(route.expiration_ms)
        return Basic.Properties(
            content_type=content_type,
            headers=headers,
            delivery_mode=_PERSISTENT if persistent else _TRANSIENT,
            message_id=event_id,
            message_type=event_type,
            app_id=app_id,
            priority=priority,
            expiration=expiration,
        )

    async def send(self, message: OutgoingMessage) -> None:
        """Publish one message and wait for the broker's confirm.

        If the connection drops, the send waits for the robust connection to come back
        and publishes again (a message whose confirm was lost may then arrive twice:
        at-least-once), all within ``timeout``.

        Raises:
            NotStartedError: The producer is not started, or was stopped.
            EmitTimeoutError: No confirm within ``timeout``.
            EmitError: The broker refused the message (nack), no queue was bound for it
                (mandatory), or the exchange does not exist or is unknown.
        """
        if not self._running:
            raise NotStartedError(
                "The RabbitMQ producer is not started. Call `await emitter.start()` (or "
                "`await producer.start()`) or use `async with emitter:` before emitting."
            )
        exchange, routing_key, route = self._address(message.route)
        properties = self._properties(message, route)
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
                f"{routing_key!r} within {self.timeout:g}s (is the broker reachable?). It may "
                "or may not have been stored: emit it again if it must arrive."
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
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._running:
                raise NotStartedError(
                    "The RabbitMQ producer was stopped while this event waited to be "
                    "published; it was not confirmed."
                )
            try:
                if channel.is_closed:
                    async with asyncio.timeout_at(deadline):
                        await self._wait_ready(channel)
                raw = await channel.get_underlay_channel()
                result = await raw.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=self.mandatory,
                    timeout=max(deadline - loop.time(), 0.001),
                )
            except aiormq.exceptions.PublishError as exc:
                raise self._unroutable(exchange, routing_key) from exc
            except aiormq.exceptions.DeliveryError as exc:
                raise EmitError(
                    f"RabbitMQ refused the message to {exchange or '(default)'!r} / "
                    f"{routing_key!r} (basic.nack: {exc.frame!r}); a queue may be over its "
                    "length limit with overflow=reject-publish. It was not stored."
                ) from exc
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                if self._url is not None:
                    self._targets.pop(exchange, None)
                raise EmitError(
                    f"RabbitMQ has no exchange {exchange!r} ({exc}). Declare it before publishing."
                ) from exc
            except aiormq.exceptions.AMQPChannelError as exc:
                raise EmitError(
                    f"RabbitMQ closed the channel publishing to {exchange or '(default)'!r} / "
                    f"{routing_key!r}: {exc}"
                ) from exc
            except CONNECTION_ERRORS as exc:
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
                raise EmitError(
                    f"The channel publishing to {exchange!r} has publisher confirms off; "
                    "open it with publisher_confirms=True."
                )
            if not isinstance(result, Basic.Ack):
                # A returned message on a channel opened with on_return_raises=False.
                raise self._unroutable(exchange, routing_key)
            return

    async def _wait_ready(self, channel: AbstractChannel) -> None:
        ready = getattr(channel, "ready", None)
        if ready is None:
            raise EmitError(
                "The RabbitMQ connection was lost and this channel does not reconnect. "
                "Use aio_pika.connect_robust() for the connection your exchanges live on."
            )
        await asyncio.sleep(0.05)
        await ready()

    def _unroutable(self, exchange: str, routing_key: str) -> EmitError:
        return EmitError(
            f"RabbitMQ could not route the message to {exchange or '(default)'!r} / "
            f"{routing_key!r}: no queue is bound for it, so it would have been dropped. "
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
