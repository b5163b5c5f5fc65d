"""Protobuf test fixtures. The ``_pb2`` modules are generated from ``protos/*.proto`` with
``python -m grpc_tools.protoc`` into a temporary directory when this conftest is loaded
(before the test modules import them); no generated code is committed.

Also: a private memory broker per test with emitters and dispatchers that are always
stopped, and a fresh default Avro registry when dispytch-avro is installed (the mixed
formats test uses it).
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .. import tansu
from ..format_kit import Kit

PROTOS = Path(__file__).parent / "protos"
kafka_bootstrap = tansu.kafka_bootstrap  # the Kafka round trip's broker (tests/tansu.py)


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


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    k = Kit("protobuf")
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
