"""Client checks and URL handling shared by the Redis producers and consumers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hiredis import pack_command

import redis
import redis.asyncio as aredis
from redis.asyncio.client import PubSub as AsyncPubSub
from redis.exceptions import ResponseError


def check_async_client(client: object, owner: str) -> aredis.Redis:
    """Return ``client`` if it is a usable ``redis.asyncio.Redis``, else raise at once.

    The synchronous client would block the event loop (or fail much later with an
    obscure error), so it is refused when the producer or consumer is built.

    Raises:
        TypeError: For the synchronous client or anything else that is not the asyncio
            client.
        ValueError: For a client that decodes responses to ``str`` (payloads are bytes).
    """
    if isinstance(client, redis.Redis | redis.client.PubSub):
        raise TypeError(
            f"{owner} needs the asyncio Redis client, but got the synchronous "
            f"{type(client).__module__}.{type(client).__qualname__}. Use "
            "`from redis.asyncio import Redis` (redis.asyncio.Redis), not redis.Redis."
        )
    if not isinstance(client, aredis.Redis):
        raise TypeError(
            f"{owner} needs a redis.asyncio.Redis client, got {type(client).__qualname__}. "
            f"Create one with `redis.asyncio.Redis(...)` or use {owner}.from_url(url)."
        )
    check_client_options(client, owner)
    return client


def check_client_options(client: aredis.Redis, owner: str) -> None:
    """Refuse client options the transport cannot work with.

    Raises:
        ValueError: For ``decode_responses=True`` (payloads are bytes).
    """
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise ValueError(
            f"{owner} reads raw bytes, but this Redis client was created with "
            "decode_responses=True. Create the client with decode_responses=False (the "
            "default)."
        )


def check_async_pubsub(pubsub: object, owner: str) -> AsyncPubSub:
    """Return ``pubsub`` if it is the asyncio PubSub, else raise (see above).

    Raises:
        TypeError: For the synchronous PubSub or anything else.
    """
    if isinstance(pubsub, redis.client.PubSub | redis.Redis):
        raise TypeError(
            f"{owner} needs the asyncio PubSub, but got the synchronous "
            f"{type(pubsub).__module__}.{type(pubsub).__qualname__}. Use "
            "`redis.asyncio.Redis(...).pubsub()`, not redis.Redis(...).pubsub()."
        )
    if not isinstance(pubsub, AsyncPubSub):
        raise TypeError(
            f"{owner} needs a redis.asyncio PubSub (`client.pubsub()`) or a "
            f"redis.asyncio.Redis client, got {type(pubsub).__qualname__}."
        )
    kwargs = pubsub.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise ValueError(
            f"{owner} reads raw bytes, but this PubSub's client was created with "
            "decode_responses=True. Create the client with decode_responses=False."
        )
    return pubsub


def client_from_url(url: str) -> aredis.Redis:
    """A new asyncio client for a redis-py URL (responses as bytes)."""
    return aredis.Redis.from_url(url, decode_responses=False)


def where(client: aredis.Redis) -> str:
    """``host:port`` (or ``unix:path``) of a client, for error messages."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


async def packed_round_trip(client: aredis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Write ``commands`` at once on one pooled connection and read one reply each.

    Packed by hiredis and written with the connection's public ``send_packed_command`` /
    ``read_response``: what a non-transactional pipeline sends, without redis-py's
    pipeline object (which costs more than the round trip on loopback). Error replies
    come back as :class:`ResponseError` values. No timer per read: bound the call with
    ``asyncio.timeout``. A round trip that fails or is cancelled half-way drops the
    connection (its state is unknown); the caller decides what to send again.
    """
    packed = b"".join([pack_command(command) for command in commands])
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response(timeout=math.inf))
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
