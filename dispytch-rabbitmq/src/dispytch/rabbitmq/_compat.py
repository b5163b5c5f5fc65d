"""Every access Dispytch makes beyond the documented API of aio-pika, aiormq and pamqp.

Each function here has a test in ``tests/rabbitmq/test_compat.py`` that fails loudly when
an upgrade removes or changes what it relies on. Nothing else in the plugin touches a
private attribute of these libraries.

The pamqp decode hook
---------------------
pamqp decodes AMQP short strings (``content_type``, ``message_id``, ``type``, ``app_id``,
``correlation_id``, ``reply_to``, a routing key, ...) and header-table keys as strict
UTF-8. RabbitMQ does not check them, and clients in other languages can publish bytes that
are not UTF-8. One such delivery makes pamqp raise inside aiormq's frame reader, which
closes the whole connection; the broker requeues the message and delivers it again on
reconnection: the consumer reconnects forever and nothing behind the message is consumed.
:func:`install_tolerant_decoding` wraps pamqp's short-string and field-table decoders so
that, *only where strict decoding fails*, the bytes are decoded with replacement
characters (and a warning is logged). Valid frames take the unchanged strict path.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

import aiormq
import pamqp.decode as _decode
from aio_pika.abc import AbstractChannel, AbstractConnection

log = logging.getLogger("dispytch.rabbitmq")

_Decoder = Callable[[bytes], tuple[int, Any]]
_installed = False
_strict_short_str: _Decoder = _decode.short_str
_strict_field_table: _Decoder = _decode.field_table


def _warn(what: str, raw: bytes) -> None:
    log.warning(
        "RabbitMQ delivered an AMQP %s that is not valid UTF-8 (%r); read with replacement "
        "characters. The publisher should send UTF-8.",
        what,
        raw[:64],
    )


def tolerant_short_str(value: bytes) -> tuple[int, str]:
    """pamqp's short-string decoder, with replacement characters for invalid UTF-8."""
    try:
        return _strict_short_str(value)  # type: ignore[no-any-return,unused-ignore]
    except UnicodeDecodeError:
        length = value[0]
        raw = bytes(value[1 : length + 1])
        _warn("short string (a property or routing key)", raw)
        return length + 1, raw.decode("utf-8", "replace")


def tolerant_field_table(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's field-table decoder, with replacement characters for invalid UTF-8 keys.

    Values are decoded by pamqp (``decode.embedded_value``); only the key loop is redone,
    and only when the strict decoder failed on a key.
    """
    try:
        return _strict_field_table(value)  # type: ignore[no-any-return,unused-ignore]
    except UnicodeDecodeError:
        pass
    try:
        (length,) = struct.unpack(">I", value[0:4])
    except struct.error as err:
        raise ValueError("Could not unpack data") from err
    offset, end = 4, 4 + length
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    data: dict[str, Any] = {}
    while offset < end:
        key_length = value[offset]
        offset += 1
        if offset + key_length > end:
            raise ValueError("Field table key length exceeds data")
        raw = bytes(value[offset : offset + key_length])
        try:
            key = raw.decode("utf-8")
        except UnicodeDecodeError:
            _warn("header name", raw)
            key = raw.decode("utf-8", "replace")
        offset += key_length
        consumed, result = _decode.embedded_value(value[offset:])
        offset += consumed
        data[key] = result
    return end, data


def install_tolerant_decoding() -> None:
    """Install the tolerant decoders in pamqp's dispatch tables (idempotent).

    pamqp looks decoders up in ``decode.METHODS`` (properties and method fields, by AMQP
    type name) and ``decode.TABLE_MAPPING`` (values inside tables and arrays, by type tag)
    at call time, so replacing the entries there reaches every frame aiormq unmarshals.
    """
    global _installed
    if _installed:
        return
    methods: dict[str, Any] = _decode.METHODS
    mapping: dict[bytes, Any] = _decode.TABLE_MAPPING
    if methods.get("shortstr") is not _strict_short_str or methods.get("table") is not (
        _strict_field_table
    ):
        raise RuntimeError(
            "pamqp's decoder tables are not what dispytch-rabbitmq expects (another library "
            "replaced them?). Report it with your pamqp version."
        )
    methods["shortstr"] = tolerant_short_str
    methods["table"] = tolerant_field_table
    mapping[b"F"] = tolerant_field_table
    _installed = True


async def underlay(channel: AbstractChannel) -> aiormq.abc.AbstractChannel:
    """The aiormq channel under an aio-pika channel (waits for a robust one to be back).

    Dispytch consumes and publishes on aiormq directly: no aio-pika message object per
    delivery (the consumer hot path) and the publish result (ack, nack, return) as is.
    """
    return await channel.get_underlay_channel()


def prefetch_of(channel: AbstractChannel) -> int | None:
    """The prefetch count a robust channel restores after reconnecting (``None`` where
    the channel does not remember it: a plain channel)."""
    value = getattr(channel, "_prefetch_count", None)
    return value if isinstance(value, int) else None


def is_robust(channel: AbstractChannel) -> bool:
    """Whether the channel reopens itself after its connection came back."""
    return hasattr(channel, "reopen_callbacks")


def closed_for_good(channel: AbstractChannel) -> bool:
    """A closed channel that nothing will reopen: a plain channel, a robust one closed by
    its user, or one whose robust connection its user closed."""
    if not channel.is_closed:
        return False
    if not is_robust(channel):
        return True
    # aio-pika 10.2+ (the declared floor) records a user's close() of a robust channel.
    if getattr(channel, "_close_called", False):
        return True
    connection: Any = getattr(channel, "_connection", None)
    return bool(getattr(connection, "close_called", False))


def connection_of(channel: AbstractChannel) -> AbstractConnection:
    """The aio-pika connection an aio-pika channel was opened on."""
    connection: AbstractConnection = channel._connection  # type: ignore[attr-defined]
    return connection


def connection_is_up(connection: AbstractConnection) -> bool:
    """Whether the connection has a live AMQP connection under it now.

    A robust connection that is reconnecting is not closed (``is_closed`` turns true only
    when its user closes it): what tells an outage is its transport, ``None`` or closed
    until the reconnection succeeded.
    """
    if connection.is_closed:
        return False
    transport = connection.transport
    return transport is not None and not transport.connection.is_closed


async def publish_nowait(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    properties: Any,
    mandatory: bool = False,
    timeout: float | None = None,
) -> Any:
    """``basic_publish`` that queues the frames for the connection's writer without
    waiting, inside the channel's lock, for the socket to drain (``wait=False``).

    The broker's confirm (on a confirm-mode channel) is still awaited and returned; only
    the drain is skipped, so concurrent publishes on one channel leave in one write
    instead of one writer turn each. ``wait`` is a parameter of aiormq's ``Channel``
    (7.2.4, the declared floor) that its abstract interface does not list.
    """
    concrete: aiormq.Channel = channel  # type: ignore[assignment]
    return await concrete.basic_publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        properties=properties,
        mandatory=mandatory,
        timeout=timeout,
        wait=False,
    )


async def raw_channel(
    connection: AbstractConnection, *, publisher_confirms: bool = False
) -> aiormq.abc.AbstractChannel:
    """A throwaway aiormq channel on the connection, outside aio-pika's bookkeeping: a
    passive declaration (or a publish to a missing exchange) that fails closes it, and a
    robust connection must not try to reopen it."""
    await connection.ready()
    transport = connection.transport
    if transport is None:
        raise ConnectionError("The RabbitMQ connection is closed.")
    return await transport.connection.channel(publisher_confirms=publisher_confirms)
