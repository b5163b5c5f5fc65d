"""Producers for Redis Pub/Sub (``PUBLISH``) and Redis Streams (``XADD``).

Commands go through redis-py's public connection API: a pooled connection
(``ConnectionPool.get_connection``), ``send_packed_command`` of the commands packed by
hiredis (``hiredis.pack_command``) and ``read_response`` per reply, so hiredis parses
and RESP3 push frames (client-side caching invalidations, maintenance notifications) are
handled by redis-py between the replies. A batch is one round trip per
:data:`PIPELINE_SIZE` commands.

A round trip is never sent twice: once commands were written, a failure leaves their
outcome unknown (Redis may have executed them), so the error says how many were
confirmed, how many may or may not have been stored and how many were not sent, and
re-emitting is the caller's decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from dispytch.backoff import Backoff
from dispytch.cqrs.errors import NoRouteError
from dispytch.cqrs.wire import HEADER_REPLY_TO, ReplyHandler
from dispytch.errors import EmitError, EmitRejectedError, EmitTimeoutError, NotStartedError
from dispytch.redis._client import check_async_client, client_from_url, where
from dispytch.redis._options import (
    PRODUCER_FIELDS,
    RedisOptions,
    RedisStreamOptions,
    fields_of,
    split_url,
)
from dispytch.redis._replies import new_reply_channel
from dispytch.redis.envelope import pack, stream_fields, unpack
from dispytch.redis.routes import RedisEventRoute, RedisStreamRoute
from dispytch.routes import EventRoute, TopicRoute
from dispytch.transport import Message, OutgoingMessage
from hiredis import pack_command

import redis.asyncio as aredis
from redis.asyncio.client import PubSub
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from typing import Self

    from dispytch.options import TransportOptions

log = logging.getLogger("dispytch.redis")

__all__ = ["RedisBatchError", "RedisProducer", "RedisStreamProducer"]

NoReceiversCallback = Callable[[OutgoingMessage], Awaitable[Any] | Any]
ClientFactory = Callable[[], aredis.Redis]

#: Commands per pipeline round trip in :meth:`RedisProducer.send_batch`.
PIPELINE_SIZE = 1000
#: Pooled connections requests use at once (the rest wait their turn): 100 concurrent
#: requests must not exhaust the client's pool (redis-py's default is 100 connections,
#: and the reply subscription holds one).
REQUEST_CONNECTIONS = 16
#: Seconds between two "no receivers" warnings for one channel (the rest are counted).
WARN_INTERVAL = 5.0
#: A stream request in one round trip: ``XADD`` only when the stream exists and has a
#: consumer group (-1: no such stream, -2: no group; nothing appended then).
_STREAM_REQUEST = (
    b"if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end "
    b"if #redis.call('XINFO', 'GROUPS', KEYS[1]) == 0 then return -2 end "
    b"return redis.call('XADD', KEYS[1], unpack(ARGV))"
)
_STREAM_REQUEST_SHA = hashlib.sha1(_STREAM_REQUEST).hexdigest().encode()
#: Error replies that say "try again later" rather than "this command is wrong".
_TRANSIENT_REPLIES = ("OOM", "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN")


class RedisBatchError(EmitError):
    """A send or batch failed part-way; what is known about each event is counted.

    Attributes:
        confirmed: Events Redis answered for (stored or published).
        unknown: Events written to a connection that failed before answering: Redis may
            or may not have executed them. Dispytch never re-sends them by itself.
        unsent: Events not written at all (safe to send again).
        refused: Events Redis answered with an error reply.
    """

    def __init__(
        self, message: str, *, confirmed: int, unknown: int, unsent: int, refused: int = 0
    ) -> None:
        super().__init__(message)
        self.confirmed = confirmed
        self.unknown = unknown
        self.unsent = unsent
        self.refused = refused


class RedisBatchTimeoutError(RedisBatchError, EmitTimeoutError):
    """:class:`RedisBatchError` because Redis did not answer within ``delivery_timeout``."""


class _RoundTripFailed(Exception):
    """Internal: a round trip broke after ``answered`` replies (``written`` tells whether
    the commands may have reached Redis)."""

    def __init__(self, cause: BaseException, answered: int, written: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.answered = answered
        self.written = written


class RedisProducer:
    """Publishes events to Redis: Pub/Sub channels and Streams, decided by the route.

    * :class:`~dispytch.redis.RedisEventRoute` -> ``PUBLISH channel`` (at-most-once: a
      channel nobody is subscribed to right now drops the message; see below).
    * :class:`~dispytch.redis.RedisStreamRoute` -> ``XADD stream [MAXLEN ~ n] *``
      (at-least-once with consumer groups).
    * :class:`~dispytch.routes.TopicRoute` -> a channel (``topic_routes="pubsub"``, the
      default) or a stream (``"streams"``, what :class:`RedisStreamProducer` and
      ``redis+streams://`` URLs use).

    A ``redis.asyncio.Redis`` client you pass is usable as soon as it exists (it connects
    on first use), so ``emit`` works without ``emitter.start()``; :meth:`start` only checks
    the server answers (``PING``), so a wrong address fails there rather than on the first
    emit. A producer built from a factory (``from_url``) creates its client in
    :meth:`start`. Before that, and after :meth:`stop`, sends raise
    :class:`~dispytch.errors.NotStartedError` until :meth:`start` is called (again).

    Publishing to a channel with no subscriber is not silent: the number of clients that
    received each message is returned by :meth:`publish` / :meth:`publish_batch` and kept
    in :attr:`last_receivers` / :attr:`last_batch_receivers` after :meth:`send` /
    :meth:`send_batch` (what the emitter calls), messages that reached nobody are counted in
    :attr:`unheard`, a zero is logged at WARNING unless ``warn_no_receivers=False``
    (once per channel every :data:`WARN_INTERVAL` seconds, with the number suppressed),
    and ``on_no_receivers`` is called with each such message.

    Headers and key travel in a small envelope before the payload on Pub/Sub, and as
    entry fields on Streams (see :mod:`dispytch.redis.envelope`).

    Args:
        client: A ``redis.asyncio.Redis`` client, or a callable returning one (called on
            first use). The synchronous ``redis.Redis`` is refused with a TypeError.
        owns_client: Whether :meth:`stop` closes the client (``from_url`` sets it; a
            client you pass stays yours by default). Only :meth:`stop` reads it.
        topic_routes: Where a transport-neutral ``TopicRoute`` goes.
        warn_no_receivers: Log a WARNING when a Pub/Sub message reached nobody.
        on_no_receivers: Called (sync or async) with each Pub/Sub message that reached
            nobody, e.g. to count or store it.
        delivery_timeout: Seconds to wait for Redis to answer one send (or one pipeline
            round trip) before raising :class:`~dispytch.errors.EmitTimeoutError`;
            ``None`` relies on the client's own ``socket_timeout``.

    Attributes:
        last_receivers: Receivers of the most recent Pub/Sub message (``None`` before
            the first). Stream appends do not change it.
        last_batch_receivers: Per message of the most recent send (or batch): receivers,
            ``None`` for stream appends and failed sends.
        unheard: How many Pub/Sub messages reached no subscriber.
    """

    def __init__(
        self,
        client: aredis.Redis | ClientFactory,
        *,
        owns_client: bool = False,
        topic_routes: Literal["pubsub", "streams"] = "pubsub",
        warn_no_receivers: bool = True,
        on_no_receivers: NoReceiversCallback | None = None,
        delivery_timeout: float | None = 10.0,
    ) -> None:
        owner = type(self).__name__
        self._redis: aredis.Redis | None = None
        self._factory: ClientFactory | None = None
        if isinstance(client, aredis.Redis) or not callable(client):
            self._redis = check_async_client(client, owner)
        else:
            self._factory = client
        self.owns_client = owns_client
        if topic_routes not in ("pubsub", "streams"):
            raise ValueError(
                f"topic_routes={topic_routes!r}: use 'pubsub' (TopicRoute -> channel) or "
                "'streams' (TopicRoute -> stream)."
            )
        self._topic_to_stream = topic_routes == "streams"
        self.warn_no_receivers = warn_no_receivers
        self.on_no_receivers = on_no_receivers
        self.delivery_timeout = delivery_timeout
        self.last_receivers: int | None = None
        self.last_batch_receivers: list[int | None] = []
        self.unheard = 0
        self._warned: dict[str, tuple[float, int]] = {}
        self._names: dict[str, bytes] = {}
        self._stopped = False
        # Request/reply: the requester's callback, this producer's one reply channel and
        # the PubSub (its own connection from the client's pool) subscribed to it.
        self._deliver_reply: ReplyHandler | None = None
        self._reply_channel = new_reply_channel()
        self._reply_pubsub: PubSub | None = None
        self._reply_reader: asyncio.Task[None] | None = None
        self._reply_lock: asyncio.Lock | None = None
        self._request_slots: asyncio.Semaphore | None = None
        self._sending: set[asyncio.Task[None]] = set()

    #: The options model ``from_url`` reads (with :data:`PRODUCER_FIELDS` taken from it).
    options_model: type[TransportOptions] = RedisOptions

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A producer that owns its client, from ``redis://`` / ``rediss://``.

        Options (:class:`~dispytch.redis._options.RedisOptions`) come from the query or
        the keyword arguments; consumer options in the query are ignored (one URL may
        configure both sides); other query parameters go to redis-py.
        """
        extra = {k: options.pop(k) for k in ("on_no_receivers",) if k in options}
        redis_url, opts = split_url(url, cls.options_model, options)
        return cls(
            lambda: client_from_url(redis_url),
            owns_client=True,
            **extra,
            **fields_of(opts, PRODUCER_FIELDS),
        )

    @property
    def redis(self) -> aredis.Redis:
        """The client this producer publishes through (created now from a factory)."""
        if self._redis is None:
            assert self._factory is not None
            self._redis = check_async_client(self._factory(), type(self).__name__)
        return self._redis

    async def start(self) -> None:
        """Check the connection (``PING``) so a wrong address fails here, not on emit.

        Raises:
            EmitError: When Redis cannot be reached.
        """
        client = self.redis
        try:
            await self._timed(client.ping())
        except (TimeoutError, RedisError, OSError) as exc:
            raise EmitError(
                f"Cannot reach Redis at {where(client)}: {exc}.\n"
                "Is the server running and the URL right?"
            ) from exc
        self._stopped = False

    async def stop(self) -> None:
        """Refuse further sends; end the reply subscription; close the client only if
        this producer owns it."""
        self._stopped = True
        await self._close_replies()
        if self.owns_client and self._redis is not None:
            client = self._redis
            if self._factory is not None:
                self._redis = None  # start() makes a new one
            await client.aclose()

    async def send(self, message: OutgoingMessage) -> None:
        """Publish one message and wait for Redis to answer (the Producer protocol).

        Its receivers are in :attr:`last_receivers` afterwards; :meth:`publish` returns
        them.

        Raises:
            NotStartedError: After :meth:`stop`.
            EmitTimeoutError: Redis did not answer within ``delivery_timeout``.
            EmitRejectedError: Redis refused the command (wrong type, ...).
            EmitError: The connection failed (the message says whether the event may
                have been stored).
        """
        await self._publish((message,))

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish many messages in pipelined round trips (no transaction).

        Every round trip is attempted while the connection holds; a refused command
        does not stop the others. Receivers per message are in
        :attr:`last_batch_receivers`; :meth:`publish_batch` returns them.

        Raises:
            NotStartedError: After :meth:`stop`.
            RedisBatchError: The connection failed part-way: the error counts what was
                confirmed, what may or may not have been stored and what was not sent
                (a :class:`RedisBatchTimeoutError` when Redis did not answer in time).
            EmitRejectedError: Redis refused one of the commands.
        """
        await self._publish(messages)

    async def publish(self, message: OutgoingMessage) -> int | None:
        """:meth:`send`, returning how many clients received a Pub/Sub message.

        Returns:
            The receivers (0 when nobody was subscribed); ``None`` for a stream append.
        """
        return (await self._publish((message,)))[0]

    async def publish_batch(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        """:meth:`send_batch`, returning the receivers of each message (``None`` for
        stream appends)."""
        return await self._publish(messages)

    async def _publish(self, messages: Sequence[OutgoingMessage]) -> list[int | None]:
        client = self._redis
        if self._stopped or client is None:
            # Stopped, or built from a factory (from_url) and never started.
            raise NotStartedError(self._not_started())
        out: list[int | None] = []
        refused: EmitError | None = None
        refused_count = 0
        total = len(messages)
        for start in range(0, total, PIPELINE_SIZE):
            chunk = messages[start : start + PIPELINE_SIZE]
            commands = [self._command(message) for message in chunk]
            try:
                replies = await self._round_trip(client, commands)
            except _RoundTripFailed as failed:
                self.last_batch_receivers = out + [None] * (total - len(out))
                raise self._partial(failed, chunk, start, total, refused_count) from (failed.cause)
            for message, command, reply in zip(chunk, commands, replies, strict=True):
                if isinstance(reply, ResponseError):
                    refused_count += 1
                    out.append(None)
                    if refused is None:
                        refused = self._refused(message, reply)
                elif command[0] == b"PUBLISH":
                    await self._received(message, reply)
                    out.append(reply)
                else:
                    out.append(None)
        self.last_batch_receivers = out
        if refused is not None:
            raise refused
        return out

    # ----------------------------------------------------------------- request/reply
    @property
    def reply_channel(self) -> str:
        """This producer's reply channel (``dispytch.reply.<uuid>``): one per producer,
        whatever the number of outstanding requests."""
        return self._reply_channel

    async def open_replies(self, deliver: ReplyHandler) -> None:
        """Request/reply: replies for this producer go to ``deliver``.

        ``SUBSCRIBE`` to this producer's reply channel on a PubSub of its client (a
        connection of its own, so reading replies never holds up a publish), and wait
        until Redis confirmed it: a reply published after this returns is received.
        redis-py resubscribes when that connection drops; replies published while it is
        down are lost (their callers time out).

        Raises:
            NotStartedError: The producer is not started.
            EmitError: Redis did not confirm the subscription.
        """
        self._deliver_reply = deliver
        await self._ensure_replies()

    async def send_request(self, message: OutgoingMessage) -> None:
        """Publish one request with this producer's reply channel in ``dispytch-reply-to``.

        A Pub/Sub request (``PUBLISH``) that reached no subscriber raises
        :class:`~dispytch.cqrs.errors.NoRouteError`. ``XADD`` cannot tell whether anyone
        reads a stream, so a stream request is a small Lua script (``EVALSHA``, one round
        trip) that appends only to a stream with a consumer group: a stream that does not
        exist or has no group raises ``NoRouteError`` (nothing is appended). A group means
        a service created it, not that a consumer of it is running now: such a request
        waits in the stream and its caller times out; a consumer that reads it after its
        deadline answers ``expired``.

        Raises:
            NoRouteError: Nothing can receive the request; raised at once.
            NotStartedError, EmitTimeoutError, EmitRejectedError, EmitError: As ``send``.
        """
        if self._deliver_reply is None:
            raise NotStartedError("open_replies() was not called before send_request().")
        client = self._redis
        if self._stopped or client is None:
            raise NotStartedError(self._not_started())
        await self._ensure_replies()
        headers = dict(message.headers)
        headers[HEADER_REPLY_TO] = self._reply_channel
        request = OutgoingMessage(message.route, message.payload, headers, message.key)
        # The send runs in a task of its own: cancelling the caller is local (the
        # request still goes out, whole), and never interrupts a round trip half-way.
        # The task hands its outcome to ``sent`` itself (one wake-up less than shield()).
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[None] = loop.create_future()
        task = loop.create_task(self._send_in_turn(client, request, sent))
        self._sending.add(task)  # a strong reference until it ends (the loop keeps weak)
        task.add_done_callback(self._sending.discard)
        await sent  # cancelling this cancels only ``sent``, never the task

    async def _send_in_turn(
        self, client: aredis.Redis, request: OutgoingMessage, sent: asyncio.Future[None]
    ) -> None:
        if self._request_slots is None:
            self._request_slots = asyncio.Semaphore(REQUEST_CONNECTIONS)
        try:
            async with self._request_slots:
                await self._send_request(client, request)
        except asyncio.CancelledError:  # the loop is shutting down
            sent.cancel()
            raise
        except BaseException as exc:
            if sent.done():  # its caller was cancelled: nobody to tell but the log
                log.debug("A request whose caller was cancelled failed to send: %s", exc)
            else:
                sent.set_exception(exc)
            return
        if not sent.done():
            sent.set_result(None)

    async def _send_request(self, client: aredis.Redis, request: OutgoingMessage) -> None:
        command = self._command(request)
        stream = command[0] == b"XADD"
        if stream:
            # EVALSHA stream_request 1 <stream> <XADD arguments after the key>
            command = (b"EVALSHA", _STREAM_REQUEST_SHA, b"1", *command[1:])
        try:
            (reply,) = await self._round_trip(client, [command])
            if stream and isinstance(reply, NoScriptError):
                # Not cached on this server yet (or flushed): EVAL sends it and caches it.
                command = (b"EVAL", _STREAM_REQUEST, *command[2:])
                (reply,) = await self._round_trip(client, [command])
        except _RoundTripFailed as failed:
            raise self._partial(failed, [request], 0, 1, 0) from failed.cause
        if isinstance(reply, ResponseError):
            raise self._refused(request, reply)
        if stream and reply in (-1, -2):
            name = command[3].decode("utf-8", "replace")
            raise NoRouteError(
                f"Redis stream {name!r} "
                + ("does not exist" if reply == -1 else "has no consumer group")
                + ", so the request cannot be received.\nStart a dispatcher with a "
                "handler for it (its consumer group on that stream) first."
            )
        if command[0] == b"PUBLISH" and not reply:
            raise NoRouteError(
                f"No client is subscribed to Redis channel {command[1].decode()!r}, so the "
                "request cannot be received.\nStart a dispatcher with a handler for it "
                "(subscribed to that channel) first."
            )

    async def _ensure_replies(self) -> None:
        """Subscribe to the reply channel once (again after :meth:`stop` and
        :meth:`start`); concurrent first requests share one subscription."""
        reader = self._reply_reader
        if reader is not None and not reader.done():
            return
        if self._reply_lock is None:
            self._reply_lock = asyncio.Lock()
        async with self._reply_lock:
            reader = self._reply_reader
            if reader is not None and not reader.done():
                return
            client = self._redis
            if self._stopped or client is None:
                raise NotStartedError(self._not_started())
            await self._close_replies()
            ps = client.pubsub()
            try:
                async with asyncio.timeout(self.delivery_timeout or 10.0):
                    await ps.subscribe(self._reply_channel)
                    while True:
                        confirm = await ps.get_message(timeout=1.0)
                        if confirm is not None and confirm["type"] == "subscribe":
                            break
            except (RedisError, OSError, TimeoutError) as exc:
                await ps.aclose()
                raise EmitError(
                    f"Could not subscribe to the reply channel {self._reply_channel!r} at "
                    f"{where(client)} ({type(exc).__name__}: {exc}).\n"
                    "Is Redis reachable? The request was not sent."
                ) from exc
            except BaseException:
                await ps.aclose()  # cancelled while subscribing: nothing is left open
                raise
            self._reply_pubsub = ps
            self._reply_reader = asyncio.get_running_loop().create_task(
                self._read_replies(ps), name="dispytch-redis-replies"
            )
            self._reply_reader.add_done_callback(_reader_failed)

    async def _read_replies(self, ps: PubSub) -> None:
        """Hand every reply on the reply channel to the requester until stopped."""
        backoff = Backoff(initial=0.1, cap=5.0, jitter=0.2)
        while True:
            conn = ps.connection
            try:
                # As the Pub/Sub consumer reads: the connection's public read_response
                # while it is up (no get_message timer and retry wrapper per reply),
                # PubSub.parse_response (which reconnects and resubscribes) otherwise.
                if conn is not None and conn.is_connected and not conn.health_check_interval:
                    try:
                        response = await conn.read_response(
                            timeout=math.inf, disconnect_on_error=False, push_request=True
                        )
                    except (RedisError, OSError):
                        await conn.disconnect()
                        raise
                else:
                    response = await ps.parse_response(block=True)
            except (RedisError, OSError) as exc:
                delay = backoff.next()
                log.warning(
                    "Redis reply subscription failed (%s: %s); resubscribing in %.1fs. "
                    "Replies published meanwhile are lost (their callers time out).",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if (
                not isinstance(response, list)  # RESP3 push frames are a list subclass
                or len(response) < 3
                or response[0] != b"message"
                or type(response[2]) is not bytes
            ):
                continue  # (un)subscribe confirmations, pongs, other push frames
            try:
                payload, headers, _ = unpack(response[2])
            except ValueError as exc:
                log.error("Dropped a malformed reply on %r: %s", self._reply_channel, exc)
                continue
            deliver = self._deliver_reply
            if deliver is not None:
                deliver(Message(payload, route=self._reply_channel, headers=headers))

    async def _close_replies(self) -> None:
        reader, self._reply_reader = self._reply_reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        ps, self._reply_pubsub = self._reply_pubsub, None
        if ps is not None:
            try:
                async with asyncio.timeout(1.0):
                    await ps.aclose()
            except (RedisError, OSError, TimeoutError):
                if ps.connection is not None:
                    await ps.connection.disconnect(nowait=True)

    def _command(self, message: OutgoingMessage) -> tuple[Any, ...]:
        route = message.route
        if type(route) is RedisEventRoute or not self._is_stream(route):
            channel = self._encoded(self._channel_of(route))
            return (b"PUBLISH", channel, pack(message.payload, message.headers, message.key))
        stream, maxlen, approximate = self._stream_of(route)
        args: list[Any] = [b"XADD", self._encoded(stream)]
        if maxlen is not None:
            args += [b"MAXLEN", b"~" if approximate else b"=", b"%d" % maxlen]
        args.append(b"*")
        for name, value in stream_fields(message.payload, message.headers, message.key).items():
            args.append(name)
            args.append(value)
        return tuple(args)

    def _encoded(self, name: str) -> bytes:
        raw = self._names.get(name)
        if raw is None:
            raw = name.encode()
            if len(self._names) < 10_000:
                self._names[name] = raw
        return raw

    async def _round_trip(self, client: aredis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write ``commands`` on one pooled connection and read one reply each.

        Error replies come back as :class:`ResponseError` values. Anything else that
        fails raises :class:`_RoundTripFailed` with the replies read so far; the
        commands are never written a second time.
        """
        pool = client.connection_pool
        try:
            async with asyncio.timeout(self.delivery_timeout):
                conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError) as exc:
            raise _RoundTripFailed(exc, 0, written=False) from exc
        replies: list[Any] = []
        written = False
        # Under delivery_timeout the round trip has its deadline already: no timer per
        # reply (math.inf tells redis-py not to apply socket_timeout to each read).
        read_timeout = math.inf if self.delivery_timeout is not None else None
        try:
            async with asyncio.timeout(self.delivery_timeout):
                # Every argument is bytes already: hiredis packs them in C (what redis-py's
                # own packer ends in, without its per-argument encoding pass).
                packed = b"".join([pack_command(command) for command in commands])
                written = True  # a failing write may still have reached Redis in part
                await conn.send_packed_command(packed, check_health=False)
                for _ in commands:
                    try:
                        replies.append(await conn.read_response(timeout=read_timeout))
                    except ResponseError as exc:
                        replies.append(exc)
            return replies
        except (RedisError, OSError, TimeoutError) as exc:
            await conn.disconnect(nowait=True)
            raise _RoundTripFailed(exc, len(replies), written) from exc
        except BaseException:
            # Cancelled mid-read: the connection's state is unknown.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    def _partial(
        self,
        failed: _RoundTripFailed,
        chunk: Sequence[OutgoingMessage],
        start: int,
        total: int,
        refused: int,
    ) -> RedisBatchError:
        """The error for a round trip that broke: what is known about each event."""
        answered = failed.answered
        confirmed = start + answered - refused
        unknown = len(chunk) - answered if failed.written else 0
        unsent = total - start - answered - unknown
        cause = failed.cause
        timed_out = isinstance(cause, TimeoutError | RedisTimeoutError)
        what = (
            f"Redis did not answer within {self.delivery_timeout}s"
            if timed_out
            else f"the connection to Redis at {where(self.redis)} failed "
            f"({type(cause).__name__}: {cause})"
        )
        if total == 1:
            state = "it may or may not have been stored" if unknown else "it was not sent"
            text = (
                f"Emitting the event for {chunk[0].route.address!r} failed: {what}; "
                f"{state}.\n"
                + (
                    "Dispytch does not re-send it by itself: emit again only if a duplicate "
                    "is acceptable."
                    if unknown
                    else "Check that Redis is reachable and emit again."
                )
            )
        else:
            text = (
                f"Emitting a batch of {total} events failed part-way: {what}. "
                f"{confirmed} confirmed, {unknown} may or may not have been stored, "
                f"{unsent} not sent"
                + (f", {refused} refused" if refused else "")
                + ".\nDispytch does not re-send any of them by itself: re-emit the unsent "
                "ones, and the uncertain ones only if duplicates are acceptable."
            )
        error_type = RedisBatchTimeoutError if timed_out else RedisBatchError
        return error_type(
            text, confirmed=confirmed, unknown=unknown, unsent=unsent, refused=refused
        )

    @staticmethod
    def _refused(message: OutgoingMessage, reply: ResponseError) -> EmitError:
        text = str(reply)
        where_to = message.route.address
        if text.startswith(_TRANSIENT_REPLIES):
            error: EmitError = EmitError(
                f"Redis could not take the event for {where_to!r} now: {text}.\n"
                "It was not stored; emit it again once Redis recovers."
            )
        else:
            error = EmitRejectedError(
                f"Redis refused the event for {where_to!r}: {text}.\n"
                "Sending it again will not help: check the route (a key of another type?)."
            )
        error.__cause__ = reply
        return error

    # ------------------------------------------------------------------ internals
    async def _timed(self, aw: Awaitable[Any]) -> Any:
        if self.delivery_timeout is None:
            return await aw
        async with asyncio.timeout(self.delivery_timeout):
            return await aw

    async def _received(self, message: OutgoingMessage, receivers: int) -> None:
        self.last_receivers = receivers
        if receivers:
            return
        self.unheard += 1
        if self.warn_no_receivers:
            self._warn_unheard(message.route.address)
        if self.on_no_receivers is not None:
            result = self.on_no_receivers(message)
            if inspect.isawaitable(result):
                await result

    def _warn_unheard(self, channel: str) -> None:
        """WARNING for a message nobody received; per channel at most every few seconds."""
        now = time.monotonic()
        last = self._warned.get(channel)
        if last is not None and now - last[0] < WARN_INTERVAL:
            self._warned[channel] = (last[0], last[1] + 1)
            return
        more = f" ({last[1]} more since the last warning)" if last and last[1] else ""
        log.warning(
            "Published to Redis channel %r but no client is subscribed: the event is gone "
            "(Pub/Sub keeps nothing)%s. Subscribe first, or use RedisStreamRoute for durable "
            "delivery; pass warn_no_receivers=False to silence this.",
            channel,
            more,
        )
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned[channel] = (now, 0)

    def _is_stream(self, route: EventRoute) -> bool:
        if isinstance(route, RedisStreamRoute):
            return True
        if isinstance(route, RedisEventRoute):
            return False
        if isinstance(route, TopicRoute):
            return self._topic_to_stream
        raise TypeError(
            f"{type(self).__name__} cannot publish to {route!r}. Use RedisEventRoute(channel=...) "
            "for Pub/Sub, RedisStreamRoute(stream=...) for Streams, or TopicRoute(topic=...)."
        )

    @staticmethod
    def _channel_of(route: EventRoute) -> str:
        if isinstance(route, RedisEventRoute):
            return route.channel
        return route.topic  # type: ignore[attr-defined, no-any-return]

    @staticmethod
    def _stream_of(route: EventRoute) -> tuple[str, int | None, bool]:
        if isinstance(route, RedisStreamRoute):
            return route.stream, route.maxlen, route.approximate
        return route.topic, None, True  # type: ignore[attr-defined]

    def _not_started(self) -> str:
        state = "was stopped" if self._stopped else "is not started"
        return (
            f"The {type(self).__name__} {state}: the event was not sent.\n"
            "Call `await emitter.start()` (or use `async with emitter:`) first, or build a "
            "new producer."
        )


def _reader_failed(task: asyncio.Task[None]) -> None:
    """Log a reply reader that ended with an unexpected error (the next request
    subscribes again; replies to the requests outstanding then are lost)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error(
            "The Redis reply reader failed (%s: %s); the next request subscribes again, "
            "and the requests waiting now will time out.",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )


class RedisStreamProducer(RedisProducer):
    """A :class:`RedisProducer` that sends ``TopicRoute`` events to streams (``XADD``).

    What ``redis+streams://`` URLs build. Pub/Sub and stream routes behave as in
    :class:`RedisProducer`.
    """

    options_model = RedisStreamOptions

    def __init__(
        self,
        client: aredis.Redis | ClientFactory,
        *,
        owns_client: bool = False,
        warn_no_receivers: bool = True,
        on_no_receivers: NoReceiversCallback | None = None,
        delivery_timeout: float | None = 10.0,
    ) -> None:
        super().__init__(
            client,
            owns_client=owns_client,
            topic_routes="streams",
            warn_no_receivers=warn_no_receivers,
            on_no_receivers=on_no_receivers,
            delivery_timeout=delivery_timeout,
        )
