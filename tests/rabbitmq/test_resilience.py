"""Crashes, broker restarts and competing consumers, with real processes and the real broker.

The restart test stops and starts the RabbitMQ application with ``rabbitmqctl`` and
always restores it (waiting until it answers again) before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from dispytch import EmitError, EmitTimeoutError, Event, EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.rabbitmq import (
    RabbitMQConsumer,
    RabbitMQEventRoute,
    RabbitMQEventSubscription,
    RabbitMQProducer,
)

from .conftest import AMQP_URL, Names, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHILD = Path(__file__).with_name("child_consumer.py")
#: Reconnect quickly in these tests (aio-pika's default is every 5 s).
FAST_URL = AMQP_URL.rstrip("/") + "/?reconnect_interval=0.5"


class Item(EventBase):
    __event_type__ = "item"
    i: int


def handled(out: Path) -> list[tuple[str, int]]:
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        name, i = line.split()
        rows.append((name, int(i)))
    return rows


@contextlib.asynccontextmanager
async def child(
    queue: str, out: Path, name: str, *, delay: float = 0.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A consumer process, ready when entered; SIGTERMed (or already dead) on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), "--url", AMQP_URL, "--queue", queue, "--out", str(out),
        "--name", name, "--delay", str(delay),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", f"child {name} did not start: {line!r}"
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def declare(queue: str) -> None:
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True)
    finally:
        await conn.close()


async def publish_items(queue: str, n: int) -> None:
    """Publish ``Item(0..n-1)`` to ``queue``, every one confirmed."""
    async with EventEmitter(RabbitMQProducer.from_url(AMQP_URL)) as emitter:
        route = RabbitMQEventRoute(routing_key=queue)
        await emitter.producer.send_batch([emitter.build(Item(i=i), route=route) for i in range(n)])


async def test_consumer_sigkilled_mid_run_loses_nothing(names: Names, tmp_path: Path) -> None:
    n = 300
    queue = names.queue("crash")
    out = tmp_path / "handled.txt"
    await declare(queue)
    await publish_items(queue, n)
    async with child(queue, out, "first", delay=0.01) as first:
        await wait_until(lambda: len(handled(out)) >= 50, timeout=60)
        first.kill()  # SIGKILL: no graceful stop, unacknowledged deliveries go back
        await asyncio.wait_for(first.wait(), 10)
    before = len(handled(out))
    assert before < n, "the first consumer finished before it was killed"
    async with child(queue, out, "second"):
        await wait_until(lambda: {i for _, i in handled(out)} == set(range(n)), timeout=60)
    rows = handled(out)
    assert {i for _, i in rows} == set(range(n))  # none missing
    assert {name for name, _ in rows} == {"first", "second"}
    # At least once: what the first handled but could not acknowledge comes again.
    duplicates = sum(c - 1 for c in Counter(i for _, i in rows).values())
    assert duplicates <= 10 + 1  # at most one prefetch window (+ the one being written)


async def test_competing_consumers_share_one_queue(names: Names, tmp_path: Path) -> None:
    n = 400
    queue = names.queue("compete")
    out = tmp_path / "handled.txt"
    await declare(queue)
    async with child(queue, out, "a", delay=0.005), child(queue, out, "b", delay=0.005):
        await publish_items(queue, n)
        await wait_until(lambda: {i for _, i in handled(out)} == set(range(n)), timeout=60)
    rows = handled(out)
    per_consumer = Counter(name for name, _ in rows)
    assert {i for _, i in rows} == set(range(n))
    assert len(rows) == n  # nobody crashed: each message handled exactly once
    assert per_consumer["a"] > 0 and per_consumer["b"] > 0
    assert per_consumer["a"] + per_consumer["b"] == n


# --------------------------------------------------------------- broker restart
RABBITMQCTL = shutil.which("rabbitmqctl")


async def rabbitmqctl(*args: str, timeout: float = 120) -> None:
    assert RABBITMQCTL is not None
    proc = await asyncio.create_subprocess_exec(
        RABBITMQCTL, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {err.decode()}"


async def broker_answers() -> None:
    """Wait until a fresh connection opens (at most 120 s)."""

    async def poll() -> None:
        while True:
            try:
                conn = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 5)
            except Exception:
                await asyncio.sleep(0.5)
                continue
            await conn.close()
            return

    await asyncio.wait_for(poll(), 120)


@pytest.fixture
async def restartable() -> AsyncIterator[None]:
    """Guarantees the broker runs again after the test, whatever happened."""
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl is not installed here")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await rabbitmqctl("start_app")
        await broker_answers()


async def test_broker_restart_loses_no_confirmed_message(names: Names, restartable: None) -> None:
    n = 300
    queue = names.queue("restart")
    await declare(queue)
    seen: Counter[int] = Counter()
    confirmed: set[int] = set()
    failed: list[BaseException] = []

    consumer = RabbitMQConsumer.from_url(FAST_URL, queue=queue, prefetch_count=20)
    dispatcher = EventDispatcher(consumer)

    @dispatcher.handler(RabbitMQEventSubscription(queue=queue))
    async def on_item(event: Event[Item]) -> None:
        seen[event.body.i] += 1

    producer = RabbitMQProducer.from_url(FAST_URL, timeout=60)
    route = RabbitMQEventRoute(routing_key=queue)
    restarted = asyncio.Event()

    async def publisher(emitter: EventEmitter) -> None:
        for i in range(n):
            try:
                await emitter.emit(Item(i=i), route=route)
            except EmitError as exc:  # refused while the app stops: not confirmed
                failed.append(exc)
                continue
            confirmed.add(i)
            if i == n // 3:
                await restarted.wait()  # publish the rest across and after the restart

    async with dispatcher, EventEmitter(producer) as emitter:
        task = asyncio.create_task(publisher(emitter))
        await wait_until(lambda: len(confirmed) > n // 3, timeout=30)
        await rabbitmqctl("stop_app")
        try:
            # While the broker is down a send fails clearly within its own timeout.
            short = RabbitMQProducer([producer._channel.default_exchange], timeout=0.5)  # type: ignore[union-attr]
            await short.start()
            with pytest.raises(EmitTimeoutError, match="did not confirm.*within 0.5s"):
                await short.send(emitter.build(Item(i=-1), route=route))
            await short.stop()
        finally:
            restarted.set()
            await rabbitmqctl("start_app")
        await broker_answers()
        await asyncio.wait_for(task, 120)
        await wait_until(lambda: confirmed <= set(seen), timeout=120)
    assert len(confirmed) >= n - len(failed)
    assert confirmed <= set(seen)  # every confirmed message was handled
    assert -1 not in seen


async def close_connection_named(name: str) -> None:
    """Have the broker drop one connection (ours, found by its connection_name)."""
    assert RABBITMQCTL is not None
    proc = await asyncio.create_subprocess_exec(
        RABBITMQCTL, "list_connections", "pid", "client_properties", "-q",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    pids = [line.split("\t")[0] for line in out.decode().splitlines() if name in line]
    assert pids, f"no connection named {name!r}"
    for pid in pids:
        await rabbitmqctl("close_connection", pid, "dispytch test: dropped connection")


async def test_dropped_connections_mid_stream_are_survived(names: Names) -> None:
    """The broker drops the consumer's and the producer's connections mid-run: consuming
    resumes, publishing waits for the reconnection, every confirmed message is handled."""
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl is not installed here")
    n = 200
    queue = names.queue("drop")
    await declare(queue)
    tag = queue.rsplit(".", 1)[-1]
    seen: Counter[int] = Counter()
    consumer = RabbitMQConsumer.from_url(
        f"{FAST_URL}&name=dispytch-consumer-{tag}", queue=queue, prefetch_count=20
    )
    dispatcher = EventDispatcher(consumer)

    @dispatcher.handler(RabbitMQEventSubscription(queue=queue))
    async def on_item(event: Event[Item]) -> None:
        seen[event.body.i] += 1

    producer = RabbitMQProducer.from_url(f"{FAST_URL}&name=dispytch-producer-{tag}", timeout=60)
    route = RabbitMQEventRoute(routing_key=queue)
    async with dispatcher, EventEmitter(producer) as emitter:
        for i in range(n // 2):
            await emitter.emit(Item(i=i), route=route)
        await wait_until(lambda: len(seen) >= n // 4, timeout=30)
        await close_connection_named(f"dispytch-consumer-{tag}")
        await close_connection_named(f"dispytch-producer-{tag}")
        for i in range(n // 2, n):
            await emitter.emit(Item(i=i), route=route)  # waits for the reconnection
        await wait_until(lambda: set(seen) == set(range(n)), timeout=60)
    assert set(seen) == set(range(n))
