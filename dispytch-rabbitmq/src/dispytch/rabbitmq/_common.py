"""Pieces shared by the RabbitMQ producer and consumer (imports aio-pika)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
import aiormq.exceptions
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from dispytch.rabbitmq import _compat
from dispytch.rabbitmq.routes import RabbitMQExchange

log = logging.getLogger("dispytch.rabbitmq")

#: Errors that mean "the connection or channel went away": worth waiting for a robust
#: connection to come back, never a verdict on the message itself.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


def redact(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connect_with(url: str, *, within: float) -> Callable[[], Awaitable[AbstractRobustConnection]]:
    """A connection factory: opens a robust connection to ``url`` (it reconnects and
    restores channels, queues and consumers) within ``within`` seconds.

    The factory raises :class:`ConnectionError` naming the URL (without password) when the
    broker cannot be reached in time.
    """

    async def factory() -> AbstractRobustConnection:
        try:
            return await asyncio.wait_for(aio_pika.connect_robust(url), within)
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            raise ConnectionError(
                f"Cannot connect to RabbitMQ at {redact(url)} ({type(exc).__name__}: {exc}).\n"
                "Check that the broker runs and the URL, user, password and vhost are right."
            ) from exc

    return factory


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


async def exchange_exists(connection: AbstractConnection, name: str) -> bool:
    """Check passively whether an exchange exists, on a throwaway raw channel.

    A failed passive declaration closes its channel, so it never runs on a channel in use
    (nor on a robust one, which would try to reopen itself).
    """
    if name == "":
        return True
    ch = await _compat.raw_channel(connection)
    try:
        await ch.exchange_declare(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not ch.is_closed:
            await ch.close()
    return True
