"""A minimal AMQP 0-9-1 publisher over a raw socket, for hostile input (not a test module).

aio-pika and pamqp encode every short string as UTF-8 and refuse ``bytes``, so they
cannot publish a message whose properties are not valid UTF-8, while RabbitMQ accepts and
delivers such messages (clients in other languages send them). This helper marshals the
frames with pamqp using ASCII placeholders of the same length, swaps the placeholders for
the raw bytes, and writes the frames to the socket itself.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from pamqp import body as pbody
from pamqp import commands, frame, header

_FRAME_HEADER = 7


class RawPublisher:
    """Publishes with publisher confirms on channel 1 of its own connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5672
        self.user = unquote(parts.username or "guest")
        self.password = unquote(parts.password or "guest")
        self.vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tag = 0
        self._frame_max = 131072

    async def __aenter__(self) -> RawPublisher:
        await asyncio.wait_for(self._open(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            try:
                self._send(
                    0,
                    commands.Connection.Close(
                        reply_code=200, reply_text="bye", class_id=0, method_id=0
                    ),
                )
                await asyncio.wait_for(self._expect(commands.Connection.CloseOk), 5)
            finally:
                self._writer.close()

    def _send(self, channel: int, value: Any) -> None:
        assert self._writer is not None
        self._writer.write(frame.marshal(value, channel))

    async def _read(self) -> Any:
        assert self._reader is not None
        head = await self._reader.readexactly(_FRAME_HEADER)
        (size,) = struct.unpack(">I", head[3:7])
        rest = await self._reader.readexactly(size + 1)
        _, _, value = frame.unmarshal(head + rest)
        return value

    async def _expect(self, kind: type) -> Any:
        while True:
            value = await self._read()
            if isinstance(value, kind):
                return value
            if isinstance(value, (commands.Connection.Close, commands.Channel.Close)):
                raise ConnectionError(
                    f"RabbitMQ closed the raw connection: {value.reply_code} {value.reply_text}"
                )

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(frame.marshal(header.ProtocolHeader(), 0))
        await self._expect(commands.Connection.Start)
        self._send(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "dispytch-test-raw"},
                mechanism="PLAIN",
                response=f"\0{self.user}\0{self.password}",
                locale="en_US",
            ),
        )
        tune = await self._expect(commands.Connection.Tune)
        if tune.frame_max:
            self._frame_max = tune.frame_max
        self._send(
            0,
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
            ),
        )
        self._send(0, commands.Connection.Open(virtual_host=self.vhost))
        await self._expect(commands.Connection.OpenOk)
        self._send(1, commands.Channel.Open())
        await self._expect(commands.Channel.OpenOk)
        self._send(1, commands.Confirm.Select())
        await self._expect(commands.Confirm.SelectOk)

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        properties: Mapping[str, str | bytes] | None = None,
        headers: Mapping[str | bytes, Any] | None = None,
    ) -> None:
        """Publish and wait for the confirm.

        ``properties`` (``content_type``, ``message_id``, ``message_type``, ``app_id``,
        ``correlation_id``, ``reply_to``...) and ``headers`` keys may be ``bytes`` that
        are not valid UTF-8; ``headers`` values may be ``bytes`` (sent as AMQP long
        strings, which may hold anything, or byte arrays when shorter than 8 bytes).
        """
        swaps: list[tuple[bytes, bytes]] = []

        def placeholder(raw: str | bytes) -> str:
            if isinstance(raw, str):
                return raw
            if len(raw) < 8:
                raise ValueError("raw byte strings must be at least 8 bytes (placeholders)")
            token = uuid.uuid4().hex[: len(raw)].ljust(len(raw), "x")
            swaps.append((token.encode(), raw))
            return token

        props = {k: placeholder(v) for k, v in (properties or {}).items()}

        def value(raw: Any) -> Any:
            if not isinstance(raw, bytes):
                return raw
            try:
                return raw.decode()  # a long string (what other clients send)
            except UnicodeDecodeError:
                # Invalid UTF-8 as a long string too, where a placeholder fits.
                return placeholder(raw) if len(raw) >= 8 else bytearray(raw)

        table = {placeholder(k): value(v) for k, v in (headers or {}).items()}
        content = header.ContentHeader(
            0, len(body), commands.Basic.Properties(headers=table or None, **props)
        )
        wire = frame.marshal(content, 1)
        for token, raw in swaps:
            assert wire.count(token) == 1, "placeholder collision"
            wire = wire.replace(token, raw)
        self._send(1, commands.Basic.Publish(exchange=exchange, routing_key=routing_key))
        assert self._writer is not None
        self._writer.write(wire)
        # The body in frames of at most frame_max (the frame's own 8 bytes included);
        # an empty body is sent as no body frame at all.
        step = self._frame_max - 8
        for start in range(0, len(body), step):
            self._send(1, pbody.ContentBody(body[start : start + step]))
        self._tag += 1
        ack = await asyncio.wait_for(self._expect(commands.Basic.Ack), 10)
        assert ack.delivery_tag == self._tag
