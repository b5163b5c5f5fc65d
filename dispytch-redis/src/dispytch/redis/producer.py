"""Producers for Redis Pub/Sub (``PUBLISH``) and Redis Streams (``XADD``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from dispytch.errors import EmitError, EmitTimeoutError, NotStartedError
from dispytch.redis._client import (
    check_async_client,
    client_from_url,
    split_url,
    to_bool,
)
from dispytch.redis._resp import ClosedEarly, ErrorReply, RespError, bulk, read_replies
from dispytch.redis.envelope import pack, stream_fields
from dispytch.redis.routes import RedisEventRoute, RedisStreamRoute
from dispytch.routes import EventRoute, TopicRoute
from dispytch.transport import OutgoingMessage

import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("dispytch.redis")

__all__ = ["RedisProducer", "RedisStreamProducer"]

NoReceiversCallback = Callable[[OutgoingMessage], Awaitable[Any] | Any]

#: Commands per pipeline round trip in :meth:`RedisProducer.send_batch`.
PIPELINE_SIZE = 1000
#: Seconds between two "no receivers" warnings for one channel (the rest are counted).
WARN_INTERVAL = 5.0


def _opt_float(value: str) -> float | None:
    return None if value.strip().lower() in ("", "none") else float(value)


_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "warn_no_receivers": to_bool,
    "delivery_timeout": _opt_float,
}


class RedisProducer:
    """Publishes events to Redis: Pub/Sub channels and Streams, decided by the route.

    * :class:`~dispytch.redis.RedisEventRoute` -> ``PUBLISH channel`` (at-most-once: a
      channel nobody is subscribed to right now drops the message; see below).
    * :class:`~dispytch.redis.RedisStreamRoute` -> ``XADD stream [MAXLEN ~ n] *``
      (at-least-once with consumer groups).
    * :class:`~dispytch.routes.TopicRoute` -> a channel (``topic_routes="pubsub"``, the
      default) or a stream (``"streams"``, what :class:`RedisStreamProducer` and
      ``redis+streams://`` URLs use).

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
        redis: A ``redis.asyncio.Redis`` client. You keep owning it: :meth:`stop` does
            not close it. The synchronous ``redis.Redis`` is refused with a TypeError.
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
        redis: aredis.Redis,
        *,
        topic_routes: Literal["pubsub", "streams"] = "pubsub",
        warn_no_receivers: bool = True,
        on_no_receivers: NoReceiversCallback | None = None,
        delivery_timeout: float | None = 10.0,
    ) -> None:
        self._redis = check_async_client(redis, type(self).__name__)
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
        self._prefixes: dict[str, bytes] = {}
        self._xadd_prefixes: dict[tuple[str, int | None, bool], tuple[bytes, int]] = {}
        self._owns_client = False
        self._running = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a producer that owns its client, from ``redis://`` / ``rediss://``.

        ``?warn_no_receivers=false`` and ``?delivery_timeout=5`` are read from the query;
        other query parameters go to redis-py (``?socket_timeout=5``).
        """
        from dispytch.redis import pubsub, streams

        consumer_options = {*pubsub._URL_OPTIONS, *streams._URL_OPTIONS}
        redis_url, options = split_url(url, options, _URL_OPTIONS, consumer_options)
        producer = cls(client_from_url(redis_url), **options)
        producer._owns_client = True
        return producer

    @property
    def redis(self) -> aredis.Redis:
        """The client this producer publishes through."""
        return self._redis

    async def start(self) -> None:
        """Check the connection (``PING``) so a wrong address fails here, not on emit.

        Raises:
            EmitError: When Redis cannot be reached.
        """
        try:
            await self._timed(self._redis.ping())
        except (TimeoutError, RedisError, OSError) as exc:
            raise EmitError(
                f"Cannot reach Redis at {_where(self._redis)}: {exc}. Is the server "
                "running and the URL right?"
            ) from exc
        self._running = True

    async def stop(self) -> None:
        """Stop accepting sends; close the client only if this producer created it."""
        self._running = False
        if self._owns_client:
            await self._redis.aclose()

    async def send(self, message: OutgoingMessage) -> None:
        """Publish one message and wait for Redis to answer (the Producer protocol).

        Its receivers are in :attr:`last_receivers` afterwards; :meth:`publish` returns
        them.

        Raises:
            NotStartedError: Before :meth:`start` or after :meth:`stop`.
            EmitTimeoutError: Redis did not answer within ``delivery_timeout``.
            EmitError: Redis refused the command or the connection failed.
        """
        await self._publish((message,))

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish many messages in pipelined round trips (no transaction).

        Every message is attempted; the first failure is raised afterwards. Receivers
        per message are in :attr:`last_batch_receivers`; :meth:`publish_batch` returns
        them.

        Raises:
            NotStartedError: Before :meth:`start` or after :meth:`stop`.
            EmitTimeoutError: A round trip was not answered within ``delivery_timeout``.
            EmitError: Redis refused one of the commands.
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
        if not self._running:
            raise NotStartedError(self._not_started())
        out: list[int | None] = []
        first_error: BaseException | None = None
        for start in range(0, len(messages), PIPELINE_SIZE):
            chunk = messages[start : start + PIPELINE_SIZE]
            parts: list[bytes] = []
            kinds: list[bool] = []
            for message in chunk:
                is_pub = self._encode(message, parts)
                kinds.append(is_pub)
            try:
                replies = await self._timed(self._round_trip(b"".join(parts), len(chunk)))
            except (TimeoutError, RedisTimeoutError) as exc:
                error: EmitError = EmitTimeoutError(
                    f"Redis did not answer {_events(len(chunk), chunk)} within "
                    f"{self.delivery_timeout}s; they may or may not have been published."
                )
                error.__cause__ = exc
                first_error = first_error or error
                out.extend([None] * len(chunk))
                continue
            except (RedisError, OSError, RespError) as exc:
                error = EmitError(
                    f"Redis refused {_events(len(chunk), chunk)}: {type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
                first_error = first_error or error
                out.extend([None] * len(chunk))
                continue
            for message, is_pub, reply in zip(chunk, kinds, replies, strict=True):
                if isinstance(reply, ErrorReply):
                    if first_error is None:
                        first_error = EmitError(
                            f"Redis refused the event for {message.route.address!r}: {reply}"
                        )
                        first_error.__cause__ = ResponseError(str(reply))
                    out.append(None)
                elif is_pub:
                    await self._received(message, reply)
                    out.append(reply)
                else:
                    out.append(None)
        self.last_batch_receivers = out
        if first_error is not None:
            raise first_error
        return out

    def _encode(self, message: OutgoingMessage, parts: list[bytes]) -> bool:
        """Append the RESP command for ``message``; True for PUBLISH, False for XADD."""
        route = message.route
        if type(route) is RedisEventRoute or not self._is_stream(route):
            channel = self._channel_of(route)
            prefix = self._prefixes.get(channel)
            if prefix is None:
                prefix = b"*3\r\n$7\r\nPUBLISH\r\n" + bulk(channel.encode())
                if len(self._prefixes) < 10_000:
                    self._prefixes[channel] = prefix
            data = pack(message.payload, message.headers, message.key)
            parts.append(prefix)
            parts.append(b"$%d\r\n" % len(data))
            parts.append(data)
            parts.append(b"\r\n")
            return True
        stream, maxlen, approximate = self._stream_of(route)
        key = (stream, maxlen, approximate)
        cached = self._xadd_prefixes.get(key)
        if cached is None:
            args = [b"XADD", stream.encode()]
            if maxlen is not None:
                args += [b"MAXLEN", b"~" if approximate else b"=", b"%d" % maxlen]
            args.append(b"*")
            cached = (b"".join(bulk(a) for a in args), len(args))
            if len(self._xadd_prefixes) < 10_000:
                self._xadd_prefixes[key] = cached
        prefix, argc = cached
        fields = stream_fields(message.payload, message.headers, message.key)
        parts.append(b"*%d\r\n" % (argc + 2 * len(fields)))
        parts.append(prefix)
        for name, value in fields.items():
            parts.append(bulk(name))
            parts.append(bulk(value))
        return False

    async def _round_trip(self, request: bytes, count: int) -> list[Any]:
        """Send pipelined commands on one pooled connection and read ``count`` replies.

        A connection that fails before any reply was read (typically one the server
        closed while it sat in the pool) is replaced once.
        """
        pool = self._redis.connection_pool
        for attempt in (1, 2):
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(request)
                return await read_replies(conn, count)
            except (ClosedEarly, RedisConnectionError) as exc:
                await conn.disconnect(nowait=True)
                nothing_read = isinstance(exc, RedisConnectionError) or exc.received == 0
                if attempt == 2 or not nothing_read:
                    raise
            except BaseException:
                # Cancelled or failed mid-read: the connection's state is unknown.
                await conn.disconnect(nowait=True)
                raise
            finally:
                await pool.release(conn)
        raise AssertionError("unreachable")  # pragma: no cover

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
        return (
            f"The {type(self).__name__} is not started (or already stopped): the event was not "
            "sent. Call `await emitter.start()` or use `async with emitter:` before emitting."
        )


class RedisStreamProducer(RedisProducer):
    """A :class:`RedisProducer` that sends ``TopicRoute`` events to streams (``XADD``).

    What ``redis+streams://`` URLs build. Pub/Sub and stream routes behave as in
    :class:`RedisProducer`.
    """

    def __init__(
        self,
        redis: aredis.Redis,
        *,
        warn_no_receivers: bool = True,
        on_no_receivers: NoReceiversCallback | None = None,
        delivery_timeout: float | None = 10.0,
    ) -> None:
        super().__init__(
            redis,
            topic_routes="streams",
            warn_no_receivers=warn_no_receivers,
            on_no_receivers=on_no_receivers,
            delivery_timeout=delivery_timeout,
        )


def _events(count: int, chunk: Sequence[OutgoingMessage]) -> str:
    if count == 1:
        return f"the event for {chunk[0].route.address!r}"
    return f"a pipeline of {count} events"


def _where(client: aredis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
