"""The app the crash test runs in worker processes (``dispytch run crash_app:durable``).

Side effects are counted as lines appended to files in ``$CRASH_DIR``; step 2 blocks on
its first execution until the test creates ``$CRASH_DIR/release`` (the test kills the
worker meanwhile).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from dispytch.backoff import Backoff
from dispytch.durable import Durable, RunFailedError

DIR = Path(os.environ["CRASH_DIR"])

URL = os.environ["CRASH_URL"]
if URL.startswith("redis"):
    # a killed member's entries are reclaimed (XAUTOCLAIM) after a second
    options = {
        "group": os.environ["CRASH_GROUP"],
        "min_idle_time": 1.0,
        "claim_interval": 0.2,
        "start_id": "0",
    }
elif URL.startswith("kafka"):
    # a killed member leaves the group when its session times out (3 s); the partition's
    # next owner resumes from the last committed offset, below the run's tick
    options = {
        "group_id": os.environ["CRASH_GROUP"],
        "session_timeout_ms": 3000,
        "heartbeat_interval_ms": 500,
        "commit_interval": 0.05,
    }
else:  # RabbitMQ: a killed worker's channel closes and its unacked message is requeued
    options = {"queue": os.environ["CRASH_GROUP"]}

durable = Durable(
    URL,
    # CRASH_STORE: another journal (tests/redis runs these cases on its Redis store)
    store=os.environ.get("CRASH_STORE") or f"sqlite:///{DIR / 'journal.sqlite3'}",
    topic=os.environ["CRASH_STREAM"],
    consumer_options=options,
    lease_ttl=2.0,
    backoff=Backoff(initial=1.0, factor=1.0, cap=1.0),
)


def bump(name: str) -> None:
    with open(DIR / f"{name}.count", "a") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())


@durable.function(name="crash.step1")
async def step1(x: int) -> int:
    bump("step1")
    return x + 1


@durable.function(name="crash.step2")
async def step2(x: int) -> int:
    bump("step2")
    if not (DIR / "release").exists():
        (DIR / "step2.started").write_text(str(os.getpid()))
        for _ in range(1200):  # bounded: 60 s, the test kills this process long before
            if (DIR / "release").exists():
                break
            await asyncio.sleep(0.05)
    return x * 10


@durable.function(name="crash.step3")
async def step3(x: int) -> int:
    bump("step3")
    return x + 5


@durable.function(name="crash.flow")
async def flow(x: int) -> int:
    result = await step3(await step2(await step1(x)))
    bump("flow_end")
    return result


@durable.function(name="crash.always_down", max_attempts=3)
async def always_down() -> None:
    bump("attempt")
    raise ConnectionError("the upstream refuses")


__all__ = ["RunFailedError", "durable"]
