"""SIGKILL a worker process in the middle of step 2 of 3; another worker process finishes
the run from the journal. On Redis Streams (redelivery by XAUTOCLAIM), RabbitMQ (the
dead worker's channel closes, its unacked message is requeued) and Kafka on Tansu (the
dead member's session times out, the partition's next owner reads from the last committed
offset); a SQLite journal file shared by the caller and both workers."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REDIS = "redis+streams://127.0.0.1:6379"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
KAFKA = "kafka"  # kafka://<Tansu's address>, known once the broker runs
HERE = Path(__file__).parent


async def _create_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await asyncio.wait_for(admin.create_topics([NewTopic(topic, 1, 1)]), 20)
    finally:
        await admin.close()


@pytest.fixture(params=[REDIS, RABBITMQ, KAFKA], ids=["redis-streams", "rabbitmq", "kafka"])
def crash_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex
    url = request.param
    if url == KAFKA:
        pytest.importorskip("dispytch.kafka")
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        url = f"kafka://{bootstrap}"
        asyncio.run(_create_topic(bootstrap, f"durable-crash-{tag}"))
    env = {
        **os.environ,
        "CRASH_DIR": str(tmp_path),
        "CRASH_URL": url,
        "CRASH_STREAM": f"durable-crash-{tag}",
        "CRASH_GROUP": f"durable-crash-{tag}",
    }
    yield env
    if request.param == KAFKA:
        return  # Tansu runs on memory storage for this session only
    if request.param == REDIS:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        client.delete(env["CRASH_STREAM"])  # our own stream only
        client.close()
    else:
        asyncio.run(_delete_queue(env["CRASH_GROUP"]))


async def _delete_queue(name: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)  # our own queue only


def _worker(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    """``dispytch run crash_app:durable`` in a new process (its log in CRASH_DIR)."""
    code = "import sys; from dispytch.cli import main; sys.exit(main())"
    with open(Path(env["CRASH_DIR"]) / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, "run", "crash_app:durable", "--app-dir", str(HERE)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _load_app(env: dict[str, str]) -> ModuleType:
    old = {k: os.environ.get(k) for k in env if k.startswith("CRASH_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("CRASH_")})
    try:
        spec = importlib.util.spec_from_file_location(
            f"crash_app_{uuid.uuid4().hex}", HERE / "crash_app.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _running(directory: Path, name: str) -> bool:
    """The worker logged that it runs (its queue or group exists from then on)."""
    log = directory / f"{name}.log"
    return log.exists() and "Running crash_app:durable" in log.read_text()


def _count(directory: Path, name: str) -> int:
    path = directory / f"{name}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def _until(predicate: object, what: str, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_sigkill_in_step_2_another_worker_finishes(crash_env: dict[str, str]) -> None:
    directory = Path(crash_env["CRASH_DIR"])
    app = _load_app(crash_env)  # the caller: dispatches and reads the result, runs nothing
    first = _worker(crash_env, "first")
    second: subprocess.Popen[bytes] | None = None
    try:
        await _until(lambda: _running(directory, "first"), "the first worker to start")
        handle = await app.flow.dispatch(1)
        await _until(lambda: (directory / "step2.started").exists(), "step 2 to start")
        assert int((directory / "step2.started").read_text()) == first.pid
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
        (directory / "release").write_text("go")
        second = _worker(crash_env, "second")
        assert await handle.result(timeout=60) == 25
        record = await handle.status()
        assert record.status == "succeeded" and record.outcome == "25"
        journal = await app.durable.store.load(handle.id)
        assert journal is not None and sorted(journal.steps) == ["1", "2", "3"]
        assert _count(directory, "step1") == 1
        assert 1 <= _count(directory, "step2") <= 2
        assert _count(directory, "step3") == 1
        assert _count(directory, "flow_end") == 1
        pids = {int(p) for p in (directory / "step3.count").read_text().split()}
        assert pids == {second.pid}  # another process finished it
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        await app.durable.stop()
        for name in ("first", "second"):
            log = directory / f"{name}.log"
            if log.exists():
                sys.stderr.write(f"--- {name} worker ---\n{log.read_text()[-4000:]}\n")


async def test_sigkill_during_a_retry_backoff_keeps_the_attempt_count(
    crash_env: dict[str, str],
) -> None:
    directory = Path(crash_env["CRASH_DIR"])
    app = _load_app(crash_env)
    first = _worker(crash_env, "first")
    second: subprocess.Popen[bytes] | None = None
    try:
        await _until(lambda: _running(directory, "first"), "the first worker to start")
        handle = await app.always_down.dispatch()
        await _until(lambda: _count(directory, "attempt") == 1, "the first attempt")
        for _ in range(600):  # bounded: until attempt 1 is journalled as failed
            record = await handle.status()
            if record.status == "retrying":
                break
            await asyncio.sleep(0.05)
        assert record.status == "retrying" and record.attempts == 1
        first.send_signal(signal.SIGKILL)  # in the backoff between attempts 1 and 2
        assert first.wait(timeout=30) == -signal.SIGKILL
        assert _count(directory, "attempt") == 1
        second = _worker(crash_env, "second")
        with pytest.raises(app.RunFailedError) as info:
            await handle.result(timeout=60)
        assert info.value.type == "ConnectionError"
        record = await handle.status()
        assert record.status == "dead" and record.attempts == 2
        assert _count(directory, "attempt") == 3  # 3 in all, not 1 + 3
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        await app.durable.stop()
