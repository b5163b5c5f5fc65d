"""The Redis Pub/Sub consumer (at-most-once), over redis-py's public PubSub API.

Messages are read with ``PubSub.parse_response`` (hiredis parses when installed): redis-py
reconnects and resubscribes a dropped connection itself (with the client's ``retry=``
settings), and handles RESP3 push frames that are not Pub/Sub messages (client-side
caching invalidations, maintenance notifications). Anything that is not a message this
consumer subscribed to is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dispytch.backoff import Backoff
from dispytch.errors import NotStartedError
from dispytch.redis._client import (
    check_async_client,
    check_async_pubsub,
    client_from_url,
)
from dispytch.redis._inbox import Inbox, close_on_failure
from dispytch.redis._options import PUBSUB_CONSUMER_FIELDS, RedisOptions, fields_of, split_url
from dispytch.redis._replies import ReplyPublisher, reply_address
from dispytch.redis.envelope import unpack
from dispytch.redis.routes import RedisEventSubscription, RedisStreamSubscription
from dispytch.routes import EventSubscription, TopicSubscription
from dispytch.transport import Capabilities, Message

import redis.asyncio as aredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("dispytch.redis")

__all__ = ["RedisConsumer"]

_MESSAGE = b"message"
_PMESSAGE = b"pmessage"
_CONFIRMATIONS = (b"subscribe", b"psubscribe")
#: The read timeout redis-py takes for "block until a message comes" (``math.inf``: the
#: client's ``socket_timeout`` must not cut a quiet subscription).
_IDLE_READ = math.inf

ClientFactory = Callable[[], aredis.Redis]


class RedisConsumer:
    """Receives Redis Pub/Sub messages: ``SUBSCRIBE`` for names, ``PSUBSCRIBE`` for patterns.

    It answers requests (``request_reply``): the reply is published to the requester's
    reply channel (see :meth:`send_reply`).

    **At-most-once.** Redis delivers a message only to clients subscribed when it was
    published and keeps no copy, so:

    * :meth:`ack` and :meth:`nack` do nothing on the broker. A message whose handling
      failed is logged (by the dispatcher, and here on ``nack``) and gone: retries can
      happen in-process (the Retry middleware) but never through Redis, and
      ``nack(requeue=True)`` cannot redeliver (:attr:`capabilities` says
      ``requeue=False``, so the dispatcher does not wait before such a nack). A
      DeadLetter middleware still publishes it elsewhere, which is the way to keep
      failed Pub/Sub events.
    * Messages published while the consumer is disconnected or before :meth:`start` are
      lost, and so are the ones still buffered here when :meth:`stop` is called (their
      number is logged).

    Use :class:`~dispytch.redis.RedisStreamConsumer` when that is not acceptable.

    ``Message.route`` is the concrete channel; a pattern subscription's glob is in
    ``Message.metadata["pattern"]``. Headers and key come out of the envelope
    (:mod:`dispytch.redis.envelope`); a message without one is a bare payload, and a
    malformed envelope is logged and dropped.

    Args:
        pubsub: A ``redis.asyncio`` PubSub (``client.pubsub()``) — possibly already
            subscribed by you —, a ``redis.asyncio.Redis`` client to create one from, or a
            callable returning such a client (called on :meth:`start`). :meth:`close`
            unsubscribes what this consumer subscribed; it closes a PubSub it created,
            and the client only when ``owns_client``.
        owns_client: Whether :meth:`close` closes the client (``from_url`` sets it).
        ordered: Handle the messages of one channel one after another, in order (the
            channel is the ``Message.lane``). Otherwise they may be handled concurrently.
        max_buffered: Messages read ahead of the handlers; beyond that the reader stops
            reading and Redis buffers (up to its ``client-output-buffer-limit pubsub``,
            after which Redis disconnects a consumer that is too slow).
        subscribe_timeout: Seconds :meth:`start` waits for Redis to confirm every
            subscription; once it returns, nothing published afterwards is missed.
        close_timeout: Seconds :meth:`close` spends unsubscribing before giving up on an
            unreachable server.
    """

    def __init__(
        self,
        pubsub: PubSub | aredis.Redis | ClientFactory,
        *,
        owns_client: bool = False,
        ordered: bool = False,
        max_buffered: int = 2000,
        subscribe_timeout: float = 10.0,
        close_timeout: float = 0.75,
    ) -> None:
        owner = type(self).__name__
        self._client: aredis.Redis | None = None
        self._factory: ClientFactory | None = None
        self._pubsub: PubSub | None = None
        self._owns_pubsub = True
        if isinstance(pubsub, aredis.Redis):
            self._client = check_async_client(pubsub, owner)
        elif isinstance(pubsub, PubSub) or not callable(pubsub):
            self._pubsub = check_async_pubsub(pubsub, owner)
            self._owns_pubsub = False
        else:
            self._factory = pubsub
        self.owns_client = owns_client
        self._ordered = ordered
        self._subscribe_timeout = subscribe_timeout
        self.close_timeout = close_timeout
        self.capabilities = Capabilities(
            delivery="at-most-once", ordered_lanes=ordered, requeue=False, request_reply=True
        )
        self._replies = ReplyPublisher()
        self._inbox: Inbox[Message] = Inbox(max_buffered)
        self._channels: dict[str, None] = {}
        self._patterns: dict[str, None] = {}
        self._names: dict[bytes, str] = {}
        self._meta: dict[bytes | None, Mapping[str, Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reply_client: aredis.Redis | None = None
        self._running = False
        self._started = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A consumer that owns its client, from ``redis://`` / ``rediss://``.

        Options (:class:`~dispytch.redis._options.RedisOptions`: ``?ordered=true``,
        ``?max_buffered=N``, ``?subscribe_timeout=S``) come from the query or the keyword
        arguments; producer options are ignored; other query parameters go to redis-py.
        """
        redis_url, opts = split_url(url, RedisOptions, options)
        return cls(
            lambda: client_from_url(redis_url),
            owns_client=True,
            **fields_of(opts, PUBSUB_CONSUMER_FIELDS),
        )

    @property
    def pubsub(self) -> PubSub:
        """The PubSub this consumer reads (created now from the client if needed)."""
        if self._pubsub is None:
            if self._client is None:
                assert self._factory is not None
                self._client = check_async_client(self._factory(), type(self).__name__)
            self._pubsub = self._client.pubsub()
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
                "This RedisConsumer was stopped; a consumer cannot be restarted.\n"
                "Create a new one over the same client or PubSub."
            )
        ps = self.pubsub
        if not (self._channels or self._patterns or ps.subscribed):
            raise ValueError(
                "RedisConsumer has nothing to subscribe to.\n"
                "Register a handler with RedisEventSubscription(channel=...) (or pass a "
                "PubSub you subscribed)."
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
                names = sorted(n.decode("utf-8", "replace") for _, n in expected)
                raise TimeoutError(
                    f"Redis did not confirm the subscriptions to {names} within "
                    f"{self._subscribe_timeout}s.\nIs the server overloaded or unreachable?"
                )
            response = await ps.parse_response(block=False, timeout=remaining)
            if isinstance(response, list) and response and response[0] in _CONFIRMATIONS:
                expected.discard((response[0], response[1]))
            elif response is not None:
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
        if not isinstance(response, list) or len(response) < 3:
            return  # replies to the user's own commands on a RESP3 PubSub, pongs
        kind = response[0]
        if kind == _MESSAGE:
            msg = self._message(response[1], response[2], None)
        elif kind == _PMESSAGE and len(response) >= 4:
            msg = self._message(response[2], response[3], response[1])
        else:
            return  # (un)subscribe confirmations, other push frames: nothing to deliver
        if msg is not None:
            self._inbox.put(msg)  # also during start(): kept for listen()

    def _message(self, channel: Any, data: Any, pattern: Any) -> Message | None:
        if type(channel) is not bytes or type(data) is not bytes:
            return None
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
                {
                    "transport": "redis-pubsub",
                    "pattern": pattern.decode("utf-8", "replace") if pattern else None,
                }
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
        """Read messages until stopped; redis-py reconnects and resubscribes.

        While the PubSub's connection is up, replies are read with that connection's
        public ``read_response`` (what ``PubSub.parse_response`` calls, without its
        per-message retry wrapper); a dropped connection goes through
        ``PubSub.parse_response``, which reconnects and resubscribes with the client's
        ``retry=`` settings. A failure that did not cure is logged and retried with a
        :class:`~dispytch.backoff.Backoff` (Pub/Sub messages published meanwhile are
        lost).
        """
        ps = self.pubsub
        inbox = self._inbox
        handle = self._handle
        backoff = Backoff(initial=0.1, cap=5.0, jitter=0.2)
        while self._running:
            conn = ps.connection
            try:
                if conn is not None and conn.is_connected and not conn.health_check_interval:
                    try:
                        response = await conn.read_response(
                            timeout=_IDLE_READ, disconnect_on_error=False, push_request=True
                        )
                    except (RedisError, OSError):
                        await conn.disconnect()
                        raise
                else:
                    response = await ps.parse_response(block=True)
            except (RedisError, OSError) as exc:
                if not self._running:
                    return
                delay = backoff.next()
                log.warning(
                    "Redis Pub/Sub connection failed (%s: %s); reconnecting in %.1fs. "
                    "Messages published meanwhile are lost (Pub/Sub is at-most-once).",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if response is not None:
                handle(response)
                if inbox.full:
                    await inbox.wait_space()

    async def listen(self) -> AsyncIterator[Message]:
        """Yield messages until :meth:`stop`.

        Raises:
            NotStartedError: Before :meth:`start`.
            ConsumerClosedError: The reader failed for good (a bug, logged).
        """
        if not self._running:
            self._inbox.raise_failure("The RedisConsumer")
            raise NotStartedError("The RedisConsumer is not started.\nCall start() first.")
        async for msg in self._inbox.items("The RedisConsumer"):
            yield msg

    async def ack(self, message: Message) -> None:
        """Nothing to do: Pub/Sub has no acknowledgements."""

    async def nack(self, message: Message, *, requeue: bool, **_: Any) -> None:
        """Nothing to do on the broker: Pub/Sub cannot redeliver or reject.

        With ``requeue=True`` a WARNING says the message is gone.
        """
        if requeue:
            log.warning(
                "Redis Pub/Sub cannot redeliver: the message on channel %r was not handled "
                "and is gone (at-most-once). Use Redis Streams for redelivery.",
                message.route,
            )

    # ----------------------------------------------------------------- request/reply
    def reply_address(self, request: Message) -> str | None:
        """Request/reply: the requester's reply channel (the ``dispytch-reply-to`` header)."""
        return reply_address(request)

    async def send_reply(
        self, request: Message, payload: bytes, headers: Mapping[str, str]
    ) -> None:
        """``PUBLISH`` a reply to the requester's channel (best effort: a requester that
        is gone loses it). Sent through the consumer's client, or, for a PubSub you
        passed, a client over that PubSub's connection pool (never its subscribed
        connection)."""
        client = self._client
        if client is None:
            client = self._reply_client
            if client is None:
                client = self._reply_client = aredis.Redis(
                    connection_pool=self.pubsub.connection_pool
                )
        await self._replies.publish(client, request, payload, headers)

    async def stop(self) -> None:
        """Stop reading; ``listen`` ends now. Buffered messages are dropped (and counted)."""
        self._running = False
        self._inbox.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            # Safe: redis-py's parser keeps what it read and resumes on the next call.
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        dropped = self._inbox.drain()
        if dropped:
            log.warning(
                "RedisConsumer stopped with %d received message(s) not yet handled; they are "
                "dropped (Pub/Sub is at-most-once).",
                len(dropped),
            )

    async def close(self) -> None:
        """Unsubscribe; close the PubSub if this consumer created it, the client if owned.

        Bounded by ``close_timeout``: with Redis unreachable the subscriptions end with
        the connection.
        """
        await self.stop()
        ps = self._pubsub
        try:
            async with asyncio.timeout(self.close_timeout):
                if ps is not None and self._owns_pubsub:
                    await ps.aclose()
                elif ps is not None and ps.connection is not None:
                    if self._channels:
                        await ps.unsubscribe(*self._channels)
                    if self._patterns:
                        await ps.punsubscribe(*self._patterns)
                if self.owns_client and self._client is not None:
                    await self._client.aclose()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "Closing the Redis Pub/Sub consumer did not finish (%s: %s); its "
                "connection is dropped.",
                type(exc).__name__,
                exc,
            )
            if ps is not None and ps.connection is not None:
                await ps.connection.disconnect(nowait=True)
            if self.owns_client and self._client is not None:
                await self._client.connection_pool.disconnect()
        if self.owns_client:
            self._client = None
