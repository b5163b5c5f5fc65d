"""``dispytch jobs retry`` and ``cancel`` in a process of their own, over a transport that
reaches the workers (Redis Streams, RabbitMQ): the command changes the journal and sends
the run's message; a worker (here, in the test's process) picks the run up."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dispytch.backoff import Backoff
from dispytch.durable import Durable, RunCancelledError, RunFailedError

from .test_crash import RABBITMQ, REDIS, _delete_queue

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(params=[REDIS, RABBITMQ], ids=["redis-streams", "rabbitmq"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    url: str = request.param
    name = f"durable-jobs-{uuid.uuid4().hex}"
    if url == REDIS:
        pytest.importorskip("dispytch.redis")
        options: dict[str, Any] = {"group": name, "start_id": "0"}
    else:
        pytest.importorskip("dispytch.rabbitmq")
        options = {"queue": name}
    store = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    durable = Durable(
        url,
        store=store,
        topic=name,
        consumer_options=options,
        backoff=Backoff(initial=0.01, factor=2.0, cap=0.05),
    )
    yield {"durable": durable, "url": url, "store": store, "topic": name}
    await durable.stop()
    if url == REDIS:
        import redis.asyncio as aredis

        client = aredis.Redis(host="127.0.0.1", port=6379)
        await client.delete(name)  # our own stream only
        await client.aclose()
    else:
        await _delete_queue(name)


async def _jobs(setup: dict[str, Any], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dispytch.cli", "jobs", *argv,
        "--store", setup["store"], "--transport", setup["url"], "--topic", setup["topic"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_retry_from_the_command_line(setup: dict[str, Any]) -> None:
    durable: Durable = setup["durable"]
    ran = {"first": 0, "second": 0}
    broken = {"on": True}

    @durable.function(name="jobs.first")
    async def first(x: int) -> int:
        ran["first"] += 1
        return x + 1

    @durable.function(name="jobs.second")
    async def second(x: int) -> int:
        ran["second"] += 1
        if broken["on"]:
            raise ValueError("misconfigured")
        return x * 10

    @durable.function(name="jobs.job")
    async def job(x: int) -> int:
        return await second(await first(x))

    async with durable:
        handle = await job.dispatch(1)
        with pytest.raises(RunFailedError, match="misconfigured"):
            await handle.result(timeout=30)
        broken["on"] = False  # the operator fixed it
        code, out, err = await _jobs(setup, "retry", handle.id)
        assert code == 0, err
        assert out.startswith(f"Run {handle.id} was failed; it starts over (now ")
        assert await handle.result(timeout=30) == 20
        code, _, err = await _jobs(setup, "retry", handle.id)
        assert code == 1 and "is succeeded; only a failed, dead or cancelled run" in err
    assert ran == {"first": 1, "second": 2}  # the finished step was not redone


async def test_cancel_from_the_command_line(setup: dict[str, Any]) -> None:
    durable: Durable = setup["durable"]

    @durable.function(name="jobs.never")
    async def never() -> None:
        raise AssertionError("a cancelled run never runs")

    async with durable:  # a worker once: its queue (RabbitMQ) or group (Redis) exists
        pass
    await durable.connect()
    handle = await never.dispatch()  # no worker now: pending, its message on the broker
    code, out, err = await _jobs(setup, "cancel", handle.id, "--reason", "not needed")
    assert code == 0, err
    assert out == f"Cancelled 1 run(s):\n  {handle.id}\n"
    async with durable:  # the worker settles the run's messages without running it
        with pytest.raises(RunCancelledError, match="not needed"):
            await handle.result(timeout=30)
