"""The Kafka consumer: at-least-once delivery with per-partition ordered commits.

How it works:

* ``listen()`` fetches batches with ``getmany()`` and hands records to the dispatcher
  one by one. Each record's offset is tracked as received (:mod:`dispytch.kafka.offsets`).
* ``Message.lane`` is ``(topic, partition)``: the dispatcher handles one partition in
  order while partitions run concurrently. ``ordered=False`` sets no lane, so records of
  one partition may also be handled concurrently; commits stay correct either way.
* ``ack`` / ``nack`` mark a record finished; a partition's commit point advances only
  past records that all finished, so a slow or failed record holds it back and nothing
  below an unfinished record is ever committed. Commits go out from a background task
  at most every ``commit_interval`` seconds, on partition revoke (after waiting, within
  ``revoke_timeout``, for the revoked partitions' in-flight records) and on ``close``.
  ``enable_auto_commit`` is never used.
* ``nack(requeue=True)`` seeks the partition back to that record: it and everything after
  it are fetched and delivered again (records after it that the dispatcher already held
  may therefore be handled twice, the first time before the requeued one comes back), and
  nothing at or past it is committed before then. Kafka keeps no delivery counter:
  ``attempt`` counts redeliveries within this consumer only.
* ``nack(requeue=False)``: Kafka cannot reject a record, so giving up on one means
  committing past it, as for an ack. Dead-letter it first (the ``DeadLetter``
  middleware) if it must not be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
)
from dispytch.errors import NotStartedError
from dispytch.kafka.config import (
    KafkaConfigError,
    coerce_options,
    drop_other_side,
    ensure_ssl_context,
    parse_bool,
    parse_kafka_url,
)
from dispytch.kafka.offsets import Delivery, PartitionOffsets
from dispytch.kafka.routes import KafkaEventSubscription
from dispytch.routes import EventSubscription, TopicSubscription
from dispytch.transport import EncodedHeaders, Message

log = logging.getLogger("dispytch.kafka")

#: Records taken from aiokafka per poll unless ``max_records`` says otherwise. On the
#: benchmark (one partition, 20,000 records) polls of 50 to 200 records finished the run
#: about 6% sooner than taking the whole buffer (thousands of records) at once.
DEFAULT_MAX_RECORDS = 100

_OUR_OPTIONS = frozenset(
    {"ordered", "revoke_timeout", "commit_interval", "poll_timeout", "max_records"}
)


class KafkaMessage(Message):
    """A :class:`~dispytch.transport.Message` made from an aiokafka ``ConsumerRecord``.

    ``metadata`` (``topic``, ``partition``, ``offset``, ``timestamp`` in ms) is read from
    the record when first asked for, and headers are decoded when read: most handlers
    never look, and a consumer makes one of these per record.
    """

    __slots__ = ("_meta", "record")

    def __init__(
        self, record: Any, headers: Mapping[str, str], lane: Hashable | None, token: Delivery
    ) -> None:
        value = record.value
        self.payload = value if value is not None else b""
        self.route = record.topic
        self.headers = headers
        self.key = record.key
        self.attempt = token.attempt
        self.lane = lane
        self.token = token
        #: The aiokafka ``ConsumerRecord`` this message was made from.
        self.record = record
        self._meta: Mapping[str, Any] | None = None

    @property
    def metadata(self) -> Mapping[str, Any]:  # type: ignore[override]
        """``topic``, ``partition``, ``offset`` and ``timestamp`` (ms) of the record."""
        meta = self._meta
        if meta is None:
            rec = self.record
            meta = self._meta = {
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "timestamp": rec.timestamp,
            }
        return meta


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Flushes commits of revoked partitions; chains a listener the user had set."""

    def __init__(self, owner: KafkaConsumer, chained: Any = None) -> None:
        self.owner = owner
        self.chained = chained

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        await self.owner._on_revoked(revoked)
        if self.chained is not None:
            res = self.chained.on_partitions_revoked(revoked)
            if asyncio.iscoroutine(res):
                await res

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        self.owner._on_assigned(assigned)
        if self.chained is not None:
            res = self.chained.on_partitions_assigned(assigned)
            if asyncio.iscoroutine(res):
                await res


def _subscription_target(subscriptions: Sequence[EventSubscription]) -> tuple[set[str], str | None]:
    """Topics to subscribe to, or one regular expression when any subscription is a pattern."""
    statics: set[str] = set()
    regexes: list[str] = []
    for sub in subscriptions:
        topic = getattr(sub, "topic", None)
        if not isinstance(sub, KafkaEventSubscription | TopicSubscription) or not isinstance(
            topic, str
        ):
            raise TypeError(
                f"The Kafka consumer cannot serve {sub!r}. Use "
                "KafkaEventSubscription(topic=...) or TopicSubscription(topic=...)."
            )
        pattern = sub.compiled
        if pattern.is_static:
            statics.add(topic)
        else:
            regexes.append(pattern.regex)
    if not regexes:
        return statics, None
    parts = [f"(?:{rx})" for rx in regexes] + [f"(?:^{re.escape(t)}$)" for t in sorted(statics)]
    return set(), "|".join(parts)


class KafkaConsumer:
    """Consumes Kafka records for an :class:`~dispytch.EventDispatcher`, at least once.

    Two ways to build one::

        raw = AIOKafkaConsumer("orders", bootstrap_servers="localhost:9092",
                               group_id="billing", enable_auto_commit=False)
        await raw.start()              # you own it: Dispytch never stops it
        consumer = KafkaConsumer(raw)

        consumer = KafkaConsumer.from_url("kafka://localhost:9092", group_id="billing")
        # owns its client: the dispatcher starts and closes it; topics come from
        # the handlers' subscriptions

    Args:
        consumer: An ``AIOKafkaConsumer`` with a ``group_id`` and
            ``enable_auto_commit=False`` (auto-commit would commit records before they
            were handled). Topics it is not yet subscribed to are added from the
            handlers' subscriptions (this re-subscribes it, with a rebalance listener
            that flushes commits and then calls any listener you had set).
        ordered: ``True`` (default): records of one partition are handled one after
            another, in offset order, partitions concurrently. ``False``: records of one
            partition may be handled concurrently too (commits stay correct).
        revoke_timeout: On a rebalance, how long to wait for in-flight records of the
            revoked partitions before committing what finished and letting them go
            (what did not finish is delivered again to the new owner). Keep it below the
            group's ``rebalance_timeout_ms``.
        commit_interval: Minimum seconds between two periodic commits.
        poll_timeout: Longest wait, in seconds, of one idle fetch (``stop`` interrupts it).
        max_records: Records taken from aiokafka per poll (``None``: aiokafka's
            ``max_poll_records``, by default everything it has buffered). aiokafka keeps
            fetched batches as bytes and makes record objects only for what a poll
            takes; the dispatcher takes ``max_in_flight`` records at a time anyway, so
            the default of 100 keeps few records alive at once, instead of thousands of
            records (and their header tuples) waiting in memory and in the garbage
            collector's young generations.

    Raises:
        KafkaConfigError: The consumer has auto-commit on, or no ``group_id``.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        ordered: bool = True,
        revoke_timeout: float = 10.0,
        commit_interval: float = 0.5,
        poll_timeout: float = 1.0,
        max_records: int | None = DEFAULT_MAX_RECORDS,
    ) -> None:
        if not isinstance(consumer, AIOKafkaConsumer):
            raise TypeError(
                f"KafkaConsumer wraps an aiokafka.AIOKafkaConsumer, not "
                f"{type(consumer).__name__}. To build one from a URL use "
                "KafkaConsumer.from_url('kafka://host:9092', group_id='...')."
            )
        if getattr(consumer, "_enable_auto_commit", False):
            raise KafkaConfigError(
                "The AIOKafkaConsumer has enable_auto_commit=True: it would commit offsets "
                "of records before their handlers finished, losing them on a crash. Create "
                "it with enable_auto_commit=False; Dispytch commits after handling."
            )
        if getattr(consumer, "_group_id", None) is None:
            raise KafkaConfigError(
                "The AIOKafkaConsumer has no group_id, so Kafka cannot store its offsets. "
                "Create it with group_id='your-service'."
            )
        self._setup(
            ordered=ordered,
            revoke_timeout=revoke_timeout,
            commit_interval=commit_interval,
            poll_timeout=poll_timeout,
            max_records=max_records,
        )
        self.raw: AIOKafkaConsumer | None = consumer
        self.group_id: str | None = consumer._group_id
        self._owned = False

    def _setup(
        self,
        *,
        ordered: bool,
        revoke_timeout: float,
        commit_interval: float,
        poll_timeout: float,
        max_records: int | None,
    ) -> None:
        self.ordered = ordered
        self.revoke_timeout = revoke_timeout
        self.commit_interval = commit_interval
        self.poll_timeout = poll_timeout
        self.max_records = max_records
        self._subscriptions: list[EventSubscription] = []
        self._states: dict[TopicPartition, PartitionOffsets] = {}
        self._running = False
        self._started = False
        self._closed = False
        self._stop_future: asyncio.Future[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._commit_timer: asyncio.TimerHandle | None = None
        self._last_commit = 0.0
        self._dirty = False
        self._options: dict[str, Any] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        group_id: str | None = None,
        ordered: bool = True,
        revoke_timeout: float = 10.0,
        commit_interval: float = 0.5,
        poll_timeout: float = 1.0,
        max_records: int | None = DEFAULT_MAX_RECORDS,
        **options: Any,
    ) -> KafkaConsumer:
        """Build a consumer that owns its ``AIOKafkaConsumer``.

        Args:
            url: ``kafka://host:port[,host2:port][?option=value...]``; query options are
                ``AIOKafkaConsumer`` keyword arguments (``group_id``,
                ``security_protocol``, ``max_poll_records``...) or this class's own
                (``ordered``, ``revoke_timeout``, ...). ``user:password@`` becomes SASL
                PLAIN.
            group_id: The consumer group; may also come from the URL or from the
                subscriptions' ``group_id``.
            **options: More ``AIOKafkaConsumer`` keyword arguments (an ``ssl_context``,
                ``auto_offset_reset``...). ``auto_offset_reset`` defaults to
                ``"earliest"`` so a new group does not skip events published before it
                first joined.

        Raises:
            KafkaConfigError: On ``enable_auto_commit=True`` or an unknown option.
        """
        servers, url_options = parse_kafka_url(url)
        ours: dict[str, Any] = {
            "ordered": ordered,
            "revoke_timeout": revoke_timeout,
            "commit_interval": commit_interval,
            "poll_timeout": poll_timeout,
            "max_records": max_records,
        }
        for key in _OUR_OPTIONS & url_options.keys():
            raw_value = url_options.pop(key)
            if key == "ordered":
                ours[key] = parse_bool(key, raw_value)
            elif key == "max_records":
                ours[key] = int(raw_value)
            else:
                ours[key] = float(raw_value)
        drop_other_side(
            url_options,
            AIOKafkaConsumer,
            AIOKafkaProducer,
            frozenset({"delivery_timeout", "batch_bytes"}),
        )
        merged = coerce_options(AIOKafkaConsumer, {**url_options, **options})
        if merged.get("enable_auto_commit"):
            raise KafkaConfigError(
                "enable_auto_commit=True would commit offsets of records before their "
                "handlers finished. Dispytch commits after handling: leave it off."
            )
        merged["enable_auto_commit"] = False
        merged.setdefault("bootstrap_servers", servers)
        merged.setdefault("auto_offset_reset", "earliest")
        if group_id is not None:
            merged["group_id"] = group_id
        ensure_ssl_context(merged)
        self = cls.__new__(cls)
        self._setup(**ours)
        self.raw = None  # built in start(): aiokafka needs the running loop
        self.group_id = merged.pop("group_id", None)
        self._options = merged
        self._owned = True
        return self

    # -- subscriptions -----------------------------------------------------------------
    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        """Add the handlers' subscriptions (before :meth:`start`).

        Raises:
            TypeError: On a subscription this transport cannot serve.
            KafkaConfigError: When subscriptions name different consumer groups.
        """
        _subscription_target(subscriptions)  # validate early
        for sub in subscriptions:
            gid = getattr(sub, "group_id", None)
            if gid is None:
                continue
            if self.group_id is None and self._owned:
                self.group_id = gid
            elif gid != self.group_id:
                raise KafkaConfigError(
                    f"{sub!r} wants consumer group {gid!r}, but this consumer is in group "
                    f"{self.group_id!r}. One Kafka consumer belongs to one group: use one "
                    "dispatcher (and consumer) per group."
                )
        self._subscriptions.extend(s for s in subscriptions if s not in self._subscriptions)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe and join the group (builds the client when this consumer owns it).

        Raises:
            KafkaConfigError: Nothing to consume, or no consumer group.
        """
        if self._started and not self._closed:
            return
        # A closed consumer may start again (a dispatcher restarted): fresh trackers.
        self._closed = False
        self._states = {}
        self._dirty = False
        loop = asyncio.get_running_loop()
        self._stop_future = loop.create_future()
        if self._owned:
            await self._start_owned()
        else:
            await self._start_wrapped()
        self._started = True
        self._running = True
        self._last_commit = loop.time()

    async def _start_owned(self) -> None:
        if self.group_id is None:
            raise KafkaConfigError(
                "The Kafka consumer needs a consumer group to commit offsets: pass "
                "group_id='your-service' (or ?group_id=... in the URL, or "
                "KafkaEventSubscription(group_id=...))."
            )
        if not self._subscriptions:
            raise KafkaConfigError(
                "The Kafka consumer has nothing to consume: register a handler with a "
                "KafkaEventSubscription(topic=...) before starting."
            )
        raw = AIOKafkaConsumer(group_id=self.group_id, **self._options)
        topics, pattern = _subscription_target(self._subscriptions)
        listener = _RebalanceListener(self)
        if pattern is not None:
            raw.subscribe(pattern=pattern, listener=listener)
        else:
            raw.subscribe(topics=sorted(topics), listener=listener)
        try:
            await raw.start()
        except BaseException:
            await raw.stop()
            raise
        self.raw = raw

    async def _start_wrapped(self) -> None:
        raw = self.raw
        assert raw is not None
        if getattr(raw, "_closed", False):
            raise NotStartedError(
                "The AIOKafkaConsumer passed to KafkaConsumer was stopped. Create a new one."
            )
        state = raw._subscription
        current = state.subscription
        if current is not None and not state.partitions_auto_assigned():
            # Manual assignment (raw.assign): no group rebalances, nothing to hook.
            if self._subscriptions:
                log.debug("Kafka consumer uses a manual assignment; subscriptions unused")
        elif getattr(raw, "_fetcher", True) is None:
            # Not started yet: subscribe it (with our rebalance listener) and start it.
            # It stays yours: Dispytch will not stop it.
            self._subscribe_unstarted(raw)
            await raw.start()
            return
        elif current is None:
            raise KafkaConfigError(
                "The AIOKafkaConsumer was started without a subscription. Pass topics to "
                "AIOKafkaConsumer(...), or hand Dispytch an unstarted consumer."
            )
        else:
            # Started and subscribed: re-subscribing a running aiokafka consumer is
            # fragile, so hook our listener into its subscription instead.
            if state.subscribed_pattern is None:
                topics, pattern = _subscription_target(self._subscriptions)
                missing = sorted(topics - set(current.topics))
                if missing:
                    raise KafkaConfigError(
                        f"The running AIOKafkaConsumer is not subscribed to {missing}, which "
                        "handlers consume. Add them to its topics, or hand Dispytch an "
                        "unstarted consumer to subscribe."
                    )
                if pattern is not None:
                    log.warning(
                        "Handlers use topic patterns, but the running AIOKafkaConsumer is "
                        "subscribed to fixed topics %s only",
                        sorted(current.topics),
                    )
            chained = state.listener
            if isinstance(chained, _RebalanceListener):
                chained = chained.chained
            state._listener = _RebalanceListener(self, chained)

    def _subscribe_unstarted(self, raw: AIOKafkaConsumer) -> None:
        state = raw._subscription
        current = state.subscription
        topics, pattern = _subscription_target(self._subscriptions)
        user_pattern = state.subscribed_pattern
        user_topics = set() if current is None or user_pattern else set(current.topics)
        if user_pattern is not None:
            extra = [pattern] if pattern else []
            extra += [f"(?:^{re.escape(t)}$)" for t in sorted(topics)]
            pattern = "|".join([f"(?:{user_pattern.pattern})", *extra])
        elif pattern is not None and user_topics:
            pattern = "|".join([pattern, *(f"(?:^{re.escape(t)}$)" for t in sorted(user_topics))])
        if pattern is None and not (topics or user_topics):
            raise KafkaConfigError(
                "The AIOKafkaConsumer is subscribed to nothing and no handler names a "
                "topic. Pass topics to AIOKafkaConsumer(...) or register handlers."
            )
        chained = state.listener
        if isinstance(chained, _RebalanceListener):
            chained = chained.chained
        listener = _RebalanceListener(self, chained)
        if pattern is not None:
            raw.subscribe(pattern=pattern, listener=listener)
        else:
            raw.subscribe(topics=sorted(user_topics | topics), listener=listener)

    async def stop(self) -> None:
        """Stop fetching; ``listen()`` ends promptly, even while waiting for records."""
        self._running = False
        fut = self._stop_future
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def close(self) -> None:
        """Commit everything that finished, then disconnect (only an owned client).

        Call after in-flight messages were settled (the dispatcher does): records that
        are still unsettled are not committed and will be delivered again.
        """
        if self._closed:
            return
        await self.stop()
        self._closed = True
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        task = self._commit_task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await task
        if self.raw is not None and not getattr(self.raw, "_closed", False):
            await self._commit(list(self._states.values()))
        for st in self._states.values():
            st.close()
        self._states.clear()
        if self._owned and self.raw is not None:
            raw, self.raw = self.raw, None
            await raw.stop()

    # -- consuming -------------------------------------------------------------------
    async def _fetch(self) -> dict[TopicPartition, list[Any]]:
        raw = self.raw
        assert raw is not None
        try:
            data: dict[TopicPartition, list[Any]] = await raw.getmany(
                timeout_ms=0, max_records=self.max_records
            )
            if data:
                return data
            stop = self._stop_future
            assert stop is not None
            getter = asyncio.ensure_future(
                raw.getmany(timeout_ms=int(self.poll_timeout * 1000), max_records=self.max_records)
            )
            await asyncio.wait((getter, stop), return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await getter
                return {}
            return getter.result()  # type: ignore[no-any-return]
        except ConsumerStoppedError:
            self._running = False
            return {}

    def _state_for(self, tp: TopicPartition) -> PartitionOffsets | None:
        st = self._states.get(tp)
        if st is None:
            assert self.raw is not None
            if tp not in self.raw.assignment():
                return None
            st = self._states[tp] = PartitionOffsets(tp)
        if st.revoking or st.closed:
            return None
        return st

    async def listen(self) -> AsyncIterator[Message]:
        """Yield records as :class:`KafkaMessage` until :meth:`stop`.

        ``Message.route`` is the topic; ``metadata`` holds ``topic``, ``partition``,
        ``offset`` and ``timestamp`` (ms); headers are decoded as UTF-8 when read.

        Raises:
            NotStartedError: Before :meth:`start`.
        """
        if not self._started or self._closed:
            raise NotStartedError("The Kafka consumer is not started; call start() first.")
        ordered = self.ordered
        while self._running:
            try:
                batches = await self._fetch()
            except KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    raise
                log.warning("Kafka fetch failed, retrying: %r", exc)
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                st = self._state_for(tp)
                if st is None:
                    continue
                epoch = st.epoch
                lane = (tp.topic, tp.partition) if ordered else None
                receive = st.receive
                for rec in records:
                    if st.epoch != epoch or st.revoking or st.closed or not self._running:
                        break  # rewound, revoked or stopping: these are fetched again
                    headers = rec.headers
                    yield KafkaMessage(
                        rec,
                        EncodedHeaders(headers) if headers else _NO_HEADERS,
                        lane,
                        receive(rec.offset),
                    )

    # -- settling --------------------------------------------------------------------
    async def ack(self, message: Message) -> None:
        """The record was handled (or filtered, or dead-lettered): it may be committed."""
        delivery: Delivery = message.token
        if delivery.partition.finish(delivery) and not self._dirty:
            self._dirty = True
            self._schedule_commit()

    async def nack(self, message: Message, *, requeue: bool) -> None:
        """Hand the record back (``requeue=True``) or give up on it (``requeue=False``).

        ``requeue=True`` seeks its partition back to it, so it (and what followed it) is
        delivered again, with ``attempt`` raised. ``requeue=False`` commits past it like
        an ack: Kafka has no per-record reject (use the ``DeadLetter`` middleware to keep
        a copy).
        """
        delivery: Delivery = message.token
        st = delivery.partition
        if not requeue:
            if st.finish(delivery) and not self._dirty:
                self._dirty = True
                self._schedule_commit()
            return
        if st.rewind(delivery) and self.raw is not None and self._running:
            try:
                self.raw.seek(st.key, delivery.offset)
            except (IllegalStateError, ConsumerStoppedError, AssertionError):
                pass  # no longer ours: the new owner starts from the committed offset

    # -- committing ------------------------------------------------------------------
    def _schedule_commit(self) -> None:
        """Commit what became due within ``commit_interval`` (one timer, not per ack)."""
        if self._commit_timer is not None or self._closed or self.raw is None:
            return
        task = self._commit_task
        if task is not None and not task.done():
            return  # its done-callback reschedules
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_commit + self.commit_interval - loop.time())
        self._commit_timer = loop.call_later(delay, self._start_commit)

    def _start_commit(self) -> None:
        self._commit_timer = None
        if not self._dirty or self._closed or self.raw is None:
            return
        self._dirty = False
        loop = asyncio.get_running_loop()
        self._last_commit = loop.time()
        task = loop.create_task(self._commit(list(self._states.values())))
        task.add_done_callback(self._commit_done)
        self._commit_task = task

    def _commit_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("Kafka commit failed: %r", task.exception())
            self._dirty = True
        if self._dirty:
            self._schedule_commit()

    async def _commit(self, states: list[PartitionOffsets]) -> None:
        raw = self.raw
        if raw is None:
            return
        offsets: dict[TopicPartition, int] = {}
        assigned = raw.assignment()
        for st in states:
            due = st.due
            if due is not None and st.key in assigned:
                offsets[st.key] = due
        if not offsets:
            return
        try:
            await raw.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: the partitions' new owner continues from
            # the last successful commit (at-least-once: some records come again).
            log.warning("Kafka commit of %s skipped: %s", offsets, exc)
            return
        except KafkaError as exc:
            self._dirty = True
            log.warning("Kafka commit of %s failed, will retry: %r", offsets, exc)
            return
        for st in states:
            off = offsets.get(st.key)
            if off is not None and (st.committed is None or off > st.committed):
                st.committed = off

    # -- rebalancing -----------------------------------------------------------------
    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        states = [st for tp in revoked if (st := self._states.get(tp)) is not None]
        if not states:
            return
        for st in states:
            st.revoking = True
        waiting = [st for st in states if st.in_flight]
        if waiting:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(st.drained() for st in waiting)), self.revoke_timeout
                )
            except TimeoutError:
                left = sum(st.in_flight for st in waiting)
                log.warning(
                    "%d Kafka records of revoked partitions did not finish within %.1f s; "
                    "they will be delivered again to the partitions' new owner",
                    left,
                    self.revoke_timeout,
                )
        await self._commit(states)
        for st in states:
            st.close()
            if self._states.get(st.key) is st:
                del self._states[st.key]

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            st = self._states.get(tp)
            if st is not None and (st.closed or st.revoking):
                del self._states[tp]

    # -- introspection ---------------------------------------------------------------
    def committed_offsets(self) -> dict[TopicPartition, int | None]:
        """What this consumer last committed, per partition it holds (for tests and
        monitoring)."""
        return {tp: st.committed for tp, st in self._states.items()}

    def in_flight(self) -> int:
        """Records handed out and not yet released from the commit trackers."""
        return sum(st.in_flight for st in self._states.values())

    def __repr__(self) -> str:
        owner = "owned" if self._owned else "wrapped"
        return f"<KafkaConsumer {owner} group={self.group_id!r} ordered={self.ordered}>"


def consumer_from_url(url: str, **options: Any) -> KafkaConsumer:
    """Plugin factory: a consumer that owns its client (see :meth:`KafkaConsumer.from_url`)."""
    return KafkaConsumer.from_url(url, **options)
