"""Shared pieces of the Redis tests: URLs, unique names, a killable proxy, and the
conformance harnesses for both construction modes (``"url"`` and ``"client"``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from dispytch.redis import (
    RedisConsumer,
    RedisEventRoute,
    RedisEventSubscription,
    RedisProducer,
    RedisStreamConsumer,
    RedisStreamProducer,
    RedisStreamRoute,
    RedisStreamSubscription,
)
from dispytch.redis.envelope import MAGIC
from dispytch.redis.plugin import PUBSUB_CAPABILITIES, STREAMS_CAPABILITIES
from dispytch.routes import EventRoute, EventSubscription
from dispytch.testing.harness import Mode, Outage, SeverableConsumer, TransportHarness
from dispytch.transport import Consumer, Producer
from redis.exceptions import ResponseError

REDIS_URL = os.environ.get("DISPYTCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STREAMS_URL = REDIS_URL.replace("redis://", "redis+streams://", 1)


def raw_header_block(headers: Mapping[str, bytes]) -> bytes:
    """A JSON object of the header values as raw bytes (not re-encoded: a value that is
    not UTF-8 stays so, the way a foreign publisher would write it)."""
    parts = []
    for key, value in headers.items():
        escaped = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        parts.append(json.dumps(key).encode() + b':"' + escaped + b'"')
    return b"{" + b",".join(parts) + b"}"


class Names:
    """Unique channel/stream names for one test; the streams are deleted afterwards."""

    def __init__(self) -> None:
        self.keys: list[str | bytes] = []

    def channel(self, prefix: str = "ch") -> str:
        return f"test.{prefix}.{uuid.uuid4().hex[:10]}"

    def stream(self, prefix: str = "st") -> str:
        name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
        self.keys.append(name)
        return name

    async def cleanup(self) -> None:
        if not self.keys:
            return
        client = aredis.Redis.from_url(REDIS_URL)
        try:
            await client.delete(*self.keys)
        finally:
            await client.aclose()


class Proxy:
    """A TCP proxy in front of Redis that a test can kill (every connection dropped and
    no new ones accepted), the way a network partition looks to the client."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Bytes forwarded from the clients to Redis (to cut a batch part-way).
        self.upstream_bytes = 0
        #: Kill everything once this many bytes went upstream (``None``: never).
        self.cut_at: int | None = None
        #: While set, bytes are read and dropped: Redis looks alive but never answers.
        self.stalled = False
        self.killed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        loop = asyncio.get_running_loop()
        for src, dst, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = loop.create_task(self._pipe(src, dst, upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if self.stalled:
                    continue
                if upstream:
                    self.upstream_bytes += len(data)
                dst.write(data)
                if upstream and self.cut_at is not None and self.upstream_bytes >= self.cut_at:
                    self.cut_at = None
                    asyncio.get_running_loop().create_task(self.kill())
                    return
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    async def kill(self) -> None:
        """Drop every connection and stop accepting new ones."""
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            transport = writer.transport
            if transport is not None:
                transport.abort()
        for task in list(self._tasks):
            task.cancel()
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        self._writers.clear()
        self.killed.set()


class _RedisHarness(TransportHarness):
    """What the Pub/Sub and Streams harnesses share: the two construction modes.

    ``"client"`` mode wraps ``redis.asyncio.Redis`` clients the harness built itself (the
    seed's way, ``RedisProducer(Redis())``) and closes them in :meth:`cleanup`; ``"url"``
    mode goes through ``from_url``.
    """

    supports_keys = True
    supports_patterns = True

    def __init__(self, mode: Mode = "url") -> None:
        self.mode = mode
        self.clients: list[aredis.Redis] = []
        self.proxies: list[Proxy] = []
        self.keys: set[str] = set()

    def client(self, **kwargs: Any) -> aredis.Redis:
        c = aredis.Redis.from_url(REDIS_URL, **kwargs)
        self.clients.append(c)
        return c

    async def plain(self) -> aredis.Redis:
        """A plain redis-py client (not wrapped) for raw publishing and inspection."""
        return self.client()

    async def closed_producer(self) -> Producer:
        # redis-py reconnects a client after aclose() on its next command, so what
        # cannot send is a stopped producer (over the user's client, or its own).
        producer = self.producer()
        await producer.start()
        await producer.stop()
        return producer

    async def unstarted_producer(self) -> Producer | None:
        # url mode: from_url makes its client in start(). client mode: a redis.asyncio
        # client has no "not connected yet" state (it connects on first use).
        return self.producer() if self.mode == "url" else None

    async def unconfirmed_producer(self) -> Producer | None:
        """A started producer behind a proxy that then swallows every byte: Redis looks
        connected and never answers, so the short delivery timeout expires."""
        proxy = await Proxy().start()
        self.proxies.append(proxy)
        client = aredis.Redis.from_url(proxy.url, retry=None)
        self.clients.append(client)
        producer = self.producer_over(client, delivery_timeout=0.5)
        await producer.start()
        proxy.stalled = True
        return producer

    def producer_over(self, client: aredis.Redis, **options: Any) -> Producer:
        return RedisProducer(client, **options)

    async def severable_consumer(
        self, *, group: str, outage: Outage = "killed"
    ) -> SeverableConsumer | None:
        """The group's consumer through a proxy that ``sever`` kills (every connection
        dropped, none accepted) or stalls (bytes read and dropped: Redis looks connected
        and never answers; ``release`` then kills it): client mode over the user's client
        of the proxy, url mode from the proxy's URL."""
        proxy = await Proxy().start()
        self.proxies.append(proxy)
        consumer: Consumer
        if self.mode == "client":
            client = aredis.Redis.from_url(proxy.url, socket_connect_timeout=1, retry=None)
            self.clients.append(client)
            consumer = self.consumer_over(client, group=group)
        else:
            consumer = self.consumer_from(proxy.url, group=group)
        if outage == "killed":
            return SeverableConsumer(consumer, proxy.kill)

        async def stall() -> None:
            proxy.stalled = True

        return SeverableConsumer(consumer, stall, release=proxy.kill)

    def consumer_over(self, client: aredis.Redis, *, group: str) -> Consumer:
        """A consumer of ``group`` around the user's ``client``."""
        raise NotImplementedError

    def consumer_from(self, url: str, *, group: str) -> Consumer:
        """A consumer of ``group`` from the ``redis://`` ``url``."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        for proxy in self.proxies:
            await proxy.kill()
        if self.keys:
            admin = aredis.Redis.from_url(REDIS_URL)
            try:
                await admin.delete(*self.keys)
            finally:
                await admin.aclose()
        for c in self.clients:
            await c.aclose()


class RedisPubSubHarness(_RedisHarness):
    """Pub/Sub: at-most-once, keys travel in the envelope, channel patterns; ordered
    consumers (lane = channel), as the spec's capabilities say."""

    at_least_once = False
    capabilities = PUBSUB_CAPABILITIES
    redelivery_window = 1.0
    # Header values travel in a JSON block: bytes that are not UTF-8 make the envelope
    # malformed, and a malformed Pub/Sub message is logged and dropped.
    undecodable_headers = "reject"

    def __init__(self, mode: Mode = "url") -> None:
        super().__init__(mode)
        self.name = f"redis-pubsub-{mode}"

    def route(self, name: str) -> EventRoute:
        return RedisEventRoute(channel=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        return RedisEventSubscription(channel=name)

    def producer(self) -> Producer:
        if self.mode == "client":
            return RedisProducer(self.client())
        return RedisProducer.from_url(REDIS_URL)

    def consumer(self, *, group: str) -> Consumer:
        if self.mode == "client":
            return self.consumer_over(self.client(), group=group)
        return self.consumer_from(REDIS_URL, group=group)

    def consumer_over(self, client: aredis.Redis, *, group: str) -> Consumer:
        return RedisConsumer(client.pubsub(), ordered=True)

    def consumer_from(self, url: str, *, group: str) -> Consumer:
        return RedisConsumer.from_url(url, ordered=True)

    def consumer_again(self, consumer: Consumer, *, group: str) -> Consumer:
        if self.mode == "client":
            assert isinstance(consumer, RedisConsumer)
            return RedisConsumer(consumer.pubsub, ordered=True)
        return self.consumer(group=group)

    async def publish_raw(
        self, name: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """PUBLISH the envelope another program would write (header values raw)."""
        client = await self.plain()
        if headers:
            block = raw_header_block(headers)
            data = MAGIC + struct.pack(">II", len(block), 0xFFFFFFFF) + block + payload
            await client.publish(name, data)
        else:
            await client.publish(name, payload)

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        return None  # at-most-once: a rejected message is logged and gone


class RedisStreamsHarness(_RedisHarness):
    """Streams: consumer groups, XAUTOCLAIM redelivery, stream patterns found by SCAN;
    rejected entries go to the consumer's ``dead_letter_stream``."""

    at_least_once = True
    capabilities = STREAMS_CAPABILITIES
    redelivery_timeout = 10.0
    redelivery_window = 2.5  # min_idle_time plus a claim interval
    lease_seconds = 2.0  # min_idle_time in _options: entries idle this long are taken over
    # Header values travel in a JSON field: bytes that are not UTF-8 make the entry
    # malformed, and malformed entries go to the dead-letter stream.
    undecodable_headers = "reject"

    def __init__(self, mode: Mode = "url") -> None:
        super().__init__(mode)
        self.name = f"redis-streams-{mode}"
        self.dead_letters = f"conf.dlq.{uuid.uuid4().hex[:10]}"
        self.keys.add(self.dead_letters)

    async def prepare(self, name: str, *, group: str) -> None:
        self.keys.add(name)
        client = await self.plain()
        try:
            await client.xgroup_create(name, group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def route(self, name: str) -> EventRoute:
        self.keys.add(name)
        return RedisStreamRoute(stream=name)

    def subscription(self, name: str, *, group: str) -> EventSubscription:
        self.keys.add(name)
        return RedisStreamSubscription(stream=name, group=group)

    def producer(self) -> Producer:
        if self.mode == "client":
            return RedisStreamProducer(self.client())
        return RedisStreamProducer.from_url(STREAMS_URL)

    def producer_over(self, client: aredis.Redis, **options: Any) -> Producer:
        return RedisStreamProducer(client, **options)

    def _options(self, group: str) -> dict[str, Any]:
        return {
            "group": group,
            "min_idle_time": 2.0,
            "claim_interval": 0.2,
            "block_ms": 100,
            "discover_interval": 0.2,
            "dead_letter_stream": self.dead_letters,
            "ordered": True,
        }

    def consumer(self, *, group: str) -> Consumer:
        if self.mode == "client":
            return self.consumer_over(self.client(), group=group)
        return self.consumer_from(REDIS_URL, group=group)

    def consumer_over(self, client: aredis.Redis, *, group: str) -> Consumer:
        return RedisStreamConsumer(client, **self._options(group))

    def consumer_from(self, url: str, *, group: str) -> Consumer:
        streams = url.replace("redis://", "redis+streams://", 1)
        return RedisStreamConsumer.from_url(streams, **self._options(group))

    def consumer_again(self, consumer: Consumer, *, group: str) -> Consumer:
        if self.mode == "client":
            assert isinstance(consumer, RedisStreamConsumer)
            return RedisStreamConsumer(consumer.redis, **self._options(group))
        return self.consumer(group=group)

    async def publish_raw(
        self, name: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        self.keys.add(name)
        fields: dict[bytes, bytes] = {b"payload": payload}
        if headers:
            fields[b"headers"] = raw_header_block(headers)
        client = await self.plain()
        await client.xadd(name, fields)  # type: ignore[arg-type]

    async def rejected(self, name: str, *, group: str) -> list[bytes] | None:
        client = await self.plain()
        out = []
        for _, fields in await client.xrange(self.dead_letters):
            headers = json.loads(fields.get(b"headers", b"{}"))
            if headers.get("dispytch-original-route") == name:
                out.append(fields[b"payload"])
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_redis(tmp_path: Path, *args: str) -> Iterator[str]:
    """A redis-server of the test's own on a free loopback port; stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:  # pragma: no cover - environment
        pytest.fail("redis-server is not installed (tests needing a server of their own).")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
         "--save", "", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        else:  # pragma: no cover - environment
            pytest.fail(f"the test's own redis-server on port {port} did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
