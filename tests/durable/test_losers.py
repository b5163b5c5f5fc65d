"""``any`` and ``race`` cancel their losers: the runs still out are marked cancelled, a
running one stops at its next step, a waiting one (over a concurrency limit) never runs."""

from __future__ import annotations

import asyncio
from collections import Counter

from dispytch.durable import Durable, RunCancelledError, race
from dispytch.durable import any as any_of


async def test_race_cancels_a_running_loser_and_a_waiting_one(durable: Durable) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    counts: Counter[str] = Counter()

    @durable.function(name="losers.mark")
    async def mark(what: str) -> str:
        counts[what] += 1
        return what

    @durable.function(name="losers.slow", concurrency=1)
    async def slow(i: int) -> str:
        await mark(f"slow{i}-begin")
        started.set()
        await release.wait()
        return await mark(f"slow{i}-end")  # a step after the cancel: never runs

    @durable.function(name="losers.fast")
    async def fast() -> str:
        async with asyncio.timeout(10):
            await started.wait()  # finish once a slow one is running
        return "fast"

    @durable.function(name="losers.racing")
    async def racing() -> str:
        return await race(slow(1), slow(2), fast())

    async with durable:
        handle = await racing.dispatch()
        assert await handle.result(timeout=20) == "fast"
        children = [f"{handle.id}/1.{i}" for i in range(3)]
        records = [await durable.store.get_run(c) for c in children]
        assert [r.status for r in records if r is not None] == [
            "cancelled",
            "cancelled",
            "succeeded",
        ]
        # past the window in which a step may start on the strength of the last write
        await asyncio.sleep(0.2)
        release.set()
        for child in children[:2]:  # the cancelled runs end as cancelled
            with_handle = durable.handle(child, slow)
            try:
                await with_handle.result(timeout=10)
            except RunCancelledError as exc:
                assert "lost the race()" in str(exc)
            else:
                raise AssertionError("a loser must be cancelled")
        await asyncio.sleep(0.2)  # a loser wrongly going on would show itself here
    begun = counts["slow1-begin"] + counts["slow2-begin"]
    assert begun == 1  # the limit let one start; the other was cancelled while waiting
    assert counts["slow1-end"] == counts["slow2-end"] == 0
    journal = await durable.show_run(handle.id)
    assert {i for i in journal.children["1"]} >= {0, 1}  # losers recorded in the slot


async def test_any_cancels_the_rest_once_one_succeeds(durable: Durable) -> None:
    release = asyncio.Event()
    ran: list[str] = []

    @durable.function(name="losers.never")
    async def never() -> int:
        await release.wait()
        ran.append("never-finished")
        return 0

    @durable.function(name="losers.fail")
    async def fail() -> int:
        raise ValueError("nope")

    @durable.function(name="losers.ok")
    async def ok() -> int:
        return 7

    @durable.function(name="losers.anyone")
    async def anyone() -> int:
        return await any_of(fail(), never(), ok())

    async with durable:
        handle = await anyone.dispatch()
        assert await handle.result(timeout=20) == 7
        statuses = [
            (await durable.store.get_run(f"{handle.id}/1.{i}")).status  # type: ignore[union-attr]
            for i in range(3)
        ]
        assert statuses == ["failed", "cancelled", "succeeded"]
        release.set()
        await asyncio.sleep(0.1)
    # the cancelled run's step-less body may finish its await, but nothing is journalled
    record = await durable.store.get_run(f"{handle.id}/1.1")
    assert record is not None and record.status == "cancelled"


async def test_outside_a_run_the_losers_are_cancelled_too(durable: Durable) -> None:
    release = asyncio.Event()

    @durable.function(name="losers.out.slow")
    async def slow() -> int:
        await release.wait()
        return 1

    @durable.function(name="losers.out.fast")
    async def fast() -> int:
        return 2

    async with durable:
        assert await race(slow(), fast()) == 2
        runs = await durable.list_runs(function=slow)
        assert [r.status for r in runs] == ["cancelled"]
        assert await any_of(slow(), fast()) == 2
        runs = await durable.list_runs(function=slow)
        assert [r.status for r in runs] == ["cancelled", "cancelled"]
        release.set()
