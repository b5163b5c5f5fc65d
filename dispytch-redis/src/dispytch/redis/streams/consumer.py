"""The Redis Streams consumer: consumer groups, at-least-once (the facade).

How an entry travels (``XREADGROUP`` -> handler -> ``XACK``):

* ``start`` creates each group with ``XGROUP CREATE ... MKSTREAM`` if it is missing
  (from ``start_id``: ``"$"`` new entries only, ``"0"`` the whole stream). Pattern
  subscriptions (``"orders.{region}"``) read every existing stream that matches, found
  with ``SCAN ... TYPE stream`` on start and every ``discover_interval``.
* A reader per (group, member) runs ``XREADGROUP ... BLOCK`` (:mod:`.reader`). An entry
  read is *pending* (in the group's PEL) until acknowledged. What is taken and not yet
  acknowledged never exceeds ``max_unsettled`` (default: the dispatcher's
  ``max_in_flight``, told through :meth:`RedisStreamConsumer.configure`).
* ``ack`` sends ``XACK``, batched in the background (:mod:`.settle`).
* Recovery (:mod:`.recovery`): entries idle longer than ``min_idle_time`` are taken over
  (``XAUTOCLAIM``) and delivered again with ``Message.attempt`` from Redis's delivery
  counter; entries still being handled are kept fresh (``XCLAIM ... JUSTID``).
* ``nack(requeue=True)`` makes the entry claimable at once; with ``delay=`` it becomes
  claimable ``delay`` seconds later (its idle time is set so, and for delays longer
  than ``min_idle_time`` this process holds it fresh until then: a crash meanwhile
  lets another member take it after ``min_idle_time``).
* ``nack(requeue=False)``, entries over ``max_deliveries`` and malformed entries: moved
  to ``dead_letter_stream`` when one is configured (atomically with their ``XACK``, with
  the real error in ``dispytch-error-*`` headers), else logged at ERROR and acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dispytch.errors import NotStartedError
from dispytch.patterns import RoutePattern
from dispytch.redis._client import check_async_client, client_from_url
from dispytch.redis._inbox import Inbox, close_on_failure
from dispytch.redis._options import (
    STREAM_CONSUMER_FIELDS,
    RedisStreamOptions,
    fields_of,
    split_url,
)
from dispytch.redis._replies import ReplyPublisher, reply_address
from dispytch.redis.envelope import FIELD_HEADERS, FIELD_KEY, FIELD_PAYLOAD, unpack_fields
from dispytch.redis.routes import RedisEventSubscription, RedisStreamSubscription
from dispytch.redis.streams.reader import StreamReader
from dispytch.redis.streams.recovery import Keeper
from dispytch.redis.streams.settle import AckBatcher, Token, dead_letter_fields, give_up, hand_back
from dispytch.routes import EventSubscription, TopicSubscription
from dispytch.transport import Capabilities, Message

import redis.asyncio as aredis
from redis.exceptions import RedisError, ResponseError

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("dispytch.redis")

__all__ = ["RedisStreamConsumer", "default_consumer_name"]

#: Idle time given to a requeued entry so that every member's XAUTOCLAIM takes it.
_REQUEUE_IDLE_MS = 10 * 365 * 24 * 3600 * 1000
#: Read-ahead bound before the dispatcher said its max_in_flight (its default).
_DEFAULT_LIMIT = 64
#: The largest default COUNT.
_MAX_DEFAULT_COUNT = 100

ClientFactory = Callable[[], aredis.Redis]


def default_consumer_name() -> str:
    """``host-pid-random``: unique per process, so each process is its own member."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class RedisStreamConsumer:
    """Consumes Redis Streams in consumer groups: at-least-once, with crash recovery.

    See the module documentation for the life of an entry.

    Args:
        redis: A ``redis.asyncio.Redis`` client (bytes responses), or a callable returning
            one (called on first use). The synchronous client is refused.
        owns_client: Whether :meth:`close` closes the client (``from_url`` sets it).
        group: The consumer group for subscriptions that do not name one.
        consumer: This member's name; default unique per process
            (:func:`default_consumer_name`). A fixed name makes a restarted process
            pick up its own pending entries at once instead of after ``min_idle_time``
            — but two live processes must never share one.
        batch_size: ``COUNT`` of each ``XREADGROUP`` (never more than the room left
            under ``max_unsettled``); default ``max_unsettled``, at most 100.
        max_unsettled: Entries taken from Redis and not yet acknowledged, at most
            (handed to handlers, waiting for them, or acknowledged but not yet flushed);
            default the dispatcher's ``max_in_flight`` (64 until it says).
        block_ms: ``BLOCK`` of each ``XREADGROUP``; also bounds how long :meth:`close`
            waits for the last read.
        min_idle_time: Seconds an entry must have been pending, untouched, before
            another member may take it over.
        claim_interval: Seconds between recovery passes (default ``min_idle_time / 4``).
        max_deliveries: Deliveries after which a reclaimed entry is given up; ``None``
            for no limit.
        dead_letter_stream: Stream that receives given-up and malformed entries; ``None``
            logs them at ERROR and acknowledges them.
        start_id: Where a newly created group starts: ``"$"`` or ``"0"``.
        ordered: Handle the entries of one stream one after another, in order (the
            stream is the ``Message.lane``). Redeliveries can still come out of order.
        discover_interval: Seconds between two ``SCAN``s for pattern subscriptions.
        close_timeout: Seconds :meth:`close` spends handing back and flushing acks
            before giving up on an unreachable server (the entries then stay pending
            and are recovered after ``min_idle_time``).

    Attributes:
        capabilities: At-least-once, ordered lanes when ``ordered``, requeue, delayed
            requeue, lane pausing and lease extension.
    """

    def __init__(
        self,
        redis: aredis.Redis | ClientFactory,
        *,
        owns_client: bool = False,
        group: str = "dispytch",
        consumer: str | None = None,
        batch_size: int | None = None,
        max_unsettled: int | None = None,
        block_ms: int = 500,
        min_idle_time: float = 30.0,
        claim_interval: float | None = None,
        max_deliveries: int | None = None,
        dead_letter_stream: str | None = None,
        start_id: str = "$",
        ordered: bool = False,
        discover_interval: float = 5.0,
        close_timeout: float = 0.75,
    ) -> None:
        self._redis: aredis.Redis | None = None
        self._factory: ClientFactory | None = None
        if isinstance(redis, aredis.Redis) or not callable(redis):
            self._redis = check_async_client(redis, type(self).__name__)
        else:
            self._factory = redis
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: read at least 1 entry at a time.")
        if max_unsettled is not None and max_unsettled < 1:
            raise ValueError(f"max_unsettled={max_unsettled!r}: allow at least 1 entry.")
        if block_ms < 1:
            raise ValueError(f"block_ms={block_ms!r}: use a positive number of milliseconds.")
        if min_idle_time <= 0:
            raise ValueError(
                f"min_idle_time={min_idle_time!r}: use a positive number of seconds (entries "
                "pending longer than this are taken over from a member presumed dead)."
            )
        if max_deliveries is not None and max_deliveries < 1:
            raise ValueError(
                f"max_deliveries={max_deliveries!r}: allow at least 1 delivery, or pass None "
                "for no limit."
            )
        self.owns_client = owns_client
        self.group = group
        self.consumer_name = consumer or default_consumer_name()
        self._named = consumer is not None
        self._batch_size = batch_size
        self._max_unsettled = max_unsettled
        self._limit = max_unsettled or _DEFAULT_LIMIT
        self.block_ms = block_ms
        self.min_idle_time = min_idle_time
        self.claim_interval = max(
            0.05, claim_interval if claim_interval is not None else min_idle_time / 4
        )
        self.max_deliveries = max_deliveries
        self.dead_letter_stream = dead_letter_stream
        self.start_id = start_id
        self.ordered = ordered
        self.discover_interval = discover_interval
        self.close_timeout = close_timeout
        self.capabilities = Capabilities(
            delivery="at-least-once",
            ordered_lanes=ordered,
            requeue=True,
            delayed_requeue=True,
            pause_lanes=True,
            lease_extension=True,
            request_reply=True,
        )
        self._replies = ReplyPublisher()
        self._inbox: Inbox[Message] = Inbox(self._limit)
        self._inbox.on_wait = self._notify
        # (stream, group) -> member name
        self._targets: dict[tuple[str, str], str] = {}
        self._names: dict[bytes, str] = {}
        self._inflight: dict[Token, float] = {}
        self._reserved = 0
        self._patterns: list[tuple[RoutePattern, str, str]] = []
        # (group, member) -> streams read by that member (replaced, never mutated)
        self._members: dict[tuple[str, str], list[str]] = {}
        self._paused: set[str] = set()
        # Entries of paused streams taken before the pause, kept back until resume.
        self._parked: dict[str, list[Message]] = {}
        self._readers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._keeper = Keeper(self)
        self._keeper_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._poke = asyncio.Event()
        self._room = asyncio.Event()
        self._change = asyncio.Event()
        self._stopping = asyncio.Event()
        self._acks_batcher: AckBatcher | None = None
        self._running = False
        self._started = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A consumer that owns its client, from ``redis+streams://`` (or ``redis://``).

        Options (:class:`~dispytch.redis._options.RedisStreamOptions`) come from the query
        (``?group=g&consumer=c&min_idle_time=5&max_deliveries=10&dead_letter_stream=dlq``)
        or the keyword arguments; producer options are ignored; other query parameters go
        to redis-py.
        """
        redis_url, opts = split_url(url, RedisStreamOptions, options)
        return cls(
            lambda: client_from_url(redis_url),
            owns_client=True,
            **fields_of(opts, STREAM_CONSUMER_FIELDS),
        )

    @property
    def redis(self) -> aredis.Redis:
        """The client this consumer reads through (created now from a factory)."""
        if self._redis is None:
            assert self._factory is not None
            self._redis = check_async_client(self._factory(), type(self).__name__)
        return self._redis

    @property
    def _r(self) -> Any:
        # redis-py's stream command stubs are unions of RESP2/RESP3 shapes; the client is
        # checked to answer bytes, so commands go through an Any view.
        return self.redis

    @property
    def _acks(self) -> AckBatcher:
        if self._acks_batcher is None:
            self._acks_batcher = AckBatcher(self._r, self._notify)
        return self._acks_batcher

    @property
    def batch_size(self) -> int:
        """``COUNT`` of each read (explicit, or following the read-ahead bound)."""
        return self._batch_size or min(self._limit, _MAX_DEFAULT_COUNT)

    @property
    def max_unsettled(self) -> int:
        """Entries taken and not yet acknowledged, at most."""
        return self._limit

    def configure(self, *, max_in_flight: int) -> None:
        """Follow the dispatcher's ``max_in_flight`` (the ReadAhead protocol).

        Unless ``max_unsettled`` was given, no more than ``max_in_flight`` entries are
        taken from Redis and left unacknowledged. An explicit setting that disagrees is
        kept and logged once.
        """
        if self._max_unsettled is None:
            self._limit = max(1, max_in_flight)
        elif self._max_unsettled != max_in_flight:
            log.info(
                "RedisStreamConsumer keeps max_unsettled=%d although the dispatcher handles "
                "at most %d at once (max_in_flight): %s.",
                self._max_unsettled,
                max_in_flight,
                "entries wait here for a slot"
                if self._max_unsettled > max_in_flight
                else "the dispatcher will not be kept busy",
            )
        self._notify()

    # ------------------------------------------------------------------ lifecycle
    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        """Collect the streams (or stream patterns) and groups to read on :meth:`start`.

        Raises:
            TypeError: For a Pub/Sub or another transport's subscription.
            ValueError: When one stream and group would be read as two members.
            RuntimeError: When called after :meth:`start`.
        """
        if self._started:
            raise RuntimeError(
                "RedisStreamConsumer.subscribe() must be called before start().\n"
                "Register every handler before starting the dispatcher."
            )
        for sub in subscriptions:
            if isinstance(sub, RedisStreamSubscription):
                stream, group = sub.stream, sub.group or self.group
                member = sub.consumer or self.consumer_name
            elif isinstance(sub, TopicSubscription):
                options = getattr(sub, "options", None) or {}
                stream, group = sub.topic, str(options.get("group") or self.group)
                member = str(options.get("consumer") or self.consumer_name)
            elif isinstance(sub, RedisEventSubscription):
                raise TypeError(
                    f"{sub!r} is a Pub/Sub subscription, but RedisStreamConsumer reads "
                    "streams.\nUse RedisStreamSubscription(stream=..., group=...), or "
                    "RedisConsumer (redis://) for Pub/Sub."
                )
            else:
                raise TypeError(
                    f"RedisStreamConsumer cannot consume {type(sub).__name__}.\nUse "
                    "RedisStreamSubscription(stream=..., group=...) or TopicSubscription."
                )
            pattern = sub.compiled
            if pattern.is_static:
                self._add_target(stream, group, member)
            else:
                self._patterns.append((pattern, group, member))

    def _add_target(self, stream: str, group: str, member: str) -> bool:
        """Record a stream to read; True if it is new. Readers pick it up on their next read."""
        other = self._targets.setdefault((stream, group), member)
        if other != member:
            raise ValueError(
                f"Stream {stream!r} in group {group!r} is subscribed as two members "
                f"({other!r} and {member!r}) by one consumer.\nUse one member name."
            )
        self._names[stream.encode()] = stream
        streams = self._members.get((group, member), [])
        if stream in streams:
            return False
        self._members[(group, member)] = [*streams, stream]  # a new list: readers notice
        self._change.set()
        return True

    async def start(self) -> None:
        """Create missing groups (``MKSTREAM``), resolve patterns, start reading.

        Raises:
            ValueError: When there is nothing to read.
            redis.exceptions.RedisError: When Redis cannot be reached.
        """
        if self._running:
            return
        if self._started:
            raise RuntimeError(
                "This RedisStreamConsumer was stopped; a consumer cannot be restarted.\n"
                "Create a new one over the same client (its unsettled entries were handed "
                "back to the group)."
            )
        if not self._targets and not self._patterns:
            raise ValueError(
                "RedisStreamConsumer has nothing to read.\nRegister a handler with "
                "RedisStreamSubscription(stream=..., group=...)."
            )
        for stream, group in self._targets:
            await self._create_group(stream, group, self.start_id)
        await self._keeper.discover(self.start_id)
        self._running = self._started = True
        self._spawn_readers()
        self._keeper_task = asyncio.get_running_loop().create_task(
            self._keeper.run(), name="dispytch-redis-streams-recovery"
        )
        self._keeper_task.add_done_callback(
            close_on_failure(self._inbox, "The Redis Streams recovery task", log)
        )

    def _spawn_readers(self) -> None:
        loop = asyncio.get_running_loop()
        for group, member in self._members:
            if (group, member) not in self._readers:
                reader = StreamReader(self, group, member)
                task = self._readers[(group, member)] = loop.create_task(
                    reader.run(), name=f"dispytch-redis-streams-reader:{group}:{member}"
                )
                task.add_done_callback(
                    close_on_failure(self._inbox, f"The Redis Streams reader of {group!r}", log)
                )

    async def listen(self) -> AsyncIterator[Message]:
        """Yield entries until :meth:`stop`.

        Raises:
            NotStartedError: Before :meth:`start`.
            ConsumerClosedError: A reader or the recovery task failed for good (logged).
        """
        if not self._running:
            self._inbox.raise_failure("The RedisStreamConsumer")
            raise NotStartedError("The RedisStreamConsumer is not started.\nCall start() first.")
        async for msg in self._inbox.items("The RedisStreamConsumer"):
            yield msg

    async def ack(self, message: Message) -> None:
        """Acknowledge (``XACK``) the entry; sent in batches in the background."""
        token: Token = message.token
        if self._inflight.pop(token, None) is None:
            return
        self._acks.add(token[0], token[1], token[2])

    async def nack(
        self,
        message: Message,
        *,
        requeue: bool,
        delay: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Redeliver the entry (``requeue=True``, after ``delay`` seconds if given) or give
        it up (``False``: dead-letter stream, with the reason from ``error``, else from
        ``message.error``, which the dispatcher sets before rejecting).

        Raises:
            redis.exceptions.RedisError: When Redis cannot be reached (the entry stays
                pending and is recovered after ``min_idle_time``).
        """
        token: Token = message.token
        if self._inflight.pop(token, None) is None:
            return
        try:
            if not requeue:
                if error is None:
                    # The dispatcher says why it rejected the message (Message.error).
                    error = getattr(message, "error", None)
                if error is not None:
                    error_type, reason = type(error).__name__, str(error) or repr(error)
                else:
                    error_type = "Rejected"
                    reason = "the failure policy gave up on it (no error was given)"
                await self._give_up_message(message, error_type, reason)
            elif delay and delay > 0:
                due = time.monotonic() + delay
                if delay > self.min_idle_time:
                    self._keeper.delayed[token] = due
                    await hand_back(self._r, [token], 0)
                else:
                    idle_ms = int((self.min_idle_time - delay) * 1000)
                    await hand_back(self._r, [token], idle_ms)
            else:
                await hand_back(self._r, [token], _REQUEUE_IDLE_MS)
                self._poke.set()
        finally:
            self._notify()

    async def extend(self, message: Message) -> None:
        """Keep an entry still being handled from being taken over (the LeaseExtension
        protocol): ``XCLAIM`` it to this member again, which resets its idle time."""
        token: Token = message.token
        if token not in self._inflight:
            return
        self._inflight[token] = time.monotonic()
        await hand_back(self._r, [token], 0)

    def pause(self, lane: Hashable) -> None:
        """Stop reading the stream ``lane`` (the LanePausing protocol; idempotent).

        Entries of that stream already taken and not yet yielded are kept back until
        :meth:`resume` (still held, and kept fresh, by this member), so the dispatcher
        is not handed more of a lane it asked to pause; a read blocked at the time of the
        pause ends within ``block_ms``, and what it brings for the lane is kept back too.
        Recovery skips the stream meanwhile.
        """
        if isinstance(lane, str) and lane not in self._paused:
            self._paused.add(lane)
            held = self._inbox.take_where(lambda m: m.lane == lane)
            if held:
                self._parked.setdefault(lane, []).extend(held)
            self._change.set()

    def resume(self, lane: Hashable) -> None:
        """Read the stream ``lane`` again (idempotent); what was kept back comes first."""
        if isinstance(lane, str) and lane in self._paused:
            self._paused.discard(lane)
            held = self._parked.pop(lane, None)
            if held:
                self._inbox.put_front(held)
            self._change.set()

    def _deliver(self, messages: list[Message]) -> None:
        """Hand read entries to ``listen``, keeping back those of paused streams."""
        if self._paused:
            for msg in messages:
                if msg.lane in self._paused:
                    assert isinstance(msg.lane, str)
                    self._parked.setdefault(msg.lane, []).append(msg)
                else:
                    self._inbox.put(msg)
        else:
            self._inbox.put_many(messages)

    # ----------------------------------------------------------------- request/reply
    def reply_address(self, request: Message) -> str | None:
        """Request/reply: the requester's reply channel (the ``dispytch-reply-to`` field
        of the entry's headers)."""
        return reply_address(request)

    async def send_reply(
        self, request: Message, payload: bytes, headers: Mapping[str, str]
    ) -> None:
        """``PUBLISH`` a reply to the requester's channel through this consumer's client
        (best effort: a requester that is gone loses it). The request entry itself is
        acknowledged by the dispatcher once answered, like any handled entry."""
        await self._replies.publish(self.redis, request, payload, headers)

    async def stop(self) -> None:
        """Stop reading; ``listen`` ends now (a blocked read ends within ``block_ms``)."""
        self._running = False
        self._inbox.close()
        self._stopping.set()
        self._poke.set()
        self._room.set()
        self._change.set()

    async def close(self) -> None:
        """Finish reads, hand back what was not handled, flush acks, release the client.

        Entries read but never handed to a handler, and handed-out ones never settled,
        are made claimable at once (as on ``nack(requeue=True)``). Bounded: readers get
        ``block_ms`` to finish their last read, settling gets ``close_timeout``.
        """
        await self.stop()
        tasks = [*self._readers.values(), *([self._keeper_task] if self._keeper_task else [])]
        self._readers, self._keeper_task = {}, None
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.block_ms / 1000 + 0.25)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inbox.drain()  # read but never handed out: their tokens are in _inflight
        self._parked.clear()  # the same
        leftovers = list(self._inflight)
        self._inflight.clear()
        try:
            async with asyncio.timeout(self.close_timeout):
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                if leftovers:
                    await hand_back(self._r, leftovers, _REQUEUE_IDLE_MS)
                now = time.monotonic()
                for token, due in list(self._keeper.delayed.items()):
                    # Claimable when its delay is over, or after min_idle_time at most.
                    idle = self.min_idle_time - max(0.0, due - now)
                    await hand_back(self._r, [token], int(max(0.0, idle) * 1000))
                self._keeper.delayed.clear()
                await self._acks.flush_all()
                if self._started and not self._named:
                    await self._keeper.forget_member()
        except (RedisError, OSError, TimeoutError) as exc:
            dropped = self._acks.drop()
            log.warning(
                "Closing the Redis Streams consumer did not finish (%s: %s); %d unsettled "
                "and %d acknowledged entries stay pending and are recovered after "
                "min_idle_time.",
                type(exc).__name__,
                exc,
                len(leftovers),
                dropped,
            )
        for task in self._tasks:
            task.cancel()
        if self.owns_client and self._redis is not None:
            client, self._redis = self._redis, None
            try:
                async with asyncio.timeout(self.close_timeout):
                    await client.aclose()
            except (RedisError, OSError, TimeoutError):
                await client.connection_pool.disconnect()

    # ------------------------------------------------------------------ read-ahead
    def _unsettled(self) -> int:
        acks = self._acks_batcher.pending if self._acks_batcher is not None else 0
        return len(self._inflight) + acks + self._reserved

    def _reserve(self, *, recovery: bool = False) -> int:
        """Entries the next read may take (0: wait for room), counted as unsettled until
        :meth:`_release`.

        The bound counts every entry taken and not yet acknowledged. One exception keeps
        a dispatcher that holds messages on purpose (manual acknowledgement, bounded by
        its own ``max_unsettled``) from waiting forever: when it asks for more (``listen``
        waits on an empty inbox) while nothing is being read or acknowledged, one batch
        is read although the bound is reached. Recovery does not wait for what a blocked
        ``XREADGROUP`` reserved (that read may return nothing for a long time): a
        requeued entry must come back promptly, so a recovery pass may take up to one
        batch beyond the bound while a read is blocked.
        """
        if not self._running:
            return 0
        batch = self.batch_size
        acks = self._acks_batcher.pending if self._acks_batcher is not None else 0
        if recovery:
            room = self._limit - len(self._inflight) - acks
            threshold = 1
        else:
            room = self._limit - self._unsettled()
            threshold = max(1, min(batch, self._limit) // 4)
        if room < threshold and self._inbox.waiting and not acks and not self._reserved:
            room = min(batch, self._limit)  # the dispatcher asks for more: demand
        if room < threshold:
            return 0
        count = min(batch, room)
        self._reserved += count
        return count

    def _release(self, count: int) -> None:
        self._reserved -= count
        self._notify()

    def _notify(self) -> None:
        self._room.set()

    async def _wait_room(self) -> None:
        while self._running and not self._reserve_possible():
            self._room.clear()
            await self._room.wait()

    def _reserve_possible(self) -> bool:
        room = self._limit - self._unsettled()
        if room >= max(1, min(self.batch_size, self._limit) // 4):
            return True
        acks = self._acks_batcher.pending if self._acks_batcher is not None else 0
        return self._inbox.waiting and not acks and not self._reserved

    async def _wait_change(self) -> None:
        self._change.clear()
        if not self._running:
            return
        await self._change.wait()

    # ------------------------------------------------------------------ giving up
    async def _create_group(self, stream: str, group: str, start_id: str) -> None:
        try:
            await self._r.xgroup_create(stream, group, id=start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _give_up_message(self, message: Message, error_type: str, reason: str) -> None:
        fields = dead_letter_fields(
            message.payload,
            message.headers,
            message.key,
            stream=message.token[0],
            error_type=error_type,
            reason=reason,
            attempt=message.attempt,
        )
        await give_up(
            self._r, self._acks, self.dead_letter_stream, message.token, fields, error_type, reason
        )

    async def _give_up_raw(
        self,
        token: Token,
        fields: dict[bytes, bytes],
        attempt: int,
        error_type: str,
        reason: str,
    ) -> None:
        """Give up an entry known only by its raw fields (malformed or over the limit)."""
        try:
            payload, headers, key = unpack_fields(fields)
        except (ValueError, TypeError):
            payload = fields.get(FIELD_PAYLOAD, b"")
            headers, key = {}, fields.get(FIELD_KEY)
        out = dead_letter_fields(
            payload if isinstance(payload, bytes) else b"",
            headers,
            key if isinstance(key, bytes) else None,
            stream=token[0],
            error_type=error_type,
            reason=reason,
            attempt=attempt,
        )
        raw_headers = fields.get(FIELD_HEADERS)
        if raw_headers is not None and headers == {}:
            out[b"original-headers"] = raw_headers
        await give_up(self._r, self._acks, self.dead_letter_stream, token, out, error_type, reason)

    def _malformed(
        self, token: Token, fields: dict[bytes, bytes], exc: BaseException, attempt: int
    ) -> None:
        """An entry that cannot be read as a message: dead-letter it in the background."""
        self._inflight[token] = time.monotonic()  # pending until given up: unsettled

        async def run() -> None:
            try:
                await self._give_up_raw(
                    token, fields, attempt, "MalformedEntry", f"{type(exc).__name__}: {exc}"
                )
            except (RedisError, OSError) as failure:
                log.warning(
                    "Could not dead-letter malformed entry %s of Redis stream %r (%s); it "
                    "stays pending and is retried after min_idle_time.",
                    token[2].decode(),
                    token[0],
                    failure,
                )
                return
            finally:
                self._inflight.pop(token, None)
                self._notify()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, aw: Any) -> None:
        try:
            await aw
        except (RedisError, OSError) as exc:
            if self._running:
                log.warning(
                    "Redis Streams recovery step failed (%s: %s); will retry.",
                    type(exc).__name__,
                    exc,
                )
