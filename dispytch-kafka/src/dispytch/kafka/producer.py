"""The Kafka producer: wraps an ``AIOKafkaProducer`` (yours, or one it builds and owns)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from dispytch.cqrs.errors import NoRouteError
from dispytch.cqrs.wire import HEADER_DEADLINE, HEADER_REPLY_TO, ReplyHandler
from dispytch.errors import EmitError, EmitRejectedError, EmitTimeoutError, NotStartedError
from dispytch.kafka import _compat
from dispytch.kafka._stopping import stop_within
from dispytch.kafka.config import (
    DEFAULT_BATCH_BYTES,
    PRODUCER_CLOSE_TIMEOUT,
    KafkaConfigError,
    KafkaOptions,
    ensure_ssl_context,
    options_from_url,
)
from dispytch.kafka.replies import ReplyReader
from dispytch.routes import EventRoute
from dispytch.transport import OutgoingMessage

__all__ = ["DEFAULT_BATCH_BYTES", "KafkaProducer", "producer_from_url"]

log = logging.getLogger("dispytch.kafka")

_TIMEOUTS = (KafkaTimeoutError, RequestTimedOutError, asyncio.TimeoutError)

#: Failures that sending the same record again will not fix.
_PERMANENT = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    PolicyViolationError,
    CorruptRecordException,
    UnsupportedForMessageFormatError,
)

_PARTITIONER = DefaultPartitioner()

#: aiokafka's default ``max_batch_size``: records larger than this (in a client you built
#: yourself, whose setting is not public) go through ``send()``, which checks their size.
_AIOKAFKA_BATCH_SIZE = 16384


def _address(route: EventRoute) -> tuple[str, int | None]:
    topic = getattr(route, "topic", None)
    if not isinstance(topic, str) or not topic:
        raise EmitRejectedError(
            f"The Kafka transport publishes to topics; {route!r} has none.\n"
            "Use KafkaEventRoute(topic=...) or TopicRoute(topic=...)."
        )
    return topic, getattr(route, "partition", None)


def _headers(message: OutgoingMessage) -> list[tuple[str, bytes]]:
    # The emitter already merged the route's static headers into message.headers.
    return [(k, v.encode()) for k, v in message.headers.items()]


def _refused(what: str, exc: BaseException) -> EmitError:
    """``EmitRejectedError`` for a permanent failure, else a (transient) ``EmitError``."""
    if isinstance(exc, _PERMANENT):
        hint = (
            "\nLower batch_bytes, or raise the topic's max.message.bytes."
            if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError)
            else ""
        )
        return EmitRejectedError(f"Kafka rejected {what}: {exc!r}.{hint}")
    return EmitError(f"Kafka failed to store {what}: {exc!r}")


class KafkaProducer:
    """Publishes Dispytch events to Kafka through aiokafka.

    Two ways to build one::

        raw = AIOKafkaProducer(bootstrap_servers="localhost:9092")
        await raw.start()                      # yours: start and stop it yourself
        producer = KafkaProducer(raw)          # usable at once, no emitter.start()

        producer = KafkaProducer.from_url("kafka://localhost:9092?acks=all")
        # owns its client: EventEmitter.start()/stop() (or `async with`) run it

    Whether a client you pass is usable is read from the client: sending through one
    that was never started, or was stopped, raises
    :class:`~dispytch.errors.NotStartedError` instead of losing the event.

    Args:
        client: An ``AIOKafkaProducer``, or a callable returning a new unstarted one
            (called in :meth:`start`, where aiokafka needs the running loop).
        owns_client: Whether :meth:`start`/:meth:`stop` start and stop the client.
            Default: ``False`` for a client, ``True`` for a factory.
        options: Validated options (what :meth:`from_url` passes).
        **settings: ``delivery_timeout``: seconds to wait for the broker to confirm one
            ``send`` (and a whole ``send_batch``) before
            :class:`~dispytch.errors.EmitTimeoutError` (default: aiokafka's
            ``request_timeout_ms`` alone). ``send_batch`` packs record batches of the
            client's ``max_batch_size`` (``from_url`` sets it from ``batch_bytes``,
            default 256 KiB; for a client you build, pass ``max_batch_size`` to it).
            ``close_timeout``: longest wait of :meth:`stop` for an owned client's flush
            and disconnect (default 5 s; past it, it goes on in the background).
    """

    def __init__(
        self,
        client: AIOKafkaProducer | Callable[[], AIOKafkaProducer],
        *,
        owns_client: bool | None = None,
        options: KafkaOptions | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(client, AIOKafkaProducer):
            self._factory: Callable[[], AIOKafkaProducer] | None = None
            self.raw: AIOKafkaProducer | None = client
            owns = bool(owns_client)
        elif callable(client):
            self._factory = client
            self.raw = None
            owns = True if owns_client is None else owns_client
        else:
            raise TypeError(
                f"KafkaProducer wraps an aiokafka.AIOKafkaProducer (or a factory of one), "
                f"not {type(client).__name__}.\nTo build one from a URL use "
                "KafkaProducer.from_url('kafka://host:9092')."
            )
        if settings:
            base = {} if options is None else options.model_dump(exclude_unset=True)
            options = KafkaOptions.parse(**{**base, **settings})
        opts = options if options is not None else KafkaOptions()
        given = [*opts.client_options_set(), *(["batch_bytes"] if opts.batch_bytes else [])]
        if self._factory is None and given:
            raise KafkaConfigError(
                f"{', '.join(given)} configure a client Dispytch builds; the "
                "AIOKafkaProducer you pass keeps its own settings.\n"
                "Pass them (batch_bytes as max_batch_size) to AIOKafkaProducer(...), or use "
                "KafkaProducer.from_url."
            )
        self.options = opts
        #: What ``from_url`` builds its client with (for inspection).
        self._client_kwargs: dict[str, Any] = {}
        self.owns_client = owns
        self.delivery_timeout = opts.delivery_timeout
        self.batch_bytes = opts.batch_bytes
        self.close_timeout = (
            PRODUCER_CLOSE_TIMEOUT if opts.close_timeout is None else opts.close_timeout
        )
        self._stopped = False
        #: Request/reply: the reader of this producer's reply partition (first request).
        self._replies: ReplyReader | None = None
        self._deliver_reply: ReplyHandler | None = None
        #: Requests still being sent for callers that were cancelled meanwhile.
        self._background: set[asyncio.Future[None]] = set()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaProducer:
        """Build a producer that owns its ``AIOKafkaProducer``.

        Args:
            url: ``kafka://host:port[,host2:port][?option=value...]``; query options are
                :class:`~dispytch.kafka.config.KafkaOptions` (``acks=all``,
                ``linger_ms=5``, ``delivery_timeout=3``, ``batch_bytes=65536``...).
                ``user:password@`` becomes SASL PLAIN. Consumer options in the query are
                left for the consumer.
            **options: The same options as Python values (an ``ssl_context``...); they
                win over the query.

        Raises:
            ConfigError: On an unknown or invalid option.
        """
        servers, opts = options_from_url(url, "producer", options)
        kwargs = opts.client_kwargs("producer")
        kwargs.setdefault("bootstrap_servers", servers)
        if "max_batch_size" not in kwargs:
            kwargs["max_batch_size"] = opts.batch_bytes or DEFAULT_BATCH_BYTES
        limit = kwargs.get("max_request_size", 1024 * 1024)
        if kwargs["max_batch_size"] > limit:
            raise KafkaConfigError(
                f"batch_bytes={kwargs['max_batch_size']} is above max_request_size={limit}.\n"
                "Lower batch_bytes or raise max_request_size."
            )
        ensure_ssl_context(kwargs)

        def build() -> AIOKafkaProducer:
            return AIOKafkaProducer(**kwargs)

        self = cls(build, owns_client=True, options=opts)
        self._client_kwargs = kwargs
        return self

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start the client if this producer owns it (a client you pass is yours)."""
        self._stopped = False
        raw = self.raw
        if raw is None or (self.owns_client and _compat.client_closed(raw)):
            if self._factory is None:
                return  # a closed client of yours: send() says so
            raw = self._factory()
            if not isinstance(raw, AIOKafkaProducer):
                raise TypeError(
                    f"The KafkaProducer factory returned {type(raw).__name__}, not an "
                    "AIOKafkaProducer.\nReturn a new, unstarted AIOKafkaProducer."
                )
            self.raw = raw
        if self.owns_client and not _compat.producer_started(raw):
            try:
                await raw.start()
            except BaseException:
                await raw.stop()
                raise

    async def stop(self) -> None:
        """Flush what is pending; stop the client only if this producer owns it (within
        ``close_timeout``: a broker that is down must not hang a stop)."""
        self._stopped = True
        replies, self._replies = self._replies, None
        if replies is not None:
            await replies.close()
        raw = self.raw
        if raw is None or _compat.client_closed(raw):
            return
        if self.owns_client:
            if self._factory is not None:
                self.raw = None
            await stop_within(raw, self.close_timeout, "Kafka producer")
        elif _compat.producer_started(raw):
            await raw.flush()

    async def __aenter__(self) -> KafkaProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check_running(self) -> AIOKafkaProducer:
        raw = self.raw
        if self.owns_client and (self._stopped or raw is None):
            raise NotStartedError(
                "The Kafka producer is not started (or was stopped).\n"
                "Call `await emitter.start()` or use `async with emitter:` before emitting."
            )
        if raw is None or _compat.client_closed(raw):
            raise NotStartedError(
                "The AIOKafkaProducer passed to KafkaProducer was stopped; events sent "
                "through it would be lost.\nStart a new AIOKafkaProducer and wrap it, or "
                "let Dispytch own one: KafkaProducer.from_url('kafka://...')."
            )
        if not _compat.producer_started(raw):
            raise NotStartedError(
                "The AIOKafkaProducer passed to KafkaProducer was not started.\n"
                "Call `await raw_producer.start()` before emitting (Dispytch does not start "
                "a client you created), or use KafkaProducer.from_url(...) to let it."
            )
        return raw

    # -- sending -----------------------------------------------------------------------
    async def _enqueue(
        self, raw: AIOKafkaProducer, message: OutgoingMessage
    ) -> asyncio.Future[Any]:
        topic, partition = _address(message.route)
        try:
            return await raw.send(  # type: ignore[no-any-return]
                topic,
                message.payload,
                key=message.key,
                partition=partition,
                headers=_headers(message) if message.headers else None,
            )
        except _TIMEOUTS as exc:
            raise EmitTimeoutError(
                f"Kafka did not accept the event for topic {topic!r} in time ({exc}).\n"
                "Check that the broker is reachable and the topic exists (or auto-creation "
                "is on); raise request_timeout_ms for slow clusters."
            ) from exc
        except KafkaError as exc:
            raise _refused(f"the event for topic {topic!r}", exc) from exc
        except (TypeError, ValueError) as exc:  # not bytes (a serializer on your client?)
            raise EmitRejectedError(
                f"Kafka could not serialise the event for topic {topic!r}: {exc}.\n"
                "Do not set key_serializer/value_serializer on the AIOKafkaProducer."
            ) from exc
        except AssertionError as exc:  # aiokafka asserts on an unknown partition
            raise EmitRejectedError(
                f"Kafka refused the event for topic {topic!r}, partition {partition}: "
                f"{exc or 'no such partition'}.\nRoute it to an existing partition."
            ) from exc

    async def send(self, message: OutgoingMessage) -> None:
        """Publish one message and return once the broker acknowledged it.

        Raises:
            NotStartedError: The client is not running.
            EmitTimeoutError: The broker did not confirm within the delivery timeout.
            EmitRejectedError: Kafka refused the message for good (too large, no such
                topic, not authorised).
            EmitError: Kafka failed to store it (maybe transient).
        """
        raw = self._check_running()
        if self.delivery_timeout is None:
            fut = await self._enqueue(raw, message)
            await self._settle(fut, message)
            return
        try:
            async with asyncio.timeout(self.delivery_timeout):
                fut = await self._enqueue(raw, message)
                await self._settle(fut, message)
        except TimeoutError as exc:
            if isinstance(exc, EmitTimeoutError):
                raise
            raise EmitTimeoutError(
                f"Kafka did not confirm the event for {message.route.address!r} within "
                f"{self.delivery_timeout} s."
            ) from None

    async def _settle(self, fut: asyncio.Future[Any], message: OutgoingMessage) -> None:
        try:
            await fut
        except _TIMEOUTS as exc:
            raise EmitTimeoutError(
                f"Kafka did not confirm the event for {message.route.address!r} in time ({exc!r})."
            ) from exc
        except KafkaError as exc:
            raise _refused(f"the event for {message.route.address!r}", exc) from exc

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish many messages without waiting for each, then wait for all confirmations.

        The records are packed straight into full per-partition record batches (aiokafka's
        public ``create_batch``/``send_batch``), one delivery future per batch instead of
        one per record: fewer produce requests, and far less per-record overhead than
        ``send()`` in a loop. Keyed records go to the partition Kafka's default
        partitioner (murmur2 of the key, as ``send`` uses unless you gave your client
        another ``partitioner``) picks, so per-key order holds across both; records
        without key or partition stick to one partition per topic within a call, as
        Kafka's sticky partitioner does. A record as large as a whole batch goes through
        ``send`` after the packed ones (so it may land after records that followed it).
        Every message is attempted; the first failure is raised afterwards.

        Raises:
            NotStartedError: The client is not running (nothing was sent).
            EmitTimeoutError: Some delivery was not confirmed in time.
            EmitRejectedError: Kafka refused some message for good.
            EmitError: Kafka failed to store some message.
        """
        raw = self._check_running()
        if not messages:
            return
        try:
            async with asyncio.timeout(self.delivery_timeout):
                first_error = await self._send_packed(raw, messages)
        except TimeoutError:
            raise EmitTimeoutError(
                f"Kafka did not confirm a batch of {len(messages)} events within "
                f"{self.delivery_timeout} s."
            ) from None
        if first_error is not None:
            raise first_error

    async def _send_packed(
        self, raw: AIOKafkaProducer, messages: Sequence[OutgoingMessage]
    ) -> BaseException | None:
        create_batch = raw.create_batch
        big = self._client_kwargs.get("max_batch_size", _AIOKAFKA_BATCH_SIZE)
        first_error: BaseException | None = None
        partitions_of: dict[str, list[int]] = {}
        sticky: dict[str, int] = {}
        open_batches: dict[tuple[str, int], Any] = {}
        full: list[tuple[Any, str, int, int]] = []
        counts: dict[tuple[str, int], int] = {}
        singles: list[OutgoingMessage] = []
        # An unkeyed message on the same route object as the one before (the emitter
        # reuses a static route's object) goes where that one went: skip the lookups.
        last_route: EventRoute | None = None
        last_slot = ("", 0)
        for message in messages:
            route = message.route
            key = message.key
            if route is last_route and key is None:
                slot = last_slot
                topic, partition = slot
            else:
                try:
                    topic, address_partition = _address(route)
                    known = partitions_of.get(topic)
                    if known is None:
                        known = partitions_of[topic] = await self._partitions(raw, topic)
                    if address_partition is not None:
                        partition = address_partition
                    elif key is None:
                        partition = sticky.get(topic)  # type: ignore[assignment]
                        if partition is None:
                            partition = sticky[topic] = _PARTITIONER(None, known, known)
                    else:
                        partition = _PARTITIONER(key, known, known)
                except EmitError as exc:
                    first_error = first_error or exc
                    last_route = None
                    continue
                slot = (topic, partition)
                if key is None:
                    last_route, last_slot = route, slot
                else:
                    last_route = None
            if len(message.payload) > big:
                # As large as a whole batch: send() checks it against max_request_size
                # (a batch would carry it to the broker whatever its size).
                singles.append(message)
                continue
            hdrs = message.headers
            # The emitter already merged the route's static headers into the message's.
            headers = [(k, v.encode()) for k, v in hdrs.items()] if hdrs else None
            batch = open_batches.get(slot)
            if batch is None:
                batch = open_batches[slot] = create_batch()
                counts[slot] = 0
            if batch.append(timestamp=None, key=key, value=message.payload, headers=headers):
                counts[slot] += 1
                continue
            # The batch is full: queue it and start another.
            if counts[slot]:
                full.append((batch, topic, partition, counts[slot]))
            batch = open_batches[slot] = create_batch()
            counts[slot] = 0
            if batch.append(timestamp=None, key=key, value=message.payload, headers=headers):
                counts[slot] += 1
            else:
                singles.append(message)  # larger than a batch: send() reports why
        for slot, batch in open_batches.items():
            if counts[slot]:
                full.append((batch, slot[0], slot[1], counts[slot]))
        futures: list[tuple[asyncio.Future[Any], str, int, int]] = []
        for batch, topic, partition, count in full:
            try:
                fut = await raw.send_batch(batch, topic, partition=partition)
            except KafkaError as exc:
                first_error = first_error or _refused(f"{count} events for {topic!r}", exc)
                continue
            except AssertionError as exc:
                first_error = first_error or EmitRejectedError(
                    f"Kafka refused {count} events for {topic!r} partition {partition}: "
                    f"{exc or 'no such partition'}.\nRoute them to an existing partition."
                )
                continue
            futures.append((fut, topic, partition, count))
        single_futures = []
        for message in singles:
            try:
                single_futures.append((await self._enqueue(raw, message), message))
            except EmitError as exc:
                first_error = first_error or exc
        for fut, topic, partition, count in futures:
            try:
                await fut
            except _TIMEOUTS as exc:
                first_error = first_error or EmitTimeoutError(
                    f"Kafka did not confirm {count} events for {topic!r} in time ({exc!r})."
                )
            except KafkaError as exc:
                first_error = first_error or _refused(
                    f"{count} events for {topic!r} partition {partition}", exc
                )
        for fut, message in single_futures:
            try:
                await self._settle(fut, message)
            except EmitError as exc:
                first_error = first_error or exc
        return first_error

    @staticmethod
    async def _partitions(raw: AIOKafkaProducer, topic: str) -> list[int]:
        try:
            found = await raw.partitions_for(topic)
        except _TIMEOUTS as exc:
            raise EmitTimeoutError(
                f"Kafka has no metadata for topic {topic!r} ({exc}).\nCheck that the topic "
                "exists (or auto-creation is on) and the broker is reachable."
            ) from exc
        except KafkaError as exc:
            raise _refused(f"topic {topic!r}", exc) from exc
        if not found:
            raise EmitError(
                f"Kafka reports no partitions for topic {topic!r}.\nCreate the topic first."
            )
        return sorted(found)

    # -- request/reply -----------------------------------------------------------------
    async def open_replies(self, deliver: ReplyHandler) -> None:
        """Request/reply: start reading this producer's reply partition (idempotent).

        Replies come back on one partition of ``reply_topic`` (created with
        ``reply_partitions`` partitions when missing), read by a small
        ``AIOKafkaConsumer`` this producer owns, without a consumer group (assigned, so
        no rebalance), from the partition's end as it is now.
        """
        raw = self._check_running()
        self._deliver_reply = deliver
        if self._replies is None:
            self._replies = ReplyReader(
                self._connection(raw), self.options.reply_topic, self.options.reply_partitions
            )
        try:
            await self._replies.open(deliver)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise EmitError(
                f"Kafka could not open the reply topic {self.options.reply_topic!r}: {exc!r}.\n"
                "Check that the broker is reachable and allows creating it (or create it)."
            ) from exc

    def _connection(self, raw: AIOKafkaProducer) -> dict[str, Any]:
        if self._client_kwargs:
            return dict(self._client_kwargs)
        return _compat.connection_of(raw)

    async def send_request(self, message: OutgoingMessage) -> None:
        """Publish a request with ``dispytch-reply-to: <reply topic>:<partition>``.

        Raises:
            NoRouteError: Its topic does not exist (at once; a topic that exists but
                that no consumer group reads is not detected).
            NotStartedError: The producer is not started, or ``open_replies`` was not
                called.

        A caller cancelled while this runs cancels only its wait: the request is still
        sent (cancelling a request is local, as the contract says), failures then logged.
        """
        self._check_running()
        replies = self._replies
        deliver = self._deliver_reply
        if replies is None or replies.address is None or deliver is None:
            raise NotStartedError("open_replies() was not called before send_request().")
        sending = asyncio.ensure_future(self._send_request(replies, deliver, message))
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            self._background.add(sending)
            sending.add_done_callback(self._sent_in_background)
            raise

    def _sent_in_background(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("A request whose caller was cancelled failed: %r", task.exception())

    async def _send_request(
        self, replies: ReplyReader, deliver: ReplyHandler, message: OutgoingMessage
    ) -> None:
        await replies.open(deliver)  # reopened if its reader stopped
        topic, _ = _address(message.route)
        try:
            routable = await replies.routable(topic)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise EmitError(f"Kafka could not list topics for a request: {exc!r}") from exc
        if not routable:
            raise NoRouteError(
                f"Kafka has no topic {topic!r}, so nothing can receive the request.\n"
                "Start a dispatcher with a handler for it (or create the topic)."
            )
        assert replies.address is not None
        headers = dict(message.headers)
        try:
            deadline = float(headers.get(HEADER_DEADLINE, ""))
        except ValueError:
            deadline = time.time() + 60.0
        replies.expect(deadline)
        headers[HEADER_REPLY_TO] = replies.address
        await self.send(
            OutgoingMessage(
                payload=message.payload, route=message.route, headers=headers, key=message.key
            )
        )

    def __repr__(self) -> str:
        owner = "owned" if self.owns_client else "wrapped"
        return f"<KafkaProducer {owner}>"


def producer_from_url(url: str, **options: Any) -> KafkaProducer:
    """Plugin factory: a producer that owns its client (see :meth:`KafkaProducer.from_url`)."""
    return KafkaProducer.from_url(url, **options)
