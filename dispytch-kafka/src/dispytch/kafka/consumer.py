"""The Kafka consumer: at-least-once delivery with per-partition ordered commits.

How it works:

* ``listen()`` fetches batches with ``getmany()`` and hands records to the dispatcher
  one by one. Each record's offset is tracked as received (:mod:`dispytch.kafka.offsets`).
* ``Message.lane`` is the record's ``TopicPartition``: the dispatcher handles one
  partition in order while partitions run concurrently. ``ordered=False`` sets no lane,
  so records of one partition may also be handled concurrently; commits stay correct.
* ``pause(lane)``/``resume(lane)`` (the dispatcher's fair scheduler): polls leave a
  paused partition out (``getmany(*partitions)``, public), so what aiokafka buffered for
  it stays buffered, not dropped and fetched again as ``AIOKafkaConsumer.pause`` would
  (a lane pauses and resumes every few records under load); records of it already taken
  and not yet yielded are parked and yielded first after ``resume`` (never tracked before
  that). With every partition paused, ``listen()`` waits for a resume and the keeper
  (below) polls meanwhile.
* **Keep polling** (lease extension): aiokafka leaves the group, and another member gets
  the partitions and the records being handled, when ``getmany`` is not called for
  ``max_poll_interval_ms``. A handler slower than that, or a dispatcher that holds back
  (``max_in_flight`` reached: ``listen()`` is not iterated), must not cause it. So when
  ``listen()`` has not polled for a quarter of that interval, a keeper task pauses every
  assigned partition and calls ``getmany`` itself (it returns nothing: all paused) until
  ``listen()`` polls again; it then resumes them. aiokafka's position is untouched by a
  poll of paused partitions, so nothing is skipped or fetched twice.
* ``ack`` / ``nack`` mark a record finished; a partition's commit point advances only
  past records that all finished (:mod:`dispytch.kafka.commits` sends the commits).
* ``nack(requeue=True)`` seeks the partition back to that record: it and everything after
  it are fetched and delivered again, and nothing at or past it is committed before then.
  Kafka keeps no delivery counter: ``attempt`` counts redeliveries within this consumer.
* ``nack(requeue=False)``: Kafka cannot reject a record, so giving up on one means
  committing past it, as for an ack. Dead-letter it first (the ``DeadLetter``
  middleware) if it must not be lost.
* ``close()`` commits what finished and, for a client that is not Dispytch's, seeks every
  partition it holds back to what is committable, so a new consumer over the same client
  (a restarted dispatcher) loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    ConsumerStoppedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from dispytch.backoff import Backoff
from dispytch.cqrs.wire import HEADER_REPLY_TO
from dispytch.errors import ConsumerClosedError, NotStartedError
from dispytch.kafka import _compat
from dispytch.kafka._stopping import stop_within
from dispytch.kafka.commits import CommitScheduler
from dispytch.kafka.config import (
    CAPABILITIES,
    CONSUMER_CLOSE_TIMEOUT,
    DEFAULT_MAX_RECORDS,
    KafkaConfigError,
    KafkaOptions,
    ensure_ssl_context,
    options_from_url,
)
from dispytch.kafka.message import NO_HEADERS, KafkaMessage
from dispytch.kafka.offsets import Delivery, PartitionOffsets
from dispytch.kafka.replies import ReplyWriter
from dispytch.kafka.subscribing import (
    RebalanceListener,
    check_started,
    subscribe_unstarted,
    subscription_target,
)
from dispytch.routes import EventSubscription
from dispytch.transport import EncodedHeaders, Message

__all__ = ["CAPABILITIES", "KafkaConsumer", "KafkaMessage", "consumer_from_url"]

log = logging.getLogger("dispytch.kafka")

#: Errors after which this consumer cannot go on (the dispatcher stops, visibly).
_FATAL = (GroupAuthorizationFailedError, TopicAuthorizationFailedError)


class KafkaConsumer:
    """Consumes Kafka records for an :class:`~dispytch.EventDispatcher`, at least once.

    Two ways to build one::

        raw = AIOKafkaConsumer("orders", bootstrap_servers="localhost:9092",
                               group_id="billing", enable_auto_commit=False)
        await raw.start()              # yours: Dispytch never stops it
        consumer = KafkaConsumer(raw)

        consumer = KafkaConsumer.from_url("kafka://localhost:9092", group_id="billing")
        # owns its client: the dispatcher starts and closes it; topics come from
        # the handlers' subscriptions

    Args:
        client: An ``AIOKafkaConsumer`` with a ``group_id`` and
            ``enable_auto_commit=False`` (auto-commit would commit records before they
            were handled), or a callable returning a new unstarted one (called in
            :meth:`start`, where aiokafka needs the running loop). An unstarted consumer
            is subscribed to the handlers' topics too (with a rebalance listener that
            flushes commits, then calls any listener you had set) and started; a started
            one is consumed as it is (it must cover the handlers' topics).
        owns_client: Whether :meth:`close` stops the client. Default: ``False`` for a
            client, ``True`` for a factory.
        options: Validated options (what :meth:`from_url` passes).
        **settings: Options of this consumer (see :class:`~dispytch.kafka.config.KafkaOptions`):
            ``ordered``, ``revoke_timeout``, ``commit_interval``, ``poll_timeout``,
            ``max_records`` (by default the dispatcher's ``max_in_flight``, at most 100:
            what one poll takes waits in memory), ``close_timeout``, ``group_id``.

    Raises:
        KafkaConfigError: The consumer has auto-commit on, or no ``group_id``.
        ConfigError: An unknown or invalid setting.
    """

    capabilities = CAPABILITIES

    def __init__(
        self,
        client: AIOKafkaConsumer | Callable[[], AIOKafkaConsumer],
        *,
        owns_client: bool | None = None,
        options: KafkaOptions | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(client, AIOKafkaConsumer):
            self._factory: Callable[[], AIOKafkaConsumer] | None = None
            self.raw: AIOKafkaConsumer | None = client
            self._check_client(client)
            owns = bool(owns_client)
        elif callable(client):
            self._factory = client
            self.raw = None
            owns = True if owns_client is None else owns_client
        else:
            raise TypeError(
                f"KafkaConsumer wraps an aiokafka.AIOKafkaConsumer (or a factory of one), "
                f"not {type(client).__name__}.\nTo build one from a URL use "
                "KafkaConsumer.from_url('kafka://host:9092', group_id='...')."
            )
        if settings:
            base = {} if options is None else options.model_dump(exclude_unset=True)
            options = KafkaOptions.parse(**{**base, **settings})
        opts = options if options is not None else KafkaOptions()
        if self._factory is None and opts.client_options_set():
            raise KafkaConfigError(
                f"{', '.join(opts.client_options_set())} configure a client Dispytch "
                "builds; the AIOKafkaConsumer you pass keeps its own settings.\n"
                "Pass them to AIOKafkaConsumer(...), or use KafkaConsumer.from_url."
            )
        self.options = opts
        #: What ``from_url`` builds its client with (for inspection).
        self._client_kwargs: dict[str, Any] = {}
        self.owns_client = owns
        self.ordered = opts.ordered
        self.revoke_timeout = opts.revoke_timeout
        self.poll_timeout = opts.poll_timeout
        self.close_timeout = (
            CONSUMER_CLOSE_TIMEOUT if opts.close_timeout is None else opts.close_timeout
        )
        self.max_records: int = opts.max_records or DEFAULT_MAX_RECORDS
        self._explicit_max_records = opts.max_records
        self.group_id: str | None = (
            _compat.consumer_group_id(client) if self.raw is not None else opts.group_id
        )
        if self.raw is not None and opts.group_id is not None and opts.group_id != self.group_id:
            raise KafkaConfigError(
                f"group_id={opts.group_id!r} differs from the AIOKafkaConsumer's "
                f"{self.group_id!r}.\nSet the group on the AIOKafkaConsumer only."
            )
        self._subscriptions: list[EventSubscription] = []
        self._states: dict[TopicPartition, PartitionOffsets] = {}
        self._paused: set[TopicPartition] = set()
        # Records taken from aiokafka for a partition paused before they were yielded.
        self._parked: dict[TopicPartition, list[Any]] = {}
        self._wake = asyncio.Event()  # a resume() while a poll waits
        # Partitions this consumer paused in aiokafka (all, while the keeper holds the
        # poll); a partition its user paused is never in it, so never resumed by Dispytch.
        self._ours: set[TopicPartition] = set()
        # Keep polling (see the module docstring): listen() is in a poll / last polled at;
        # the keeper task; the future of a hold in progress; listen() wants the poll back.
        self._fetching = False
        self._last_poll = 0.0
        self._keeper: asyncio.Task[None] | None = None
        self._holding: asyncio.Future[None] | None = None
        self._take_over = asyncio.Event()
        self._nudge = asyncio.Event()
        #: Polls the keeper made while ``listen()`` was not polling (for tests, monitoring).
        self.keepalive_polls = 0
        #: Seconds ``listen()`` may go without polling before the keeper polls for it (a
        #: quarter of the client's ``max_poll_interval_ms``; set in :meth:`start`).
        self.keepalive_after = 0.0
        self._hooked = False  # our rebalance listener is on the client
        self._running = False
        self._started = False
        self._closed = False
        self._stop_future: asyncio.Future[None] | None = None
        self._commits = CommitScheduler(lambda: self.raw, self._states.values, opts.commit_interval)
        #: Request/reply: the small producer replies go out through (first reply).
        self._replies = ReplyWriter(self._connection)

    @staticmethod
    def _check_client(raw: AIOKafkaConsumer) -> None:
        if _compat.consumer_auto_commit(raw):
            raise KafkaConfigError(
                "The AIOKafkaConsumer has enable_auto_commit=True: it would commit offsets "
                "of records before their handlers finished, losing them on a crash.\n"
                "Create it with enable_auto_commit=False; Dispytch commits after handling."
            )
        if _compat.consumer_group_id(raw) is None:
            raise KafkaConfigError(
                "The AIOKafkaConsumer has no group_id, so Kafka cannot store its offsets.\n"
                "Create it with group_id='your-service'."
            )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaConsumer:
        """Build a consumer that owns its ``AIOKafkaConsumer``.

        Args:
            url: ``kafka://host:port[,host2:port][?option=value...]``; query options are
                :class:`~dispytch.kafka.config.KafkaOptions` (``group_id``,
                ``max_records``, ``session_timeout_ms``...). ``user:password@`` becomes
                SASL PLAIN. Producer options in the query are left for the producer.
            **options: The same options as Python values (an ``ssl_context``...); they
                win over the query. ``auto_offset_reset`` defaults to ``"earliest"`` so
                a new group does not skip events published before it first joined.

        Raises:
            KafkaConfigError: On ``enable_auto_commit=True``.
            ConfigError: On an unknown or invalid option.
        """
        servers, opts = options_from_url(url, "consumer", options)
        kwargs = opts.client_kwargs("consumer")
        kwargs.setdefault("bootstrap_servers", servers)
        ensure_ssl_context(kwargs)
        holder: list[KafkaConsumer] = []

        def build() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(group_id=holder[0].group_id, **kwargs)

        self = cls(build, owns_client=True, options=opts)
        self._client_kwargs = kwargs
        holder.append(self)
        return self

    # -- configuration -----------------------------------------------------------------
    def configure(self, *, max_in_flight: int) -> None:
        """Take no more records per poll than the dispatcher keeps in flight
        (:class:`~dispytch.transport.ReadAhead`; called before :meth:`start`).

        An explicit ``max_records`` wins; one above ``max_in_flight`` is logged once.
        """
        explicit = self._explicit_max_records
        if explicit is None:
            self.max_records = max(1, min(max_in_flight, DEFAULT_MAX_RECORDS))
        elif explicit > max_in_flight:
            log.info(
                "Kafka consumer max_records=%d is above the dispatcher's max_in_flight=%d: "
                "up to %d records per poll wait in memory before they are handled",
                explicit,
                max_in_flight,
                explicit,
            )

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        """Add the handlers' subscriptions (before :meth:`start`).

        Raises:
            TypeError: On a subscription this transport cannot serve.
            KafkaConfigError: When subscriptions name different consumer groups.
        """
        subscription_target(subscriptions)  # validate early
        for sub in subscriptions:
            gid = getattr(sub, "group_id", None)
            if gid is None:
                continue
            if self.group_id is None and self._factory is not None:
                self.group_id = gid
            elif gid != self.group_id:
                raise KafkaConfigError(
                    f"{sub!r} wants consumer group {gid!r}, but this consumer is in group "
                    f"{self.group_id!r}.\nOne Kafka consumer belongs to one group: use one "
                    "dispatcher (and consumer) per group."
                )
        self._subscriptions.extend(s for s in subscriptions if s not in self._subscriptions)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe and join the group (builds the client from the factory if needed).

        Raises:
            KafkaConfigError: Nothing to consume, or no consumer group.
            NotStartedError: The client you passed was stopped.
        """
        if self._started and not self._closed:
            return
        # A closed consumer may start again (a dispatcher restarted): fresh trackers.
        self._closed = False
        self._states.clear()
        loop = asyncio.get_running_loop()
        self._stop_future = loop.create_future()
        raw = self.raw
        if raw is None:
            assert self._factory is not None
            if self.group_id is None:
                raise KafkaConfigError(
                    "The Kafka consumer needs a consumer group to commit offsets.\n"
                    "Pass group_id='your-service' (or ?group_id=... in the URL, or "
                    "KafkaEventSubscription(group_id=...))."
                )
            if not self._subscriptions:
                raise KafkaConfigError(
                    "The Kafka consumer has nothing to consume.\nRegister a handler with "
                    "a KafkaEventSubscription(topic=...) before starting."
                )
            raw = self._factory()
            if not isinstance(raw, AIOKafkaConsumer):
                raise TypeError(
                    f"The KafkaConsumer factory returned {type(raw).__name__}, not an "
                    "AIOKafkaConsumer.\nReturn a new, unstarted AIOKafkaConsumer."
                )
            self._check_client(raw)
            await self._start_unstarted(raw, stop_on_failure=True)
            self.raw = raw
        elif _compat.client_closed(raw):
            raise NotStartedError(
                "The AIOKafkaConsumer passed to KafkaConsumer was stopped.\n"
                "Create and pass a new one, or let Dispytch own it: KafkaConsumer.from_url."
            )
        elif not _compat.consumer_started(raw):
            await self._start_unstarted(raw, stop_on_failure=self.owns_client)
        else:
            check_started(raw, self._subscriptions)
        self._commits.open()
        self._started = True
        self._running = True
        self.keepalive_after = max(0.01, _compat.consumer_max_poll_interval(raw) / 4)
        self._last_poll = loop.time()
        self._keeper = asyncio.create_task(self._keep_polling(raw), name="dispytch-kafka-keeper")

    async def _start_unstarted(self, raw: AIOKafkaConsumer, *, stop_on_failure: bool) -> None:
        subscribe_unstarted(
            raw, self._subscriptions, RebalanceListener(self._on_revoked, self._on_assigned)
        )
        self._hooked = True
        try:
            await raw.start()
        except BaseException:
            if stop_on_failure:
                await raw.stop()
            raise

    async def stop(self) -> None:
        """Stop fetching; ``listen()`` ends promptly, even while waiting for records."""
        self._running = False
        fut = self._stop_future
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def close(self) -> None:
        """Commit everything that finished, then disconnect (only an owned client).

        Call after in-flight messages were settled (the dispatcher does): records that
        are still unsettled are not committed and will be delivered again. A client that
        is not Dispytch's is sought back, per partition, to what is committable, so that
        a new consumer over it continues where this one really stopped. The final commit
        and disconnecting together take at most ``close_timeout`` (a broker that is down
        must not hang a stop: what was not committed is delivered again).
        """
        if self._closed:
            return
        await self.stop()
        self._closed = True
        raw = self.raw
        await self._stop_keeper()
        states = list(self._states.values())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._commits.close()
                if raw is not None and not _compat.client_closed(raw):
                    await self._commits.commit(states)
        except TimeoutError:
            log.warning(
                "Kafka consumer: the final commit did not finish within %.1f s (broker "
                "unreachable?); records after the last commit will be delivered again",
                self.close_timeout,
            )
        self._paused.clear()
        if raw is not None and not _compat.client_closed(raw):
            self._sync_pauses(raw)  # resume what the keeper paused (a user's client)
        if raw is not None and not self.owns_client and not _compat.client_closed(raw):
            self._reposition(raw, states)
        for st in states:
            st.close()
        self._states.clear()
        self._parked.clear()
        await self._replies.close()
        if self.owns_client and raw is not None:
            self.raw = None
            await self._stop_client(raw, max(0.1, deadline - loop.time()))

    def _reposition(self, raw: AIOKafkaConsumer, states: list[PartitionOffsets]) -> None:
        assigned = raw.assignment()
        for st in states:
            target = st.restart_offset
            if target is not None and st.key in assigned:
                with contextlib.suppress(IllegalStateError, AssertionError):
                    raw.seek(st.key, target)

    async def _stop_client(self, raw: AIOKafkaConsumer, timeout: float) -> None:
        await stop_within(raw, timeout, "Kafka consumer")

    # -- lane pausing ------------------------------------------------------------------
    @staticmethod
    def _tp(lane: Hashable) -> TopicPartition:
        if isinstance(lane, TopicPartition):
            return lane
        topic, partition = cast("tuple[str, int]", lane)
        return TopicPartition(topic, partition)

    def pause(self, lane: Hashable) -> None:
        """Stop yielding records of partition ``lane`` until :meth:`resume` (idempotent).

        Polls leave the partition out (``getmany(*other_partitions)``, public), so aiokafka
        keeps at most the one fetch it had buffered for it. Records of it this consumer
        had already taken are parked, not yielded, and come first after :meth:`resume`.
        """
        self._paused.add(self._tp(lane))

    def resume(self, lane: Hashable) -> None:
        """Yield records of partition ``lane`` again (idempotent)."""
        tp = self._tp(lane)
        if tp in self._paused:
            self._paused.discard(tp)
            self._wake.set()

    def paused(self) -> frozenset[TopicPartition]:
        """The partitions paused through :meth:`pause`."""
        return frozenset(self._paused)

    def _sync_pauses(self, raw: AIOKafkaConsumer) -> None:
        """Pause in aiokafka every assigned partition while the keeper holds the poll
        (re-applied before each of its polls: a rebalance resets aiokafka's pauses),
        resume what this consumer paused once it no longer holds."""
        assigned = raw.assignment()
        want = set(assigned) if self._holding is not None else set()
        ours = self._ours
        if want:
            already = raw.paused()
            fresh = [tp for tp in want if tp not in already]
            if fresh:
                with contextlib.suppress(IllegalStateError):
                    raw.pause(*fresh)
                ours.update(fresh)
        done = [tp for tp in ours if tp not in want]
        if done:
            ours.difference_update(done)
            held = [tp for tp in done if tp in assigned]
            if held:
                with contextlib.suppress(IllegalStateError):
                    raw.resume(*held)

    # -- keep polling (lease extension) --------------------------------------------------
    async def extend(self, message: Message) -> None:
        """Keep ``message`` from going to another member (the LeaseExtension protocol).

        Kafka has no per-record lease: a record is handed to another member only when
        this one loses its partition, which aiokafka causes when ``getmany`` is not
        called for ``max_poll_interval_ms``. The keeper polls whenever ``listen()`` does
        not (so a slow handler needs no call); this makes it poll now.
        """
        delivery: Delivery = message.token
        st = delivery.partition
        if not (st.closed or st.revoking) and not self._fetching and self._holding is None:
            self._nudge.set()

    async def _keep_polling(self, raw: AIOKafkaConsumer) -> None:
        """The keeper: poll in ``listen()``'s stead while it does not poll, from
        :meth:`start` until :meth:`close` (so also while handlers drain after
        :meth:`stop`)."""
        loop = asyncio.get_running_loop()
        after = self.keepalive_after
        nudge = self._nudge
        while not _compat.client_closed(raw):
            if self._fetching:
                delay = after
            else:
                delay = self._last_poll + after - loop.time()
                if delay <= 0 or nudge.is_set():
                    nudge.clear()
                    await self._hold(raw)
                    continue
            waiter = asyncio.ensure_future(nudge.wait())
            try:
                await asyncio.wait((waiter,), timeout=delay)
            finally:
                waiter.cancel()

    async def _hold(self, raw: AIOKafkaConsumer) -> None:
        """Pause every assigned partition and poll until ``listen()`` wants to again."""
        loop = asyncio.get_running_loop()
        self._holding = holding = loop.create_future()
        take_over = self._take_over
        take_over.clear()
        timeout_ms = max(1, int(self.keepalive_after * 1000))
        getter: asyncio.Future[dict[TopicPartition, list[Any]]] | None = None
        try:
            while not take_over.is_set() and not _compat.client_closed(raw):
                self._sync_pauses(raw)
                getter = asyncio.ensure_future(
                    raw.getmany(timeout_ms=timeout_ms, max_records=self.max_records)
                )
                waiter = asyncio.ensure_future(take_over.wait())
                try:
                    await asyncio.wait((getter, waiter), return_when=FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                self.keepalive_polls += 1
                if not getter.done():
                    break  # listen() polls again (the getter is cancelled below)
                error = getter.exception()
                if error is not None:
                    # listen()'s next poll meets (and reports) the same broker error
                    log.debug("Kafka keep-alive poll failed: %r", error)
                    await asyncio.sleep(0.1)
                    continue
                # A partition assigned meanwhile, not yet paused, may bring records:
                # listen() fetches them again from there.
                for tp, records in getter.result().items():
                    if records:
                        self._seek_back(raw, tp, records[0].offset)
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await getter
            self._holding = None
            self._last_poll = loop.time()
            if not _compat.client_closed(raw):
                self._sync_pauses(raw)
            holding.set_result(None)

    async def _reclaim(self) -> None:
        """``listen()`` polls again: end the keeper's hold first."""
        holding = self._holding
        if holding is not None:
            self._take_over.set()
            await asyncio.wait((holding,))

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None and not keeper.done():
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await keeper
        elif keeper is not None and not keeper.cancelled() and keeper.exception() is not None:
            log.warning("Kafka keep-alive task failed: %r", keeper.exception())

    # -- consuming -------------------------------------------------------------------
    def _take_parked(self) -> dict[TopicPartition, list[Any]]:
        """Parked records of partitions no longer paused (yielded before new polls)."""
        parked = self._parked
        ready = {tp: parked.pop(tp) for tp in [tp for tp in parked if tp not in self._paused]}
        return ready

    async def _fetch(self, raw: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        parts: tuple[TopicPartition, ...] = ()
        wake = self._wake
        wake.clear()
        if self._paused:
            assigned = raw.assignment()
            if self._paused & assigned:
                parts = tuple(assigned - self._paused)
                if not parts:  # every partition paused: wait for a resume (the keeper
                    stop = self._stop_future  # polls meanwhile, past keepalive_after)
                    assert stop is not None
                    waiter = asyncio.ensure_future(wake.wait())
                    await asyncio.wait(
                        (waiter, stop), timeout=self.poll_timeout, return_when=FIRST_COMPLETED
                    )
                    waiter.cancel()
                    return {}
        if self._holding is not None:
            await self._reclaim()
        self._fetching = True
        try:
            return await self._poll(raw, parts)
        finally:
            self._fetching = False
            self._last_poll = asyncio.get_running_loop().time()

    async def _poll(
        self, raw: AIOKafkaConsumer, parts: tuple[TopicPartition, ...]
    ) -> dict[TopicPartition, list[Any]]:
        data: dict[TopicPartition, list[Any]] = await raw.getmany(
            *parts, timeout_ms=0, max_records=self.max_records
        )
        if data:
            return data
        stop = self._stop_future
        assert stop is not None
        wake = self._wake
        getter = asyncio.ensure_future(
            raw.getmany(
                *parts, timeout_ms=int(self.poll_timeout * 1000), max_records=self.max_records
            )
        )
        waiter = asyncio.ensure_future(wake.wait())
        await asyncio.wait((getter, stop, waiter), return_when=FIRST_COMPLETED)
        waiter.cancel()
        if not getter.done():
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await getter
            return {}
        return getter.result()  # type: ignore[no-any-return]

    def _state_for(self, raw: AIOKafkaConsumer, tp: TopicPartition) -> PartitionOffsets | None:
        st = self._states.get(tp)
        if st is None:
            if tp not in raw.assignment():
                return None
            st = self._states[tp] = PartitionOffsets(tp)
        if st.revoking or st.closed:
            return None
        return st

    def _sync_assignment(self, raw: AIOKafkaConsumer) -> None:
        """Without our rebalance listener (a client started by its user): forget the
        partitions it no longer holds."""
        assigned = raw.assignment()
        for tp in [tp for tp in self._states if tp not in assigned]:
            self._states.pop(tp).close()
            self._parked.pop(tp, None)

    def _seek_back(self, raw: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        """Records from ``offset`` on were fetched but not yielded: fetch them again."""
        if _compat.client_closed(raw) or tp not in raw.assignment():
            return
        with contextlib.suppress(IllegalStateError, AssertionError):
            raw.seek(tp, offset)

    async def listen(self) -> AsyncIterator[Message]:
        """Yield records as :class:`KafkaMessage` until :meth:`stop`.

        ``Message.route`` is the topic; ``metadata`` holds ``topic``, ``partition``,
        ``offset`` and ``timestamp`` (ms); headers are decoded as UTF-8 when read.
        Broker errors the client recovers from are retried with a backoff.

        Raises:
            NotStartedError: Before :meth:`start`.
            ConsumerClosedError: The client was stopped under this consumer, or the
                group refuses it for good (authorization).
        """
        if not self._started or self._closed:
            raise NotStartedError("The Kafka consumer is not started; call start() first.")
        raw = self.raw
        assert raw is not None
        ordered = self.ordered
        paused = self._paused
        backoff = Backoff(initial=0.1, factor=2.0, cap=5.0, jitter=0.2)
        while self._running:
            batches = self._take_parked() if self._parked else None
            try:
                if not self._hooked:
                    self._sync_assignment(raw)
                if not batches:
                    batches = await self._fetch(raw)
            except ConsumerStoppedError:
                if not self._running:
                    return
                raise ConsumerClosedError(
                    "The AIOKafkaConsumer was stopped while Dispytch was consuming it.\n"
                    "Stop the dispatcher before stopping your client, or let Dispytch own "
                    "it: KafkaConsumer.from_url."
                ) from None
            except _FATAL as exc:
                raise ConsumerClosedError(
                    f"Kafka refused this consumer for good: {exc!r}.\n"
                    "Grant the group and topics to this client's principal."
                ) from exc
            except KafkaError as exc:
                delay = backoff.next()
                log.warning("Kafka fetch failed, retrying in %.1f s: %r", delay, exc)
                assert self._stop_future is not None
                await asyncio.wait((self._stop_future,), timeout=delay)
                continue
            if _compat.client_closed(raw) and self._running:
                raise ConsumerClosedError(
                    "The AIOKafkaConsumer was stopped while Dispytch was consuming it.\n"
                    "Stop the dispatcher before stopping your client, or let Dispytch own "
                    "it: KafkaConsumer.from_url."
                )
            backoff.reset()
            for tp, records in batches.items():
                st = self._state_for(raw, tp)
                if st is None:
                    continue
                epoch = st.epoch
                lane = tp if ordered else None
                receive = st.receive
                for i, rec in enumerate(records):
                    if st.epoch != epoch:
                        break  # rewound by a nack: the seek already moved the position
                    if paused and tp in paused:
                        self._parked[tp] = records[i:]  # yielded after resume()
                        break
                    if st.revoking or st.closed or not self._running:
                        # revoked or stopping: fetch the rest again later
                        if not (st.revoking or st.closed):
                            self._seek_back(raw, tp, records[i].offset)
                        break
                    headers = rec.headers
                    yield KafkaMessage(
                        rec,
                        EncodedHeaders(headers) if headers else NO_HEADERS,
                        lane,
                        receive(rec.offset),
                    )

    # -- settling --------------------------------------------------------------------
    async def ack(self, message: Message) -> None:
        """The record was handled (or filtered, or dead-lettered): it may be committed."""
        delivery: Delivery = message.token
        if delivery.partition.finish(delivery):
            commits = self._commits
            if not commits.dirty:
                commits.due()

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
            if st.finish(delivery):
                self._commits.due()
            return
        raw = self.raw
        if st.rewind(delivery) and raw is not None and not self._closed:
            self._parked.pop(st.key, None)  # fetched again from the rewound offset
            self._seek_back(raw, st.key, delivery.offset)

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
        await self._commits.commit(states)
        for st in states:
            st.close()
            self._parked.pop(st.key, None)
            if self._states.get(st.key) is st:
                del self._states[st.key]

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            st = self._states.get(tp)
            if st is not None and (st.closed or st.revoking):
                del self._states[tp]

    # -- request/reply -----------------------------------------------------------------
    def reply_address(self, request: Message) -> str | None:
        """Request/reply: the requester's ``topic:partition`` from ``dispytch-reply-to``."""
        return request.headers.get(HEADER_REPLY_TO) or None

    async def send_reply(
        self, request: Message, payload: bytes, headers: Mapping[str, str]
    ) -> None:
        """Produce a reply to the requester's reply partition (best effort: never raises).

        Replies go through a small ``AIOKafkaProducer`` this consumer builds on its first
        reply (same servers and security as its client) and stops in :meth:`close`.
        """
        await self._replies.send(request, payload, headers)

    def _connection(self) -> dict[str, Any]:
        if self._client_kwargs:
            return dict(self._client_kwargs)
        if self.raw is None:
            raise NotStartedError("The Kafka consumer has no client to reply through.")
        return _compat.connection_of(self.raw)

    # -- introspection ---------------------------------------------------------------
    def committed_offsets(self) -> dict[TopicPartition, int | None]:
        """What this consumer last committed, per partition it holds (for tests and
        monitoring)."""
        return {tp: st.committed for tp, st in self._states.items()}

    def in_flight(self) -> int:
        """Records handed out and not yet released from the commit trackers."""
        return sum(st.in_flight for st in self._states.values())

    def __repr__(self) -> str:
        owner = "owned" if self.owns_client else "wrapped"
        return f"<KafkaConsumer {owner} group={self.group_id!r} ordered={self.ordered}>"


def consumer_from_url(url: str, **options: Any) -> KafkaConsumer:
    """Plugin factory: a consumer that owns its client (see :meth:`KafkaConsumer.from_url`)."""
    return KafkaConsumer.from_url(url, **options)
