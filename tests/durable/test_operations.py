"""Operations on runs through the Durable API (what ``dispytch jobs`` uses): list with
filters, show with steps, retry a failed or dead run, cancel a pending, waiting or
running one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from dispytch.durable import (
    Durable,
    DurableError,
    RunCancelledError,
    RunFailedError,
    gather,
)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


async def test_list_and_show_runs(durable: Durable) -> None:
    @durable.function(name="ops.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @durable.function(name="ops.broken")
    async def broken(x: int) -> int:
        raise ValueError(f"no {x}")

    @durable.function(name="ops.flow")
    async def flow(x: int) -> int:
        total = await add(x, 1)
        try:
            await broken(total)
        except (ValueError, RunFailedError):  # as raised, or as replayed
            pass
        return await add(total, 1)

    async with durable:
        ok = await flow.dispatch(1)
        assert await ok.result(timeout=10) == 3
        bad = await broken.dispatch(7)
        with pytest.raises(RunFailedError):
            await bad.result(timeout=10)

    runs = await durable.list_runs()
    assert [r.id for r in runs] == [bad.id, ok.id]  # newest first
    assert [r.id for r in await durable.list_runs(status="failed")] == [bad.id]
    assert [r.id for r in await durable.list_runs(status={"succeeded", "dead"})] == [ok.id]
    assert [r.id for r in await durable.list_runs(function=flow)] == [ok.id]
    assert [r.id for r in await durable.list_runs(function="ops.broken")] == [bad.id]
    assert len(await durable.list_runs(limit=1)) == 1

    shown = await durable.show_run(ok.id)
    assert shown.run.status == "succeeded" and shown.run.attempts == 0
    assert shown.run.created <= shown.run.updated
    assert [(p, s.function, s.status) for p, s in sorted(shown.steps.items())] == [
        ("1", "ops.add", "ok"),
        ("2", "ops.broken", "error"),
        ("3", "ops.add", "ok"),
    ]
    assert shown.steps["1"].outcome == "2" and shown.steps["1"].created >= shown.run.created
    error = json.loads(shown.steps["2"].outcome)
    assert error["type"] == "ValueError" and error["message"] == "no 2"
    assert "Traceback" in error["traceback"]
    failed = await durable.show_run(bad.id)
    assert json.loads(failed.run.outcome or "{}")["message"] == "no 7"
    with pytest.raises(DurableError, match="No run"):
        await durable.show_run("missing")


async def test_retry_a_failed_run_redoes_only_the_failed_step(durable: Durable) -> None:
    ran: dict[str, int] = {"first": 0, "second": 0}
    broken = {"on": True}

    @durable.function(name="ops.first")
    async def first(x: int) -> int:
        ran["first"] += 1
        return x + 1

    @durable.function(name="ops.second")
    async def second(x: int) -> int:
        ran["second"] += 1
        if broken["on"]:
            raise ValueError("misconfigured")
        return x * 10

    @durable.function(name="ops.job")
    async def job(x: int) -> int:
        return await second(await first(x))

    async with durable:
        handle = await job.dispatch(1)
        with pytest.raises(RunFailedError, match="misconfigured"):
            await handle.result(timeout=10)
        assert await durable.cancel(handle.id) == []  # a failed run is over
        broken["on"] = False  # the operator fixed it
        record = await durable.retry(handle.id)
        assert record.status == "pending" and record.attempts == 0 and record.outcome is None
        assert await handle.result(timeout=10) == 20
        with pytest.raises(DurableError, match="is succeeded; only a failed"):
            await durable.retry(handle.id)
    assert ran == {"first": 1, "second": 2}
    with pytest.raises(DurableError, match="No run"):
        await durable.retry("missing")


async def test_retry_a_dead_run_gives_it_a_new_budget(make_durable: Any) -> None:
    durable: Durable = make_durable(max_attempts=2)
    calls = {"n": 0}

    @durable.function(name="ops.flaky")
    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise TimeoutError("upstream down")
        return "up"

    try:
        async with durable:
            handle = await flaky.dispatch()
            with pytest.raises(RunFailedError, match="upstream down"):
                await handle.result(timeout=10)
            assert (await handle.status()).status == "dead"
            await durable.retry(handle.id)
            assert await handle.result(timeout=10) == "up"
    finally:
        await durable.stop()
    assert calls["n"] == 3


async def test_cancel_a_pending_run(durable: Durable) -> None:
    @durable.function(name="ops.never")
    async def never() -> None:
        raise AssertionError("a cancelled run never runs")

    handle = await never.dispatch()  # no worker yet: it stays pending
    assert (await handle.status()).status == "pending"
    assert await handle.cancel(reason="not needed") == [handle.id]
    assert await handle.cancel() == []  # over already
    async with durable:  # the worker drains the tick without running it
        with pytest.raises(RunCancelledError, match="not needed"):
            await handle.result(timeout=10)
    assert (await handle.status()).status == "cancelled"
    with pytest.raises(DurableError, match="No run"):
        await durable.cancel("missing")


async def test_cancel_a_running_run_stops_at_its_next_step(durable: Durable) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    @durable.function(name="ops.slow")
    async def slow() -> str:
        ran.append("slow")
        started.set()
        await release.wait()
        return "late"

    @durable.function(name="ops.after")
    async def after(x: str) -> str:
        ran.append("after")
        return x

    @durable.function(name="ops.long")
    async def long() -> str:
        return await after(await slow())

    async with durable:
        handle = await long.dispatch()
        async with asyncio.timeout(10):
            await started.wait()
        assert (await handle.status()).status == "running"
        assert await handle.cancel() == [handle.id]
        release.set()
        with pytest.raises(RunCancelledError):
            await handle.result(timeout=10)
        await asyncio.sleep(0.1)  # give a wrongly continuing run the time to show itself
    assert ran == ["slow"]  # the step in flight finished; the next one never started
    shown = await durable.show_run(handle.id)
    assert shown.run.status == "cancelled" and shown.steps == {}  # its result not journalled


async def test_cancel_a_waiting_parent_cancels_its_children(durable: Durable) -> None:
    release = asyncio.Event()
    started: list[int] = []

    @durable.function(name="ops.child")
    async def child(i: int) -> int:
        started.append(i)
        await release.wait()
        return i

    @durable.function(name="ops.parent")
    async def parent() -> list[int]:
        return await gather(child(1), child(2))

    async with durable:
        handle = await parent.dispatch()

        async def both_started() -> bool:
            return len(started) == 2

        await _until(both_started)
        ids = await handle.cancel()
        assert ids == sorted([handle.id, f"{handle.id}/1.0", f"{handle.id}/1.1"])
        release.set()
        with pytest.raises(RunCancelledError):
            await handle.result(timeout=10)
        for cid in ids[1:]:
            assert (await durable.store.get_run(cid)).status == "cancelled"  # type: ignore[union-attr]
