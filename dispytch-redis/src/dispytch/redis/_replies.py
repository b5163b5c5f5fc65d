"""Request/reply over Redis: replies always travel by ``PUBLISH`` to the requester's channel.

Redis has no reply-to property, so the requester's reply channel travels in the request's
``dispytch-reply-to`` header (:data:`dispytch.cqrs.wire.HEADER_REPLY_TO`); the reply is
the Pub/Sub envelope (:mod:`dispytch.redis.envelope`) of the reply payload and headers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping

from dispytch.cqrs.wire import HEADER_REPLY_TO
from dispytch.message import Message
from dispytch.redis.envelope import pack

import redis.asyncio as aredis
from redis.exceptions import RedisError

log = logging.getLogger("dispytch.redis")

#: The prefix of every producer's reply channel (``dispytch.reply.<uuid>``).
REPLY_CHANNEL_PREFIX = "dispytch.reply."
#: Seconds a responder waits for Redis to take a round trip of replies before giving up.
REPLY_TIMEOUT = 5.0
#: Replies per pipelined round trip.
PIPELINE_REPLIES = 1000


def new_reply_channel() -> str:
    """A reply channel name no other process uses."""
    return f"{REPLY_CHANNEL_PREFIX}{uuid.uuid4().hex}"


def reply_address(request: Message) -> str | None:
    """The requester's reply channel, from the request's headers (``None``: no reply
    wanted, a command sent with ``emit``)."""
    return request.headers.get(HEADER_REPLY_TO) or None


class ReplyPublisher:
    """Publishes a consumer's replies, pipelined on one pooled connection at a time.

    Many requests answered at once (100 handlers finishing together) would otherwise
    each take a connection from the client's pool and exhaust it; here replies that
    wait together go out in one round trip (``PUBLISH`` per reply, no transaction).
    Best effort: a requester that is gone, or a Redis that does not answer within
    ``timeout``, loses its reply (logged; that caller times out); nothing raises.
    """

    def __init__(self, *, timeout: float = REPLY_TIMEOUT) -> None:
        self.timeout = timeout
        self._pending: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def publish(
        self,
        client: aredis.Redis,
        request: Message,
        payload: bytes,
        headers: Mapping[str, str],
    ) -> None:
        """Queue a reply to ``request``'s reply channel and wait until Redis took it."""
        channel = reply_address(request)
        if channel is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((channel, pack(payload, headers, None), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(client), name="dispytch-redis-replies")
        await asyncio.shield(done)

    async def _flush(self, client: aredis.Redis) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[:PIPELINE_REPLIES],
                self._pending[PIPELINE_REPLIES:],
            )
            try:
                async with asyncio.timeout(self.timeout):
                    async with client.pipeline(transaction=False) as pipe:
                        for channel, data, _ in batch:
                            pipe.publish(channel, data)
                        results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning(
                    "Could not send %d repl%s to Redis (%s: %s); %s caller%s will time out.",
                    len(batch),
                    "y" if len(batch) == 1 else "ies",
                    type(exc).__name__,
                    exc,
                    "its" if len(batch) == 1 else "their",
                    "" if len(batch) == 1 else "s",
                )
            else:
                for (channel, _, _), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        log.warning("Redis refused the reply to %r: %s", channel, result)
                    elif not result:
                        log.debug("Reply to %r reached nobody: the requester is gone.", channel)
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)
