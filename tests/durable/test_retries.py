"""Retries: transient errors retried with backoff, the attempt count journalled before the
redelivery; permanent errors fail at once; exhausted runs are dead with their journal."""

from __future__ import annotations

from typing import Any

import pytest
from dispytch.durable import Durable, IdempotencyConflictError, RunFailedError


async def test_transient_errors_are_retried_and_counted(durable: Durable) -> None:
    attempts = {"n": 0}

    @durable.function
    async def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise TimeoutError("slow upstream")
        return "done"

    async with durable:
        handle = await flaky.dispatch()
        assert await handle.result(timeout=10) == "done"
    record = await handle.status()
    assert attempts["n"] == 3 and record.attempts == 2  # two failed attempts journalled


async def test_permanent_errors_fail_at_once(durable: Durable) -> None:
    calls = {"n": 0}

    @durable.function
    async def wrong() -> None:
        calls["n"] += 1
        raise ValueError("bad input")

    async with durable:
        handle = await wrong.dispatch()
        with pytest.raises(RunFailedError, match="bad input"):
            await handle.result(timeout=10)
    assert calls["n"] == 1 and (await handle.status()).status == "failed"


async def test_exhausted_runs_are_dead_and_keep_their_journal(make_durable: Any) -> None:
    durable: Durable = make_durable(max_attempts=3)
    calls = {"step": 0, "run": 0}

    @durable.function
    async def step() -> int:
        calls["step"] += 1
        return 1

    @durable.function
    async def always_down() -> None:
        await step()
        calls["run"] += 1
        raise ConnectionError("refused")

    async with durable:
        handle = await always_down.dispatch()
        with pytest.raises(RunFailedError) as info:
            await handle.result(timeout=10)
    assert info.value.type == "ConnectionError" and info.value.retryable
    assert calls == {"step": 1, "run": 3}
    record = await handle.status()
    assert record.status == "dead" and record.attempts == 2
    journal = await durable.store.load(handle.id)
    assert journal is not None and journal.steps["1"].status == "ok"
    await durable.stop()


async def test_the_classifier_is_overridable(make_durable: Any) -> None:
    class RateLimited(Exception):
        pass

    durable: Durable = make_durable(is_transient=lambda exc: isinstance(exc, RateLimited))
    calls = {"n": 0}

    @durable.function
    async def throttled() -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RateLimited("429")
        return calls["n"]

    assert await durable.run(throttled(), timeout=10) == 2
    await durable.stop()


async def test_own_retryable_attribute_decides(durable: Durable) -> None:
    class Flagged(Exception):
        retryable = True

    calls = {"n": 0}

    @durable.function(max_attempts=2)
    async def f() -> None:
        calls["n"] += 1
        raise Flagged("again")

    async with durable:
        with pytest.raises(RunFailedError):
            await (await f.dispatch()).result(timeout=10)
    assert calls["n"] == 2


async def test_idempotency_same_arguments_one_run(durable: Durable) -> None:
    calls = {"n": 0}

    @durable.function
    async def charge(amount: int) -> str:
        calls["n"] += 1
        return f"charged {amount}"

    async with durable:
        first = await charge(10).dispatch(id="order-1")
        assert await first.result(timeout=10) == "charged 10"
        second = await charge(10).dispatch(id="order-1")
        assert second.id == first.id
        assert await second.result(timeout=10) == "charged 10"
        with pytest.raises(IdempotencyConflictError, match="order-1"):
            await charge(11).dispatch(id="order-1")
    assert calls["n"] == 1
