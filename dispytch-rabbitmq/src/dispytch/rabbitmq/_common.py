"""Pieces shared by the RabbitMQ producer and consumer (imports aio-pika)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
import aiormq.exceptions
from aio_pika.abc import AbstractRobustConnection
from dispytch.rabbitmq.routes import RabbitMQExchange

log = logging.getLogger("dispytch.rabbitmq")

#: Errors that mean "the connection or channel went away": worth waiting for a robust
#: connection to come back, never a verdict on the message itself.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)

_SCHEMES = ("amqp", "amqps")


def split_url(url: str, own_keys: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """Separate Dispytch's own query parameters from the ones aio-pika understands.

    Returns the URL without ``own_keys`` and a dict of those keys' values.

    Raises:
        ValueError: When the scheme is not ``amqp``/``amqps``.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"{url!r} is not a RabbitMQ URL. Write it as "
            "amqp://user:password@host:5672/vhost (or amqps:// for TLS)."
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in own_keys}
    rest = [(k, v) for k, v in query if k not in own_keys]
    return urlunsplit(parts._replace(query=urlencode(rest))), own


def redact(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(url: str, *, within: float) -> AbstractRobustConnection:
    """Open a robust connection (it reconnects and restores channels, queues, consumers).

    Raises:
        ConnectionError: Naming the URL (without password) when the broker cannot be
            reached within ``within`` seconds.
    """
    try:
        return await asyncio.wait_for(aio_pika.connect_robust(url), within)
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        raise ConnectionError(
            f"Cannot connect to RabbitMQ at {redact(url)} ({type(exc).__name__}: {exc}). "
            "Check that the broker runs and the URL, user, password and vhost are right."
        ) from exc


async def declare_exchanges(
    channel: aio_pika.abc.AbstractChannel, exchanges: tuple[RabbitMQExchange, ...]
) -> None:
    """Declare the exchanges the user described, with exactly their settings."""
    for ex in exchanges:
        try:
            await channel.declare_exchange(
                ex.name,
                aio_pika.ExchangeType(ex.type),
                durable=ex.durable,
                auto_delete=ex.auto_delete,
                internal=ex.internal,
                arguments=dict(ex.arguments) if ex.arguments else None,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ValueError(
                f"The exchange {ex.name!r} already exists with other settings than "
                f"{ex!r} ({exc}). Declare it with the settings it has, or delete it first."
            ) from exc


async def exchange_exists(connection: AbstractRobustConnection, name: str) -> bool:
    """Check passively whether an exchange exists, on a throwaway raw channel.

    A failed passive declaration closes its channel, so it never runs on a channel in use
    (nor on a robust one, which would try to reopen itself).
    """
    if name == "":
        return True
    await connection.ready()
    transport = connection.transport
    if transport is None:
        raise ConnectionError("The RabbitMQ connection is closed.")
    ch = await transport.connection.channel(publisher_confirms=False)
    try:
        await ch.exchange_declare(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not ch.is_closed:
            await ch.close()
    return True


def text_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """AMQP header tables hold numbers, bytes, lists and tables; Dispytch wants text."""
    if not raw:
        return {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, (bytes, bytearray)):
            out[k] = bytes(v).decode("utf-8", "replace")
        else:
            out[k] = str(v)
    return out
