"""Crash and scale-out: consumers in child processes, one consumer group.

Each child appends every handled event to a file before acknowledging it, so the files
say exactly what was handled, even by a process that was SIGKILLed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dispytch.emitter import EventEmitter
from dispytch.kafka import KafkaEventRoute, KafkaProducer

from ._child_consumer import Item
from .helpers import create_topic

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHILD = Path(__file__).with_name("_child_consumer.py")
T = 90.0


class Child:
    def __init__(self, bootstrap: str, topic: str, group: str, out: Path, delay: float) -> None:
        self.out = out
        self.log = out.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), bootstrap, topic, group, str(out), str(delay)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def lines(self) -> list[str]:
        return self.out.read_text().split() if self.out.exists() else []

    def handled(self) -> list[int]:
        return [int(x) for x in self.lines() if x != "READY"]

    async def wait_for(self, check: str, cond: object) -> None:
        async with asyncio.timeout(T):
            while not cond():  # type: ignore[operator]
                if self.proc.poll() is not None:
                    pytest.fail(f"child exited ({check}): {self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for c in made:
        c.stop()


async def emit(bootstrap: str, topic: str, n: int) -> None:
    async with EventEmitter(KafkaProducer.from_url(f"kafka://{bootstrap}")) as em:
        await em.producer.send_batch(
            [em.build(Item(n=i), route=KafkaEventRoute(topic=topic, key="n")) for i in range(n)]
        )


async def test_crash_mid_run_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, children: list[Child], record_property
) -> None:
    """SIGKILL a consumer in the middle of N messages; a fresh member of the group
    finishes. Every message handled at least once; duplicates are what the killed
    consumer handled after its last commit."""
    n = 400
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    await create_topic(kafka_bootstrap, topic, 2)
    await emit(kafka_bootstrap, topic, n)

    first = Child(kafka_bootstrap, topic, group, tmp_path / "first.txt", delay=0.01)
    children.append(first)
    await first.wait_for("a third handled", lambda: len(first.handled()) >= n // 3)
    first.proc.kill()  # SIGKILL: no commit, no leave-group, nothing graceful
    first.proc.wait(10)
    before = first.handled()
    assert len(before) < n, "the first consumer finished before it was killed"

    second = Child(kafka_bootstrap, topic, group, tmp_path / "second.txt", delay=0.0)
    children.append(second)
    await second.wait_for(
        "the rest handled", lambda: set(before) | set(second.handled()) >= set(range(n))
    )
    second.stop()
    counts = Counter(before + second.handled())
    assert set(counts) == set(range(n))
    duplicates = sum(c - 1 for c in counts.values())
    record_property("duplicates", duplicates)
    print(f"\ncrash test: {len(before)} handled before SIGKILL, {duplicates} duplicates")
    assert duplicates < n  # at-least-once, redelivery only from the last commit


async def test_two_processes_share_the_partitions(
    kafka_bootstrap: str, tmp_path: Path, children: list[Child]
) -> None:
    n = 400
    topic = f"scale-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    await create_topic(kafka_bootstrap, topic, 4)
    a = Child(kafka_bootstrap, topic, group, tmp_path / "a.txt", delay=0.001)
    children.append(a)
    await a.wait_for("ready", lambda: "READY" in a.lines())
    b = Child(kafka_bootstrap, topic, group, tmp_path / "b.txt", delay=0.001)
    children.append(b)
    # b's start returns once the rebalance gave it partitions: the group is settled.
    await b.wait_for("ready", lambda: "READY" in b.lines())
    await emit(kafka_bootstrap, topic, n)
    await a.wait_for("all handled", lambda: set(a.handled()) | set(b.handled()) >= set(range(n)))
    a.stop()
    b.stop()
    got_a, got_b = a.handled(), b.handled()
    assert set(got_a) | set(got_b) == set(range(n))
    assert got_a and got_b, f"one process got nothing: a={len(got_a)} b={len(got_b)}"
    print(f"\nscale-out: a={len(got_a)} b={len(got_b)}")
