"""The Redis Streams consumer: consumer groups, at-least-once.

How an entry travels (``XREADGROUP`` -> handler -> ``XACK``):

* ``start`` creates each group with ``XGROUP CREATE ... MKSTREAM`` if it is missing
  (from ``start_id``: ``"$"`` new entries only, ``"0"`` the whole stream). Pattern
  subscriptions (``"orders.{region}"``) read every existing stream that matches, found
  with ``SCAN ... TYPE stream`` on start and every ``discover_interval``; the concrete
  stream is ``Message.route`` and named segments reach handlers.
* A reader task per (group, member) runs ``XREADGROUP ... BLOCK`` and hands entries to
  ``listen``. An entry read is *pending* (in the group's PEL) until it is acknowledged.
* ``ack`` sends ``XACK``, batched in the background (a crash before the flush means the
  entry is delivered again: at-least-once).
* Recovery: every ``claim_interval`` the consumer runs ``XAUTOCLAIM`` for entries pending
  longer than ``min_idle_time`` — those of a member that crashed or was killed — and
  delivers them again with ``Message.attempt`` set from Redis's delivery counter. Entries
  this consumer is still handling have their idle time reset (``XCLAIM ... JUSTID``) on
  the same schedule, so live members are not robbed however long a handler runs.
* ``nack(requeue=True)``: the entry is marked as idle for a very long time
  (``XCLAIM ... IDLE``), so the next ``XAUTOCLAIM`` of any member takes it; this
  consumer runs one at once, so redelivery happens within ``block_ms`` plus one round
  trip (not after ``min_idle_time``).
* ``nack(requeue=False)`` (the failure policy gave up): the entry is acknowledged, after
  being copied to ``dead_letter_stream`` when one is configured (atomically, in
  ``MULTI``), with ``dispytch-error-*`` and ``dispytch-original-route`` headers.
* ``max_deliveries``: an entry reclaimed after being delivered that many times is not
  handed to handlers again but goes the ``nack(requeue=False)`` way (dead-letter stream,
  or logged at ERROR and acknowledged). This is what ends crash loops on a poison entry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from dispytch.errors import NotStartedError
from dispytch.patterns import RoutePattern
from dispytch.redis._client import (
    check_async_client,
    client_from_url,
    split_url,
    to_bool,
    to_optional_int,
)
from dispytch.redis._inbox import Inbox, close_on_failure
from dispytch.redis._resp import ErrorReply, RespError, command, read_reply
from dispytch.redis.envelope import encode_headers, unpack_fields
from dispytch.redis.routes import (
    RedisEventSubscription,
    RedisStreamSubscription,
)
from dispytch.routes import EventSubscription, TopicSubscription
from dispytch.transport import (
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_ROUTE,
    Message,
)

import redis.asyncio as aredis
from redis.exceptions import RedisError, ResponseError

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("dispytch.redis")

__all__ = ["RedisStreamConsumer"]

#: Idle time given to a requeued entry so that every member's XAUTOCLAIM takes it.
_REQUEUE_IDLE_MS = 10 * 365 * 24 * 3600 * 1000

_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "group": str,
    "consumer": str,
    "batch_size": int,
    "block_ms": int,
    "min_idle_time": float,
    "claim_interval": float,
    "max_deliveries": to_optional_int,
    "dead_letter_stream": str,
    "start_id": str,
    "ordered": to_bool,
    "discover_interval": float,
}

# (stream, group, entry id, member)
Token = tuple[str, str, bytes, str]


def _stream_pairs(reply: Any) -> Iterable[tuple[bytes, list[Any]]]:
    """``(stream, entries)`` from an XREADGROUP reply in any of its shapes.

    RESP2: a list of ``[name, entries]``; RESP3: a map, which the fast parser flattens to
    ``[name, entries, name, entries, ...]`` and redis-py returns as a dict; ``None`` when
    BLOCK timed out.
    """
    if not reply:
        return ()
    if isinstance(reply, dict):
        return reply.items()
    if isinstance(reply[0], bytes):
        return zip(reply[::2], reply[1::2], strict=True)
    return ((pair[0], pair[1]) for pair in reply)


def default_consumer_name() -> str:
    """``host-pid-random``: unique per process, so each process is its own member."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class RedisStreamConsumer:
    """Consumes Redis Streams in consumer groups: at-least-once, with crash recovery.

    See the module documentation for the full life of an entry. In short: entries are
    acknowledged (``XACK``) after handling; entries a dead member left pending are taken
    over (``XAUTOCLAIM``) after ``min_idle_time``; ``nack(requeue=True)`` redelivers
    promptly; ``nack(requeue=False)`` and entries over ``max_deliveries`` are
    acknowledged, after a copy to ``dead_letter_stream`` if configured.

    Args:
        redis: A ``redis.asyncio.Redis`` client (bytes responses). You keep owning it:
            :meth:`close` does not close it. The synchronous client is refused.
        group: The consumer group for subscriptions that do not name one.
        consumer: This member's name; default unique per process
            (:func:`default_consumer_name`). A fixed name makes a restarted process
            pick up its own pending entries at once instead of after ``min_idle_time``
            — but two live processes must never share one.
        batch_size: ``COUNT`` of each ``XREADGROUP``.
        block_ms: ``BLOCK`` of each ``XREADGROUP``; also bounds how long :meth:`close`
            waits for the last read.
        min_idle_time: Seconds an entry must have been pending, untouched, before
            another member may take it over. Members refresh the entries they are
            still handling, so this only has to exceed a few ``claim_interval``.
        claim_interval: Seconds between recovery passes (default ``min_idle_time / 4``).
        max_deliveries: Deliveries after which a reclaimed entry is given up (see the
            module docs); ``None`` for no limit.
        dead_letter_stream: Stream that receives given-up entries; ``None`` logs them at
            ERROR and acknowledges them.
        start_id: Where a newly created group starts: ``"$"`` (entries added from now
            on) or ``"0"`` (everything in the stream).
        ordered: Handle the entries of one stream one after another, in order (the
            stream is the ``Message.lane``). Redeliveries can still come out of order.
        max_buffered: Entries read ahead of the handlers (default ``2 * batch_size``).
        discover_interval: Seconds between two ``SCAN``s for streams matching pattern
            subscriptions (each scans the keyspace: keep it modest on large databases).
    """

    def __init__(
        self,
        redis: aredis.Redis,
        *,
        group: str = "dispytch",
        consumer: str | None = None,
        batch_size: int = 100,
        block_ms: int = 500,
        min_idle_time: float = 30.0,
        claim_interval: float | None = None,
        max_deliveries: int | None = None,
        dead_letter_stream: str | None = None,
        start_id: str = "$",
        ordered: bool = False,
        max_buffered: int | None = None,
        discover_interval: float = 5.0,
    ) -> None:
        self._redis = check_async_client(redis, type(self).__name__)
        # redis-py's stream command stubs are unions of RESP2/RESP3 shapes; the
        # client is checked to answer bytes, so commands go through an Any view.
        self._r: Any = self._redis
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: read at least 1 entry at a time.")
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
        self.group = group
        self.consumer_name = consumer or default_consumer_name()
        self._named = consumer is not None
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.min_idle_time = min_idle_time
        self.claim_interval = max(
            0.05, claim_interval if claim_interval is not None else min_idle_time / 4
        )
        self.max_deliveries = max_deliveries
        self.dead_letter_stream = dead_letter_stream
        self.start_id = start_id
        self._ordered = ordered
        self._inbox: Inbox[Message] = Inbox(max_buffered or 2 * batch_size)
        # (stream, group) -> member name
        self._targets: dict[tuple[str, str], str] = {}
        self._inflight: dict[Token, float] = {}
        self._acks: dict[tuple[str, str], list[bytes]] = {}
        self._ack_task: asyncio.Task[None] | None = None
        self._patterns: list[tuple[RoutePattern, str, str]] = []
        # (group, member) -> streams read by that member (replaced, never mutated)
        self._members: dict[tuple[str, str], list[str]] = {}
        self._readers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.discover_interval = discover_interval
        self._next_discovery = 0.0
        self._keeper: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        self._owns_client = False
        self._running = False
        self._started = False
        self._names: dict[bytes, str] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a consumer that owns its client, from ``redis+streams://`` (or ``redis://``).

        Options may come from the query: ``?group=g&consumer=c&min_idle_time=5&
        max_deliveries=10&dead_letter_stream=dlq&batch_size=100&block_ms=500&
        claim_interval=1&start_id=0&ordered=true``; other parameters go to redis-py.
        """
        from dispytch.redis import producer

        redis_url, options = split_url(url, options, _URL_OPTIONS, producer._URL_OPTIONS)
        consumer = cls(client_from_url(redis_url), **options)
        consumer._owns_client = True
        return consumer

    @property
    def redis(self) -> aredis.Redis:
        """The client this consumer reads through."""
        return self._redis

    # ------------------------------------------------------------------ lifecycle
    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        """Collect the streams (or stream patterns) and groups to read on :meth:`start`.

        A pattern (``"orders.*"``, ``"orders.{region}"``) is resolved to existing streams
        with ``SCAN ... TYPE stream`` on start and every ``discover_interval`` seconds;
        groups on streams found after start begin at their first entry.

        Raises:
            TypeError: For a Pub/Sub or another transport's subscription.
            ValueError: When one stream and group would be read as two members.
            RuntimeError: When called after :meth:`start`.
        """
        if self._started:
            raise RuntimeError(
                "RedisStreamConsumer.subscribe() must be called before start(); register "
                "every handler before starting the dispatcher."
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
                    "streams. Use RedisStreamSubscription(stream=..., group=...), or "
                    "RedisConsumer (redis://) for Pub/Sub."
                )
            else:
                raise TypeError(
                    f"RedisStreamConsumer cannot consume {type(sub).__name__}. Use "
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
                f"({other!r} and {member!r}) by one consumer. Use one member name."
            )
        streams = self._members.get((group, member), [])
        if stream in streams:
            return False
        self._members[(group, member)] = [*streams, stream]  # a new list: readers notice
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
                "This RedisStreamConsumer was stopped; a consumer cannot be restarted. "
                "Create a new one (its unsettled entries were handed back to the group)."
            )
        if not self._targets and not self._patterns:
            raise ValueError(
                "RedisStreamConsumer has nothing to read. Register a handler with "
                "RedisStreamSubscription(stream=..., group=...)."
            )
        for stream, group in self._targets:
            await self._create_group(stream, group, self.start_id)
        await self._discover(self.start_id)
        self._running = self._started = True
        self._spawn_readers()
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep_loop(), name="dispytch-redis-streams-claims"
        )
        self._keeper.add_done_callback(
            close_on_failure(self._inbox, "The Redis Streams recovery task", log)
        )

    def _spawn_readers(self) -> None:
        loop = asyncio.get_running_loop()
        for group, member in self._members:
            if (group, member) not in self._readers:
                task = self._readers[(group, member)] = loop.create_task(
                    self._read_loop(group, member),
                    name=f"dispytch-redis-streams-reader:{group}:{member}",
                )
                task.add_done_callback(
                    close_on_failure(self._inbox, f"The Redis Streams reader of {group!r}", log)
                )

    async def _discover(self, start_id: str) -> None:
        """Find streams matching the pattern subscriptions (``SCAN ... TYPE stream``)."""
        for pattern, group, member in self._patterns:
            async for raw in self._r.scan_iter(match=pattern.glob, count=1000, _type="stream"):
                name = self._name(raw)
                if (name, group) in self._targets or pattern.match(name) is None:
                    continue
                await self._create_group(name, group, start_id)
                if self._add_target(name, group, member):
                    log.info("Reading Redis stream %r (matches %r).", name, pattern.pattern)

    async def listen(self) -> AsyncIterator[Message]:
        """Yield entries until :meth:`stop`.

        Raises:
            NotStartedError: Before :meth:`start`.
        """
        if not self._running:
            raise NotStartedError("The RedisStreamConsumer is not started; call start() first.")
        async for msg in self._inbox.items():
            yield msg

    async def ack(self, message: Message) -> None:
        """Acknowledge (``XACK``) the entry; sent in batches in the background."""
        token: Token = message.token
        if self._inflight.pop(token, None) is None:
            return
        self._ack_later(token[0], token[1], token[2])

    async def nack(self, message: Message, *, requeue: bool) -> None:
        """Redeliver the entry soon (``requeue=True``) or give it up (``False``).

        See the module documentation: a requeued entry is made claimable by every member
        at once; a given-up one is acknowledged, after a copy to ``dead_letter_stream``.
        """
        token: Token = message.token
        if self._inflight.pop(token, None) is None:
            return
        if requeue:
            await self._hand_back([token])
            self._poke.set()
        else:
            await self._give_up(message, "Rejected", "the failure policy gave up on it")

    async def stop(self) -> None:
        """Stop reading; ``listen`` ends now (the last blocking read ends in ``block_ms``)."""
        self._running = False
        self._inbox.close()
        self._poke.set()

    async def close(self) -> None:
        """Finish reads, hand back what was not handled, flush acks, release the client.

        Entries read but never handed to a handler, and handed-out ones never settled,
        are made claimable at once (as on ``nack(requeue=True)``).
        """
        await self.stop()
        tasks = [*self._readers.values(), *([self._keeper] if self._keeper else [])]
        self._readers, self._keeper = {}, None
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.block_ms / 1000 + 5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inbox.drain()  # read but never handed out: their tokens are in _inflight
        leftovers = list(self._inflight)
        self._inflight.clear()
        try:
            if leftovers:
                await self._hand_back(leftovers)
            await self._flush_all()
            if self._started and not self._named:
                await self._forget_member()
        except (RedisError, OSError) as exc:
            log.warning(
                "Closing the Redis Streams consumer failed (%s); unsettled entries stay "
                "pending and are recovered after min_idle_time.",
                exc,
            )
        if self._owns_client:
            await self._redis.aclose()

    # ------------------------------------------------------------------ reading
    async def _create_group(self, stream: str, group: str, start_id: str) -> None:
        try:
            await self._r.xgroup_create(stream, group, id=start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_loop(self, group: str, member: str) -> None:
        """``XREADGROUP ... BLOCK`` until stopped, on a connection held for the purpose.

        The reply is parsed straight from the connection's stream
        (:class:`~dispytch.redis._resp.ReplyParser`): redis-py's parser was the largest
        cost per entry. Errors reconnect with a backoff; a vanished group is recreated.
        Streams found later by a pattern join on the next read.
        """
        inbox = self._inbox
        streams = self._members[(group, member)]
        if self._named:
            await self._guard(self._read_own_pending(group, member, streams))
        request = self._xreadgroup(group, member, streams)
        pool = self._redis.connection_pool
        conn: Any = None
        delay = 0.1
        try:
            while self._running:
                if inbox.full:
                    await inbox.wait_space()
                    continue
                current = self._members[(group, member)]
                if current is not streams:
                    added = [s for s in current if s not in streams]
                    streams = current
                    request = self._xreadgroup(group, member, streams)
                    if self._named:
                        await self._guard(self._read_own_pending(group, member, added))
                try:
                    if conn is None:
                        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                    await conn.send_packed_command(request)
                    reply = await read_reply(conn)
                except BaseException as exc:
                    if conn is not None:
                        await conn.disconnect(nowait=True)
                        await pool.release(conn)
                        conn = None
                    if not isinstance(exc, RedisError | OSError | RespError):
                        raise
                    await self._backoff(exc, delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if isinstance(reply, ErrorReply):
                    if reply.startswith("NOGROUP"):
                        log.warning("Redis group %r vanished (%s); recreating it.", group, reply)
                        for stream in streams:
                            await self._guard(self._create_group(stream, group, "0"))
                    else:
                        await self._backoff(ResponseError(reply), delay)
                        delay = min(delay * 2, 5.0)
                    continue
                delay = 0.1
                for raw_name, entries in _stream_pairs(reply):
                    inbox.put_many(
                        self._messages(self._name(raw_name), group, member, entries, None)
                    )
        finally:
            if conn is not None:
                await pool.release(conn)

    def _xreadgroup(self, group: str, member: str, streams: list[str]) -> bytes:
        return command(
            b"XREADGROUP", b"GROUP", group.encode(), member.encode(),
            b"COUNT", b"%d" % self.batch_size, b"BLOCK", b"%d" % self.block_ms,
            b"STREAMS", *(s.encode() for s in streams), *(b">" for _ in streams),
        )  # fmt: skip

    async def _read_own_pending(self, group: str, member: str, streams: list[str]) -> None:
        """Entries this member name left pending before a restart (fixed names only)."""
        for stream in streams:
            last = "0"
            while self._running:
                response = await self._r.xreadgroup(
                    group, member, {stream: last}, count=self.batch_size
                )
                entries = response[0][1] if response else []
                if not entries:
                    break
                last = entries[-1][0]
                await self._deliver_reclaimed(stream, group, member, entries)

    def _name(self, raw: bytes | str) -> str:
        if isinstance(raw, str):
            return raw
        name = self._names.get(raw)
        if name is None:
            name = self._names[raw] = raw.decode()
        return name

    def _messages(
        self,
        stream: str,
        group: str,
        member: str,
        entries: Iterable[Any],
        attempts: dict[bytes, int] | None,
    ) -> list[Message]:
        out = []
        now = time.monotonic()
        lane = stream if self._ordered else None
        inflight = self._inflight
        for entry_id, fields in entries:
            if fields is None:  # trimmed away (MAXLEN) while pending: nothing to deliver
                self._ack_later(stream, group, entry_id)
                continue
            if type(fields) is list:  # flat [name, value, ...] from the fast parser
                it = iter(fields)
                fields = dict(zip(it, it, strict=True))
            try:
                payload, headers, key = unpack_fields(fields)
            except ValueError as exc:
                log.error(
                    "Acknowledged and skipped malformed entry %s of Redis stream %r: %s",
                    entry_id.decode(),
                    stream,
                    exc,
                )
                self._ack_later(stream, group, entry_id)
                continue
            token = (stream, group, entry_id, member)
            inflight[token] = now
            out.append(
                Message(
                    payload,
                    route=stream,
                    headers=headers,
                    key=key,
                    attempt=attempts.get(entry_id, 1) if attempts else 1,
                    metadata={
                        "stream": stream,
                        "group": group,
                        "consumer": member,
                        "id": entry_id.decode(),
                    },
                    lane=lane,
                    token=token,
                )
            )
        return out

    # ------------------------------------------------------------------ recovery
    async def _keep_loop(self) -> None:
        """Periodically refresh our pending entries and take over those of dead members."""
        while self._running:
            if self._patterns and time.monotonic() >= self._next_discovery:
                self._next_discovery = time.monotonic() + self.discover_interval
                await self._guard(self._discover("0"))
                self._spawn_readers()
            await self._guard(self._refresh_inflight())
            for (stream, group), member in list(self._targets.items()):
                if not self._running:
                    return
                await self._guard(self._autoclaim(stream, group, member))
            pause = self.claim_interval
            if self._patterns:
                pause = min(pause, max(0.0, self._next_discovery - time.monotonic()))
            try:
                await asyncio.wait_for(self._poke.wait(), pause)
            except TimeoutError:
                pass
            self._poke.clear()

    async def _refresh_inflight(self) -> None:
        """Reset the idle time of entries we still hold (``XCLAIM ... JUSTID``)."""
        threshold = time.monotonic() - self.min_idle_time / 2
        stale: dict[tuple[str, str, str], list[bytes]] = {}
        for (stream, group, entry_id, member), since in self._inflight.items():
            if since <= threshold:
                stale.setdefault((stream, group, member), []).append(entry_id)
        if not stale:
            return
        now = time.monotonic()
        pipe = self._r.pipeline(transaction=False)
        for (stream, group, member), ids in stale.items():
            pipe.xclaim(stream, group, member, 0, ids, justid=True)
            for entry_id in ids:
                token = (stream, group, entry_id, member)
                if token in self._inflight:
                    self._inflight[token] = now
        await pipe.execute()

    async def _autoclaim(self, stream: str, group: str, member: str) -> None:
        min_idle_ms = int(self.min_idle_time * 1000)
        start: bytes | str = "0-0"
        for _ in range(100):  # bounded work per pass
            if not self._running or self._inbox.full:
                return
            result = await self._r.xautoclaim(
                stream, group, member, min_idle_ms, start_id=start, count=self.batch_size
            )
            start, entries = result[0], result[1]
            fresh = [(i, f) for i, f in entries if (stream, group, i, member) not in self._inflight]
            if fresh:
                await self._deliver_reclaimed(stream, group, member, fresh)
            if start in (b"0-0", "0-0"):
                return

    async def _deliver_reclaimed(
        self,
        stream: str,
        group: str,
        member: str,
        entries: list[tuple[bytes, dict[bytes, bytes] | None]],
    ) -> None:
        """Deliver reclaimed entries with their delivery counts, or give them up."""
        ids = [i for i, _ in entries]
        rows = await self._r.xpending_range(
            stream,
            group,
            min=ids[0],
            max=ids[-1],
            count=len(ids) + len(self._inflight) + 16,
            consumername=member,
        )
        counts = {row["message_id"]: int(row["times_delivered"]) for row in rows}
        deliver = []
        limit = self.max_deliveries
        for entry_id, fields in entries:
            count = counts.get(entry_id, 1)
            if limit is not None and fields is not None and count > limit:
                messages = self._messages(stream, group, member, [(entry_id, fields)], counts)
                for msg in messages:
                    self._inflight.pop(msg.token, None)
                    await self._give_up(
                        msg,
                        "MaxDeliveriesExceeded",
                        f"delivered {count - 1} times without being acknowledged "
                        f"(max_deliveries={limit})",
                    )
                continue
            deliver.append((entry_id, fields))
        if deliver:
            log.info(
                "Recovered %d pending entr%s of Redis stream %r (group %r).",
                len(deliver),
                "y" if len(deliver) == 1 else "ies",
                stream,
                group,
            )
            self._inbox.put_many(self._messages(stream, group, member, deliver, counts))

    async def _hand_back(self, tokens: Sequence[Token]) -> None:
        """Make entries claimable by any member at once (``XCLAIM ... IDLE big JUSTID``)."""
        grouped: dict[tuple[str, str, str], list[bytes]] = {}
        for stream, group, entry_id, member in tokens:
            grouped.setdefault((stream, group, member), []).append(entry_id)
        pipe = self._r.pipeline(transaction=False)
        for (stream, group, member), ids in grouped.items():
            pipe.xclaim(stream, group, member, 0, ids, idle=_REQUEUE_IDLE_MS, justid=True)
        await pipe.execute()

    async def _give_up(self, message: Message, error_type: str, reason: str) -> None:
        stream, group, entry_id, _ = message.token
        if self.dead_letter_stream is None:
            log.error(
                "Gave up on entry %s of Redis stream %r (group %r): %s. It is acknowledged "
                "and will not be delivered again; set dead_letter_stream= to keep such entries.",
                entry_id.decode(),
                stream,
                group,
                reason,
            )
            self._ack_later(stream, group, entry_id)
            return
        headers = dict(message.headers)
        headers[HEADER_ORIGINAL_ROUTE] = stream
        headers[HEADER_ERROR_TYPE] = error_type
        headers[HEADER_ERROR_MESSAGE] = reason
        headers[HEADER_ERROR_ATTEMPTS] = str(message.attempt)
        headers[HEADER_DEAD_LETTERED_AT] = f"{time.time():.6f}"
        fields = {b"payload": message.payload, b"headers": encode_headers(headers)}
        if message.key is not None:
            fields[b"key"] = message.key
        pipe = self._r.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_stream, fields)
        pipe.xack(stream, group, entry_id)
        await pipe.execute()
        log.warning(
            "Moved entry %s of Redis stream %r (group %r) to dead-letter stream %r: %s.",
            entry_id.decode(),
            stream,
            group,
            self.dead_letter_stream,
            reason,
        )

    async def _forget_member(self) -> None:
        """Delete our generated member name from each group if it holds nothing."""
        for (stream, group), member in self._targets.items():
            info = await self._r.xpending(stream, group)
            holders = {self._name(c["name"]) for c in info.get("consumers") or ()}
            if member not in holders:
                await self._r.xgroup_delconsumer(stream, group, member)

    # ------------------------------------------------------------------ acks
    def _ack_later(self, stream: str, group: str, entry_id: bytes) -> None:
        ids = self._acks.get((stream, group))
        if ids is None:
            self._acks[(stream, group)] = [entry_id]
        else:
            ids.append(entry_id)
        if self._ack_task is None:
            self._ack_task = asyncio.get_running_loop().create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        try:
            while self._acks:
                batch, self._acks = self._acks, {}
                for attempt in range(3):
                    try:
                        pipe = self._r.pipeline(transaction=False)
                        for (stream, group), ids in batch.items():
                            pipe.xack(stream, group, *ids)
                        await pipe.execute()
                        break
                    except (RedisError, OSError) as exc:
                        # XACK is idempotent: retrying is safe, and the first failure is
                        # usually a pooled connection the server had closed.
                        if attempt < 2:
                            await asyncio.sleep(0.05 * (attempt + 1))
                            continue
                        log.warning(
                            "XACK of %d entries failed (%s); they stay pending and will be "
                            "delivered again after min_idle_time.",
                            sum(len(v) for v in batch.values()),
                            exc,
                        )
        finally:
            self._ack_task = None

    async def _flush_all(self) -> None:
        while self._ack_task is not None or self._acks:
            if self._ack_task is not None:
                await asyncio.gather(self._ack_task, return_exceptions=True)
            elif self._acks:
                self._ack_task = asyncio.get_running_loop().create_task(self._flush_acks())

    # ------------------------------------------------------------------ helpers
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

    async def _backoff(self, exc: BaseException, delay: float) -> None:
        if not self._running:
            return
        log.warning(
            "Reading Redis streams failed (%s: %s); retrying in %.1fs.",
            type(exc).__name__,
            exc,
            delay,
        )
        try:
            await asyncio.wait_for(self._poke.wait(), delay)
        except TimeoutError:
            pass
