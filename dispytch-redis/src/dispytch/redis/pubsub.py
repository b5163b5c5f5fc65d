"""The Redis Pub/Sub consumer (at-most-once)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dispytch.errors import NotStartedError
from dispytch.redis._client import (
    check_async_client,
    check_async_pubsub,
    client_from_url,
    split_url,
    to_bool,
)
from dispytch.redis._inbox import Inbox, close_on_failure
from dispytch.redis._resp import RespError, parse_frames
from dispytch.redis.envelope import unpack
from dispytch.redis.routes import RedisEventSubscription, RedisStreamSubscription
from dispytch.routes import EventSubscription, TopicSubscription
from dispytch.transport import Message

import redis.asyncio as aredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("dispytch.redis")

__all__ = ["RedisConsumer"]

_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ordered": to_bool,
    "max_buffered": int,
    "subscribe_timeout": float,
}
_MESSAGE = b"message"
_PMESSAGE = b"pmessage"
_CONFIRMATIONS = (b"subscribe", b"psubscribe")


class RedisConsumer:
    """Receives Redis Pub/Sub messages: ``SUBSCRIBE`` for names, ``PSUBSCRIBE`` for patterns.

    **At-most-once.** Redis delivers a message only to clients subscribed when it was
    published and keeps no copy, so:

    * :meth:`ack` and :meth:`nack` do nothing on the broker. A message whose handling
      failed is logged (by the dispatcher, and here on ``nack``) and gone: retries can
      happen in-process (the Retry middleware) but never through Redis, and
      ``nack(requeue=True)`` cannot redeliver. A DeadLetter middleware still publishes
      it elsewhere, which is the way to keep failed Pub/Sub events.
    * Messages published while the consumer is disconnected or before :meth:`start` are
      lost, and so are the ones still buffered here when :meth:`stop` is called (their
      number is logged).

    Use :class:`~dispytch.redis.RedisStreamConsumer` when that is not acceptable.

    ``Message.route`` is the concrete channel; a pattern subscription's glob is in
    ``Message.metadata["pattern"]``. Headers and key come out of the envelope
    (:mod:`dispytch.redis.envelope`); a message without one is a bare payload.

    Args:
        pubsub: A ``redis.asyncio`` PubSub (``client.pubsub()``) — possibly already
            subscribed by you — or a ``redis.asyncio.Redis`` client to create one from.
            You keep owning what you pass: :meth:`close` unsubscribes what this consumer
            subscribed but closes neither. The synchronous client is refused.
        ordered: Handle the messages of one channel one after another, in order (the
            channel is the ``Message.lane``). Otherwise they may be handled concurrently.
        max_buffered: Messages read ahead of the handlers; beyond that the reader stops
            reading and Redis buffers (up to its ``client-output-buffer-limit pubsub``,
            after which Redis disconnects a consumer that is too slow).
        subscribe_timeout: Seconds :meth:`start` waits for Redis to confirm every
            subscription; once it returns, nothing published afterwards is missed.
    """

    def __init__(
        self,
        pubsub: PubSub | aredis.Redis,
        *,
        ordered: bool = False,
        max_buffered: int = 2000,
        subscribe_timeout: float = 10.0,
    ) -> None:
        owner = type(self).__name__
        self._owned_client: aredis.Redis | None = None
        if isinstance(pubsub, aredis.Redis):
            client = check_async_client(pubsub, owner)
            self._pubsub = client.pubsub()
            self._owns_pubsub = True
        else:
            self._pubsub = check_async_pubsub(pubsub, owner)
            self._owns_pubsub = False
        self._ordered = ordered
        self._subscribe_timeout = subscribe_timeout
        self._inbox: Inbox[Message] = Inbox(max_buffered)
        self._channels: dict[str, None] = {}
        self._patterns: dict[str, None] = {}
        self._names: dict[bytes, str] = {}
        self._meta: dict[bytes | None, Mapping[str, Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._buf = bytearray()
        self._fast = True
        self._running = False
        self._started = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build a consumer that owns its client, from ``redis://`` / ``rediss://``.

        ``?ordered=true``, ``?max_buffered=N`` and ``?subscribe_timeout=S`` are read from
        the query; other query parameters go to redis-py.
        """
        from dispytch.redis import producer

        redis_url, options = split_url(url, options, _URL_OPTIONS, producer._URL_OPTIONS)
        client = client_from_url(redis_url)
        consumer = cls(client, **options)
        consumer._owned_client = client
        return consumer

    @property
    def pubsub(self) -> PubSub:
        """The PubSub this consumer reads."""
        return self._pubsub

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        """Collect channels and patterns to subscribe to when :meth:`start` runs.

        Raises:
            TypeError: For a Streams or another transport's subscription.
            RuntimeError: When called after :meth:`start`.
        """
        if self._started:
            raise RuntimeError(
                "RedisConsumer.subscribe() must be called before start(); register every "
                "handler before starting the dispatcher."
            )
        for sub in subscriptions:
            if isinstance(sub, RedisStreamSubscription):
                raise TypeError(
                    f"{sub!r} reads a Redis Stream, but RedisConsumer consumes Pub/Sub. Use "
                    "RedisStreamConsumer (redis+streams://) for streams."
                )
            if not isinstance(sub, RedisEventSubscription | TopicSubscription):
                raise TypeError(
                    f"RedisConsumer cannot consume {type(sub).__name__}. Use "
                    "RedisEventSubscription(channel=...) or TopicSubscription(topic=...)."
                )
            pattern = sub.compiled
            if pattern.is_static:
                self._channels[pattern.pattern] = None
            else:
                self._patterns[pattern.glob] = None

    async def start(self) -> None:
        """Subscribe and wait until Redis confirmed every subscription.

        Raises:
            ValueError: When there is nothing to subscribe to.
            TimeoutError: When Redis did not confirm within ``subscribe_timeout``.
        """
        if self._running:
            return
        if self._started:
            raise RuntimeError(
                "This RedisConsumer was stopped; a consumer cannot be restarted. Create a new one."
            )
        ps = self._pubsub
        if not (self._channels or self._patterns or ps.subscribed):
            raise ValueError(
                "RedisConsumer has nothing to subscribe to. Register a handler with "
                "RedisEventSubscription(channel=...) (or pass a PubSub you subscribed)."
            )
        expected: set[tuple[bytes, bytes]] = set()
        if self._channels:
            await ps.subscribe(*self._channels)
            expected.update((b"subscribe", c.encode()) for c in self._channels)
        if self._patterns:
            await ps.psubscribe(*self._patterns)
            expected.update((b"psubscribe", p.encode()) for p in self._patterns)
        deadline = time.monotonic() + self._subscribe_timeout
        while expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = sorted(n.decode() for _, n in expected)
                raise TimeoutError(
                    f"Redis did not confirm the subscriptions to {names} within "
                    f"{self._subscribe_timeout}s. Is the server overloaded or unreachable?"
                )
            response = await ps.parse_response(block=False, timeout=remaining)
            if response is None:
                continue
            kind = response[0]
            if kind in _CONFIRMATIONS:
                expected.discard((kind, response[1]))
            else:
                self._handle(response)
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop(), name="dispytch-redis-pubsub-reader"
        )
        self._reader.add_done_callback(
            close_on_failure(self._inbox, "The Redis Pub/Sub reader", log)
        )
        self._started = True
        self._running = True

    def _handle(self, response: Any) -> None:
        kind = response[0]
        if kind == _MESSAGE:
            msg = self._message(response[1], response[2], None)
        elif kind == _PMESSAGE:
            msg = self._message(response[2], response[3], response[1])
        else:
            return  # (un)subscribe confirmations, pongs: nothing to deliver
        if msg is not None:
            self._inbox.put(msg)  # also during start(): kept for listen()

    def _message(self, channel: bytes, data: bytes, pattern: bytes | None) -> Message | None:
        route = self._names.get(channel)
        if route is None:
            route = channel.decode("utf-8", "replace")
            if len(self._names) < 10_000:
                self._names[channel] = route
        try:
            payload, headers, key = unpack(data)
        except ValueError as exc:
            log.error("Dropped a malformed message on Redis channel %r: %s", route, exc)
            return None
        meta = self._meta.get(pattern)
        if meta is None:
            meta = self._meta[pattern] = MappingProxyType(
                {"transport": "redis-pubsub", "pattern": pattern.decode() if pattern else None}
            )
        return Message(
            payload,
            route=route,
            headers=headers,
            key=key,
            metadata=meta,
            lane=route if self._ordered else None,
        )

    async def _read_loop(self) -> None:
        """Read frames until stopped, reconnecting (and resubscribing) after failures.

        Fast path: complete frames are parsed straight from the connection's stream
        (:func:`~dispytch.redis._resp.parse_frames`), several per read. It falls back to
        redis-py's ``parse_response`` to reconnect, and for good if the bytes are ever
        not what it expects.
        """
        ps = self._pubsub
        inbox = self._inbox
        handle = self._handle
        buf = self._buf
        delay = 0.1
        while self._running:
            try:
                conn = ps.connection
                reader = getattr(conn, "_reader", None)
                if not (self._fast and isinstance(reader, asyncio.StreamReader)) or not (
                    conn is not None and conn.is_connected
                ):
                    buf.clear()
                    response = await ps.parse_response(block=True)  # reconnects if needed
                    if response is not None:
                        handle(response)
                else:
                    chunk = await reader.read(65536)
                    if not chunk:
                        buf.clear()
                        await conn.disconnect()
                        raise RedisConnectionError("Redis closed the Pub/Sub connection")
                    buf += chunk
                    consumed = parse_frames(buf, handle)
                    if consumed:
                        del buf[:consumed]
            except RespError as exc:
                log.warning("Unexpected Pub/Sub frame (%s); using redis-py's parser.", exc)
                self._fast = False
                buf.clear()
                if ps.connection is not None:
                    await ps.connection.disconnect()
                continue
            except (RedisError, OSError) as exc:
                if not self._running:
                    return
                log.warning(
                    "Redis Pub/Sub connection failed (%s: %s); reconnecting in %.1fs. "
                    "Messages published meanwhile are lost (Pub/Sub is at-most-once).",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            if inbox.full:
                await inbox.wait_space()

    async def listen(self) -> AsyncIterator[Message]:
        """Yield messages until :meth:`stop`.

        Raises:
            NotStartedError: Before :meth:`start`.
        """
        if not self._running:
            raise NotStartedError("The RedisConsumer is not started; call start() first.")
        async for msg in self._inbox.items():
            yield msg

    async def ack(self, message: Message) -> None:
        """Nothing to do: Pub/Sub has no acknowledgements."""

    async def nack(self, message: Message, *, requeue: bool) -> None:
        """Nothing to do on the broker: Pub/Sub cannot redeliver or reject.

        With ``requeue=True`` a WARNING says the message is gone.
        """
        if requeue:
            log.warning(
                "Redis Pub/Sub cannot redeliver: the message on channel %r was not handled "
                "and is gone (at-most-once). Use Redis Streams for redelivery.",
                message.route,
            )

    async def stop(self) -> None:
        """Stop reading; ``listen`` ends now. Buffered messages are dropped (and counted)."""
        self._running = False
        self._inbox.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            # Safe: redis-py's parser keeps partial reads and resumes on the next call.
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if self._buf:
            # The fast reader stopped inside a frame: the connection's stream is no longer
            # at a frame boundary. Drop it; redis-py reconnects and resubscribes on next use.
            self._buf.clear()
            if self._pubsub.connection is not None:
                await self._pubsub.connection.disconnect()
        dropped = self._inbox.drain()
        if dropped:
            log.warning(
                "RedisConsumer stopped with %d received message(s) not yet handled; they are "
                "dropped (Pub/Sub is at-most-once).",
                len(dropped),
            )

    async def close(self) -> None:
        """Unsubscribe; close the PubSub and client only if this consumer created them."""
        await self.stop()
        ps = self._pubsub
        try:
            if self._owns_pubsub:
                await ps.aclose()  # type: ignore[no-untyped-call]
            elif ps.connection is not None:
                if self._channels:
                    await ps.unsubscribe(*self._channels)
                if self._patterns:
                    await ps.punsubscribe(*self._patterns)
        except (RedisError, OSError) as exc:
            log.warning("Unsubscribing from Redis failed: %s", exc)
        if self._owned_client is not None:
            await self._owned_client.aclose()
            self._owned_client = None
