"""The durable crash cases (tests/durable_brokers/test_crash.py) with the journal in Redis:
Redis Streams carries the runs, the Redis journal store keeps the steps, leases and
attempt counts. A worker process is SIGKILLed in the middle of step 2 of 3 (another
worker process finishes the run, steps 1 and 3 once each), and during a retry backoff
(the attempt count goes on)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.durable_brokers.test_crash import (
    test_sigkill_during_a_retry_backoff_keeps_the_attempt_count,
    test_sigkill_in_step_2_another_worker_finishes,
)
from tests.redis.redis_support import REDIS_URL, STREAMS_URL

pytestmark = [pytest.mark.broker, pytest.mark.slow]

__all__ = [
    "test_sigkill_during_a_retry_backoff_keeps_the_attempt_count",
    "test_sigkill_in_step_2_another_worker_finishes",
]


@pytest.fixture
def crash_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """What the crash cases' workers and caller read (see crash_app.py), with
    ``CRASH_STORE`` naming a Redis journal under a prefix of this test's own."""
    tag = uuid.uuid4().hex
    prefix = f"test.crash.{tag[:12]}:"
    env = {
        **os.environ,
        "CRASH_DIR": str(tmp_path),
        "CRASH_URL": STREAMS_URL,
        "CRASH_STREAM": f"durable-crash-{tag}",
        "CRASH_GROUP": f"durable-crash-{tag}",
        # the local server runs without AOF: the override, said out loud
        "CRASH_STORE": f"{REDIS_URL}?prefix={prefix}&allow_volatile=true",
    }
    yield env
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        assert any(k.startswith(f"{prefix}run:".encode()) for k in keys), "no run in Redis"
        client.delete(env["CRASH_STREAM"], *keys)  # our own stream and journal only
    finally:
        client.close()
