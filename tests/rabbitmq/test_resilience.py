"""Crashes, broker restarts and competing consumers, with real processes and the real broker.

The restart test stops and starts the RabbitMQ application with ``rabbitmqctl`` on a
broker of its own (a private RabbitMQ node on free loopback ports, started for this
module and removed afterwards), never the shared one other work depends on; where no
private node can be started it is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
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


async def declare(queue: str, url: str = AMQP_URL) -> None:
    conn = await aio_pika.connect(url)
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


RABBITMQ_SERVER = shutil.which("rabbitmq-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """A RabbitMQ node of the test's own: its node name, AMQP URL and ``rabbitmqctl``."""

    def __init__(self, node: str, url: str) -> None:
        self.node = node
        self.url = url
        self.fast_url = url.rstrip("/") + "/?reconnect_interval=0.5"

    async def ctl(self, *args: str, timeout: float = 120) -> None:
        await rabbitmqctl("-n", self.node, *args, timeout=timeout)

    async def answers(self) -> None:
        await broker_answers(self.url)


@pytest.fixture(scope="module")
def private_broker() -> Iterator[PrivateBroker]:
    """Start a private RabbitMQ node (own node name, data directory and free ports) for
    the tests that stop a broker; stop it and delete its data afterwards."""
    if RABBITMQCTL is None or RABBITMQ_SERVER is None:
        pytest.skip("rabbitmq-server/rabbitmqctl are not installed here (no private broker)")
    base = tempfile.mkdtemp(prefix="dispytch-rabbit-node-")
    node = f"dispytch_test_{uuid.uuid4().hex[:8]}@localhost"
    amqp_port, dist_port = _free_port(), _free_port()
    with open(os.path.join(base, "enabled_plugins"), "w") as f:
        f.write("[].")
    with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
        f.write("loopback_users = none\n")
    env = dict(
        os.environ,
        RABBITMQ_NODENAME=node,
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
        RABBITMQ_NODE_PORT=str(amqp_port),
        RABBITMQ_DIST_PORT=str(dist_port),
        RABBITMQ_MNESIA_BASE=os.path.join(base, "mnesia"),
        RABBITMQ_LOG_BASE=os.path.join(base, "log"),
        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(base, "enabled_plugins"),
        RABBITMQ_CONFIG_FILE=os.path.join(base, "rabbitmq"),
        RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(base, "advanced.config"),
        RABBITMQ_FEATURE_FLAGS_FILE=os.path.join(base, "feature_flags"),
        RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(base, "plugins_expand"),
        RABBITMQ_PID_FILE=os.path.join(base, "pid"),
    )
    if os.geteuid() == 0:  # the server script runs the node as the rabbitmq user
        shutil.chown(base, "rabbitmq", "rabbitmq")
        for name in os.listdir(base):
            shutil.chown(os.path.join(base, name), "rabbitmq", "rabbitmq")
    log = open(os.path.join(base, "server.out"), "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([RABBITMQ_SERVER], env=env, stdout=log, stderr=subprocess.STDOUT)
    # await_startup fails at once while the node is not registered yet: poll (bounded).
    for _ in range(30):
        started = subprocess.run(
            [RABBITMQCTL, "-n", node, "await_startup", "--timeout", "60"],
            capture_output=True,
            timeout=90,
        )
        if started.returncode == 0 or server.poll() is not None:
            break
        time.sleep(1)
    try:
        if started.returncode != 0:
            pytest.skip(
                f"could not start a private RabbitMQ node ({started.stderr.decode()[-300:]})"
            )
        yield PrivateBroker(node, f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
    finally:
        subprocess.run([RABBITMQCTL, "-n", node, "stop"], capture_output=True, timeout=120)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


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


async def broker_answers(url: str = AMQP_URL) -> None:
    """Wait until a fresh connection opens (at most 120 s)."""

    async def poll() -> None:
        while True:
            try:
                conn = await asyncio.wait_for(aio_pika.connect(url), 5)
            except Exception:
                await asyncio.sleep(0.5)
                continue
            await conn.close()
            return

    await asyncio.wait_for(poll(), 120)


@pytest.fixture
async def restartable(private_broker: PrivateBroker) -> AsyncIterator[PrivateBroker]:
    """The private broker, guaranteed to run again after the test, whatever happened."""
    try:
        yield private_broker
    finally:
        with contextlib.suppress(Exception):
            await private_broker.ctl("start_app")
        await private_broker.answers()


async def test_broker_restart_loses_no_confirmed_message(restartable: PrivateBroker) -> None:
    broker = restartable
    FAST_URL = broker.fast_url  # noqa: N806 (the module's name, for the private broker)
    n = 300
    queue = f"test.restart.{uuid.uuid4().hex[:10]}"
    await declare(queue, broker.url)
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
        await broker.ctl("stop_app")
        try:
            # While the broker is down a send fails clearly within its own timeout.
            short = RabbitMQProducer([producer._channel.default_exchange], timeout=0.5)  # type: ignore[union-attr]
            await short.start()
            with pytest.raises(EmitTimeoutError, match="did not confirm.*within 0.5s"):
                await short.send(emitter.build(Item(i=-1), route=route))
            await short.stop()
        finally:
            restarted.set()
            await broker.ctl("start_app")
        await broker.answers()
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
