"""Protobuf test fixtures. The ``_pb2`` modules are generated from ``protos/*.proto`` with
``python -m grpc_tools.protoc`` into a temporary directory when this conftest is loaded
(before the test modules import them); no generated code is committed.

Also: a private memory broker per test with emitters and dispatchers that are always
stopped, and a fresh default Avro registry when dispytch-avro is installed (the mixed
formats test uses it).
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dispytch import EventDispatcher, EventEmitter
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryProducer

from .. import tansu

PROTOS = Path(__file__).parent / "protos"
kafka_bootstrap = tansu.kafka_bootstrap  # the Kafka round trip's broker (tests/tansu.py)
WAIT = 10.0


def _generate() -> Path:
    out = Path(tempfile.mkdtemp(prefix="dispytch-pb2-"))
    atexit.register(shutil.rmtree, out, True)
    files = sorted(str(p.name) for p in PROTOS.glob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}", *files],
        check=True,
        timeout=120,
    )
    return out


GENERATED = _generate()
sys.path.insert(0, str(GENERATED))


async def until(pred: Callable[[], Any], what: str = "a condition", timeout: float = WAIT) -> None:
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

    async def emitter(self, serializer: Any = "protobuf") -> EventEmitter:
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


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    k = Kit()
    yield k
    await k.aclose()


@pytest.fixture(autouse=True)
def _fresh_avro_registry() -> Iterator[None]:
    try:
        from dispytch.avro import InMemorySchemaRegistry, set_default_registry
    except ImportError:
        yield
        return
    set_default_registry(InMemorySchemaRegistry())
    yield
    set_default_registry(None)
