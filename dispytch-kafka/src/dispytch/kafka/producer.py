"""The Kafka producer: wraps an ``AIOKafkaProducer`` or builds and owns one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RequestTimedOutError,
)
from dispytch.errors import EmitError, EmitTimeoutError, NotStartedError
from dispytch.kafka.config import (
    coerce_options,
    drop_other_side,
    ensure_ssl_context,
    parse_kafka_url,
)
from dispytch.routes import EventRoute
from dispytch.transport import OutgoingMessage

log = logging.getLogger("dispytch.kafka")

_TIMEOUTS = (KafkaTimeoutError, RequestTimedOutError, asyncio.TimeoutError)

#: Default size of the record batches ``send_batch`` packs (bytes). aiokafka sends one
#: batch per partition per produce request and keeps one request in flight per broker,
#: so a partition's rate is bound by batch size / round trip: with aiokafka's 16 KiB
#: default (about 40 of the benchmark's events with their headers) publishing 20,000
#: events took 1,060 requests. Well below Kafka's default ``message.max.bytes`` (1 MiB).
DEFAULT_BATCH_BYTES = 256 * 1024


def _address(route: EventRoute) -> tuple[str, int | None]:
    topic = getattr(route, "topic", None)
    if not isinstance(topic, str) or not topic:
        raise EmitError(
            f"The Kafka transport publishes to topics; {route!r} has none. "
            "Use KafkaEventRoute(topic=...) or TopicRoute(topic=...)."
        )
    return topic, getattr(route, "partition", None)


def _headers(message: OutgoingMessage) -> list[tuple[str, bytes]]:
    # The emitter already merged the route's static headers into message.headers.
    return [(k, v.encode()) for k, v in message.headers.items()]


class KafkaProducer:
    """Publishes Dispytch events to Kafka through aiokafka.

    Two ways to build one::

        raw = AIOKafkaProducer(bootstrap_servers="localhost:9092")
        await raw.start()                      # you own it: start and stop it yourself
        producer = KafkaProducer(raw)

        producer = KafkaProducer.from_url("kafka://localhost:9092?acks=all")
        # owns its client: EventEmitter.start()/stop() (or `async with`) run it

    Unlike older Dispytch releases, sending through a client that was not started (or was
    stopped) raises :class:`~dispytch.errors.NotStartedError` instead of losing the event.

    Args:
        producer: An ``AIOKafkaProducer`` you manage.
        delivery_timeout: Seconds to wait for the broker to confirm one ``send`` (and a
            whole ``send_batch``) before raising
            :class:`~dispytch.errors.EmitTimeoutError`. ``None`` relies on aiokafka's
            ``request_timeout_ms`` alone.
        batch_bytes: Largest record batch ``send_batch`` packs for one partition
            (default 256 KiB; never below the client's ``max_batch_size``, never above
            its ``max_request_size``). Bigger batches mean fewer produce requests; keep
            it below the topic's ``max.message.bytes``. ``send`` is not affected.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        delivery_timeout: float | None = None,
        batch_bytes: int | None = None,
    ) -> None:
        if not isinstance(producer, AIOKafkaProducer):
            raise TypeError(
                f"KafkaProducer wraps an aiokafka.AIOKafkaProducer, not {type(producer).__name__}. "
                "To build one from a URL use KafkaProducer.from_url('kafka://host:9092')."
            )
        self.raw = producer
        self.delivery_timeout = delivery_timeout
        self.batch_bytes = batch_bytes
        self._owned = False
        self._started = True  # a wrapped client is usable as soon as the user started it
        self._stopped = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        delivery_timeout: float | None = None,
        batch_bytes: int | None = None,
        **options: Any,
    ) -> KafkaProducer:
        """Build a producer that owns its ``AIOKafkaProducer``.

        Args:
            url: ``kafka://host:port[,host2:port][?option=value...]``; query options are
                ``AIOKafkaProducer`` keyword arguments (``acks=all``, ``linger_ms=5``,
                ``security_protocol=SASL_SSL``...). ``user:password@`` becomes SASL PLAIN.
            delivery_timeout: See the class (also ``?delivery_timeout=`` in the URL).
            batch_bytes: See the class (also ``?batch_bytes=`` in the URL).
            **options: More ``AIOKafkaProducer`` keyword arguments; objects such as an
                ``ssl_context`` go here.
        """
        servers, url_options = parse_kafka_url(url)
        if "delivery_timeout" in url_options:
            delivery_timeout = float(url_options.pop("delivery_timeout"))
        if "batch_bytes" in url_options:
            batch_bytes = int(url_options.pop("batch_bytes"))
        from aiokafka import AIOKafkaConsumer
        from dispytch.kafka.consumer import _OUR_OPTIONS as consumer_own

        drop_other_side(url_options, AIOKafkaProducer, AIOKafkaConsumer, consumer_own)
        merged = coerce_options(AIOKafkaProducer, {**url_options, **options})
        merged.setdefault("bootstrap_servers", servers)
        ensure_ssl_context(merged)
        self = cls.__new__(cls)
        self._init_owned(merged, delivery_timeout, batch_bytes)
        return self

    def _init_owned(
        self, options: dict[str, Any], delivery_timeout: float | None, batch_bytes: int | None
    ) -> None:
        self._options = options
        self.raw = None  # made in start(): it needs the running loop
        self.delivery_timeout = delivery_timeout
        self.batch_bytes = batch_bytes
        self._owned = True
        self._started = False
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start the owned client (a wrapped client is left to its owner)."""
        if self._owned and not self._started:
            raw = AIOKafkaProducer(**self._options)
            try:
                await raw.start()
            except BaseException:
                await raw.stop()
                raise
            self.raw = raw
        self._started = True
        self._stopped = False

    async def stop(self) -> None:
        """Flush what is pending; stop the client only if this producer owns it."""
        if self._stopped or self.raw is None:
            self._stopped = True
            return
        self._stopped = True
        if self._owned:
            self._started = False
            raw, self.raw = self.raw, None
            await raw.stop()
        elif not self._raw_closed():
            await self.raw.flush()

    async def __aenter__(self) -> KafkaProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _raw_closed(self) -> bool:
        return bool(getattr(self.raw, "_closed", False))

    def _check_running(self) -> AIOKafkaProducer:
        raw = self.raw
        if self._stopped or not self._started or raw is None:
            raise NotStartedError(
                "The Kafka producer is not started (or was stopped). Call "
                "`await emitter.start()` or use `async with emitter:` before emitting."
            )
        if self._raw_closed():
            raise NotStartedError(
                "The AIOKafkaProducer passed to KafkaProducer was stopped; events sent "
                "through it would be lost. Start a new AIOKafkaProducer and wrap it."
            )
        sender = getattr(raw, "_sender", None)
        if sender is not None and getattr(sender, "sender_task", True) is None:
            raise NotStartedError(
                "The AIOKafkaProducer passed to KafkaProducer was not started. Call "
                "`await raw_producer.start()` before emitting (Dispytch does not start a "
                "client you created), or use KafkaProducer.from_url(...) to let it."
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
                f"Kafka did not accept the event for topic {topic!r} in time ({exc}). "
                "Check that the broker is reachable and the topic exists (or auto-creation "
                "is on); raise request_timeout_ms for slow clusters."
            ) from exc
        except KafkaError as exc:
            raise EmitError(f"Kafka refused the event for topic {topic!r}: {exc!r}") from exc
        except AssertionError as exc:  # aiokafka asserts on an unknown partition
            raise EmitError(
                f"Kafka refused the event for topic {topic!r}, partition {partition}: "
                f"{exc or 'no such partition'}."
            ) from exc

    async def send(self, message: OutgoingMessage) -> None:
        """Publish one message and return once the broker acknowledged it.

        Raises:
            NotStartedError: The client is not running.
            EmitTimeoutError: The broker did not confirm within the delivery timeout.
            EmitError: Kafka refused the message.
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
            raise EmitError(
                f"Kafka failed to store the event for {message.route.address!r}: {exc!r}"
            ) from exc

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish many messages without waiting for each, then wait for all confirmations.

        The records are packed straight into full per-partition record batches (aiokafka's
        ``create_batch``/``send_batch``), one delivery future per batch instead of one per
        record: fewer produce requests, and far less per-record overhead than ``send()``
        in a loop. Keyed records go to the partition the producer's partitioner picks
        (the same one :meth:`send` would use, so per-key order holds across both); records
        without key or partition stick to one partition per topic within a call, as
        Kafka's sticky partitioner does. Every message is attempted; the first failure is
        raised afterwards.

        Raises:
            NotStartedError: The client is not running (nothing was sent).
            EmitTimeoutError: Some delivery was not confirmed in time.
            EmitError: Kafka refused some message.
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

    def _batch_maker(self, raw: AIOKafkaProducer) -> Any:
        """``raw.create_batch``, with batches of ``batch_bytes`` instead of aiokafka's
        ``max_batch_size`` (everything else -- compression, transactions, serializers --
        as ``create_batch`` sets it up)."""
        acc: Any = getattr(raw, "_message_accumulator", None)
        client_size = getattr(acc, "_batch_size", None)
        if not isinstance(client_size, int):
            return raw.create_batch  # an aiokafka without the knob: its own size
        size = DEFAULT_BATCH_BYTES if self.batch_bytes is None else self.batch_bytes
        limit = getattr(raw, "_max_request_size", None)
        if isinstance(limit, int):
            size = min(size, limit)
        if size <= client_size:
            return raw.create_batch

        def create_batch() -> Any:
            # create_batch reads the size from the accumulator; nothing else runs
            # between setting and restoring it (no await).
            acc._batch_size = size
            try:
                return raw.create_batch()
            finally:
                acc._batch_size = client_size

        return create_batch

    async def _send_packed(
        self, raw: AIOKafkaProducer, messages: Sequence[OutgoingMessage]
    ) -> BaseException | None:
        create_batch = self._batch_maker(raw)
        first_error: BaseException | None = None
        known: set[str] = set()
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
                    if topic not in known:
                        await self._metadata(raw, topic)
                        known.add(topic)
                    if address_partition is not None:
                        partition = address_partition
                    elif key is None:
                        partition = sticky.get(topic)  # type: ignore[assignment]
                        if partition is None:
                            partition = sticky[topic] = raw._partition(
                                topic, None, None, None, None, None
                            )
                    else:
                        partition = raw._partition(topic, None, key, None, key, None)
                except EmitError as exc:
                    first_error = first_error or exc
                    last_route = None
                    continue
                slot = (topic, partition)
                if key is None:
                    last_route, last_slot = route, slot
                else:
                    last_route = None
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
        futures: list[tuple[asyncio.Future[Any], str, int]] = []
        for batch, topic, partition, count in full:
            try:
                fut = await raw.send_batch(batch, topic, partition=partition)
            except (KafkaError, AssertionError) as exc:
                first_error = first_error or EmitError(
                    f"Kafka refused {count} events for {topic!r} partition {partition}: {exc!r}"
                )
                continue
            futures.append((fut, topic, count))
        single_futures = []
        for message in singles:
            try:
                single_futures.append((await self._enqueue(raw, message), message))
            except EmitError as exc:
                first_error = first_error or exc
        for fut, topic, count in futures:
            try:
                await fut
            except _TIMEOUTS as exc:
                first_error = first_error or EmitTimeoutError(
                    f"Kafka did not confirm {count} events for {topic!r} in time ({exc!r})."
                )
            except KafkaError as exc:
                hint = (
                    " The record batch is larger than the topic allows: lower batch_bytes "
                    "(KafkaProducer(..., batch_bytes=...) or ?batch_bytes= in the URL)."
                    if isinstance(exc, MessageSizeTooLargeError)
                    else ""
                )
                first_error = first_error or EmitError(
                    f"Kafka failed to store {count} events for {topic!r}: {exc!r}.{hint}"
                )
        for fut, message in single_futures:
            try:
                await self._settle(fut, message)
            except EmitError as exc:
                first_error = first_error or exc
        return first_error

    @staticmethod
    async def _metadata(raw: AIOKafkaProducer, topic: str) -> None:
        try:
            await raw.partitions_for(topic)
        except _TIMEOUTS as exc:
            raise EmitTimeoutError(
                f"Kafka has no metadata for topic {topic!r} ({exc}). Check that the topic "
                "exists (or auto-creation is on) and the broker is reachable."
            ) from exc
        except KafkaError as exc:
            raise EmitError(f"Kafka refused topic {topic!r}: {exc!r}") from exc

    def __repr__(self) -> str:
        owner = "owned" if self._owned else "wrapped"
        return f"<KafkaProducer {owner} started={self._started and not self._stopped}>"


def producer_from_url(url: str, **options: Any) -> KafkaProducer:
    """Plugin factory: a producer that owns its client (see :meth:`KafkaProducer.from_url`)."""
    return KafkaProducer.from_url(url, **options)
