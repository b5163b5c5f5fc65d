"""A loopback TCP proxy to the RabbitMQ broker that can freeze or die (not a test module)."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from .conftest import AMQP_URL


class Proxy:
    """A loopback TCP proxy to the broker that can freeze (stop forwarding, sockets left
    open: an unreachable network) or die (every socket closed, nothing listening)."""

    def __init__(self) -> None:
        target = urlsplit(AMQP_URL)
        self.host, self.port = target.hostname or "127.0.0.1", target.port or 5672
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(AMQP_URL)
        netloc = parts.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
        return parts._replace(netloc=netloc).geturl().rstrip("/") + "/?reconnect_interval=0.5"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # swallow everything from now on
                dst.write(data)
                await dst.drain()

    async def kill(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in self._writers:
            w.transport.abort()
        self._writers = []
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
