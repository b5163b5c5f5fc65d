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
from typing import Any

from dispytch.cqrs.wire import HEADER_REPLY_TO
from dispytch.message import Message
from dispytch.redis._client import packed_round_trip
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
    """Publishes a consumer's replies, written together on one pooled connection at a time.

    Many requests answered at once (100 handlers finishing together) would otherwise
    each take a connection from the client's pool and exhaust it; here replies that
    wait together go out in one round trip (``PUBLISH`` per reply, no transaction), packed
    with ``hiredis.pack_command`` and written with the connection's public
    ``send_packed_command`` / ``read_response`` (the producer's path; redis-py's pipeline
    object costs more than the round trip on loopback).
    Best effort: a requester that is gone, or a Redis that does not answer within
    ``timeout``, loses its reply (logged; that caller times out); nothing raises.
    """

    def __init__(self, *, timeout: float = REPLY_TIMEOUT) -> None:
        self.timeout = timeout
        self._pending: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._names: dict[str, bytes] = {}
        self._busy = False
        self._flusher: asyncio.Task[None] | None = None

    async def publish(
        self,
        client: aredis.Redis,
        request: Message,
        payload: bytes,
        headers: Mapping[str, str],
    ) -> None:
        """Queue a reply to ``request``'s reply channel and wait until Redis took it.

        The first caller while no flush runs sends the replies itself (no task of its
        own: one wake-up less per reply), including those queued meanwhile; the others
        wait for it. A flushing caller that is cancelled hands what is left, the round
        trip it interrupted included, to a task: a reply sent twice is harmless (the
        requester drops a correlation id it no longer waits for).
        """
        channel = reply_address(request)
        if channel is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((channel, pack(payload, headers, None), done))
        if self._busy:
            await asyncio.shield(done)
            return
        self._busy = True
        try:
            await self._flush(client)
        except asyncio.CancelledError:
            self._flusher = loop.create_task(
                self._flush_then_free(client), name="dispytch-redis-replies"
            )
            raise
        except BaseException:
            self._busy = False
            raise
        self._busy = False

    async def _flush_then_free(self, client: aredis.Redis) -> None:
        try:
            await self._flush(client)
        finally:
            self._busy = False

    async def _flush(self, client: aredis.Redis) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[:PIPELINE_REPLIES],
                self._pending[PIPELINE_REPLIES:],
            )
            try:
                async with asyncio.timeout(self.timeout):
                    results = await self._publish(client, batch)
            except asyncio.CancelledError:
                self._pending[:0] = batch  # sent again by whoever flushes next
                raise
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

    async def _publish(
        self, client: aredis.Redis, batch: list[tuple[str, bytes, asyncio.Future[None]]]
    ) -> list[Any]:
        """``PUBLISH`` each reply in one packed round trip (called under the flush's
        timeout)."""
        names = self._names
        commands: list[tuple[Any, ...]] = []
        for channel, data, _ in batch:
            raw = names.get(channel)
            if raw is None:
                raw = channel.encode()
                if len(names) < 10_000:
                    names[channel] = raw
            commands.append((b"PUBLISH", raw, data))
        return await packed_round_trip(client, commands)
