"""``dispytch run --workers 3`` on Kafka (Tansu), RabbitMQ and Redis Streams: three
processes share a run of events through the broker's consumer groups, a killed worker
loses nothing and is started again, SIGTERM to the parent stops every worker gracefully.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dispytch import EventEmitter, TopicRoute

from .conftest import AMQP_URL, REDIS_URL, Supervised, eventually
from .worker_app import Job

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = 2000
PARTITIONS = 6


@dataclass
class Broker:
    name: str  # topic / queue / stream
    consumer_url: str  # what the workers build their dispatcher from
    producer_url: str
    kind: str


async def _emit(broker: Broker) -> None:
    route = TopicRoute(topic=broker.name)
    async with EventEmitter.from_url(broker.producer_url) as emitter:
        for start in range(0, EVENTS, 200):
            for n in range(start, start + 200):
                await emitter.emit(Job(n=n), route=route, key=str(n))


@pytest.fixture(params=["kafka", "rabbitmq", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    name = f"workers.{uuid.uuid4().hex[:10]}"
    kind = request.param
    if kind == "kafka":
        pytest.importorskip("dispytch.kafka")
        bootstrap = request.getfixturevalue("kafka_bootstrap")

        async def create() -> None:
            from aiokafka.admin import AIOKafkaAdminClient, NewTopic

            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                await asyncio.wait_for(admin.create_topics([NewTopic(name, PARTITIONS, 1)]), 20)
            finally:
                await admin.close()

        asyncio.run(create())
        yield Broker(name, f"kafka://{bootstrap}?group_id=g-{name}", f"kafka://{bootstrap}", kind)
    elif kind == "rabbitmq":
        pytest.importorskip("dispytch.rabbitmq")
        yield Broker(name, f"{AMQP_URL}?group={name}", AMQP_URL, kind)

        async def drop() -> None:
            import aio_pika

            conn = await aio_pika.connect(AMQP_URL)
            async with conn:
                channel = await conn.channel()
                await channel.queue_delete(name)

        asyncio.run(drop())
    else:
        pytest.importorskip("dispytch.redis")
        base = REDIS_URL.replace("redis://", "redis+streams://", 1)
        yield Broker(name, f"{base}?group=g-{name}&min_idle_time=2", base, kind)

        async def drop_stream() -> None:
            import redis.asyncio as aredis

            client = aredis.Redis.from_url(REDIS_URL)
            try:
                await client.delete(name)
            finally:
                await client.aclose()

        asyncio.run(drop_stream())


def _kafka_settled(run: Supervised) -> bool:
    """Every worker holds some of the partitions, and together all of them."""
    latest: dict[str, int] = {}
    for line in run.lines:
        m = re.search(r"pid (\d+)\].*Setting newly assigned partitions (.*) for group", line)
        if m:
            latest[m.group(1)] = m.group(2).count("partition=")
    return len(latest) == 3 and all(latest.values()) and sum(latest.values()) == PARTITIONS


def _start(supervise, broker: Broker) -> Supervised:  # type: ignore[no-untyped-def]
    run = supervise({"WORKERS_URL": broker.consumer_url, "WORKERS_TOPIC": broker.name})
    eventually(lambda: len(run.running()) == 3, "3 workers running\n" + run.log(), 60)
    if broker.kind == "kafka":
        eventually(lambda: _kafka_settled(run), "the partitions shared by 3 workers", 90)
    return run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_gracefully(run: Supervised) -> None:
    run.terminate()
    log = run.log()
    assert run.proc.returncode == 0, log[-3000:]
    assert "Every worker stopped." in log
    assert "killing them" not in log  # each stopped within its stop timeout
    assert "stopped with code" not in log  # and exited 0
    for _, pid in run.started():
        assert not _alive(pid)


def test_three_workers_share_the_events(supervise, broker: Broker) -> None:  # type: ignore[no-untyped-def]
    run = _start(supervise, broker)
    asyncio.run(_emit(broker))
    eventually(lambda: len(run.counts()) == EVENTS, f"all {EVENTS} events handled", 120)
    counts = run.counts()
    assert sorted(counts) == list(range(EVENTS))
    assert set(counts.values()) == {1}  # none twice: nothing failed
    per_worker = {pid: len(ns) for pid, ns in run.handled().items()}
    assert len(per_worker) == 3 and all(per_worker.values()), per_worker
    _stop_gracefully(run)


def test_a_killed_worker_loses_nothing_and_is_restarted(supervise, broker: Broker) -> None:  # type: ignore[no-untyped-def]
    run = _start(supervise, broker)
    asyncio.run(_emit(broker))
    eventually(lambda: sum(run.counts().values()) >= EVENTS // 5, "a fifth handled", 120)
    index, victim = run.started()[0]
    os.kill(victim, signal.SIGKILL)
    restarted = eventually(
        lambda: [s for s in run.started()[3:] if s[0] == index], "the worker restarted", 60
    )
    assert restarted[0][1] != victim
    eventually(lambda: restarted[0][1] in run.running(), "the restarted worker running", 60)
    eventually(lambda: len(run.counts()) == EVENTS, f"all {EVENTS} events handled", 180)
    counts = run.counts()
    assert sorted(counts) == list(range(EVENTS))
    twice = {n for n, c in counts.items() if c > 1}
    # Only what the killed worker handled but never acknowledged came again.
    assert twice <= set(run.handled().get(victim, [])), sorted(twice)[:20]
    assert f"Worker {index} (pid {victim}) died with code -9; restarting it" in run.log()
    _stop_gracefully(run)
