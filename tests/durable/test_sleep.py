"""Durable sleep: the wake-up time journalled, no worker slot held meanwhile, and a worker
that stops (or dies) mid-sleep leaves the run to another, which wakes it on time. The
hour-long sleeps run on the virtual clock of ``dispytch.testing.clock``: the tests wait for
an event the run sets after it woke (a result() poll would step the clock in 0.2 s
increments), then read the result."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dispytch.durable as durable_module
from dispytch.durable import Durable, NonDeterminismError, RunFailedError
from dispytch.durable.engine import SLEEP_STEP, _now
from dispytch.testing import VirtualClock

HOUR = 3600.0


async def _until_status(handle: Any, status: str) -> None:
    for _ in range(2000):  # bounded
        if (await handle.status()).status == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the run never reached {status!r}")


async def test_an_hour_long_sleep_journals_its_wake_up_and_frees_the_worker(
    make_durable: Any,
) -> None:
    durable: Durable = make_durable(max_in_flight=1)
    ran: list[str] = []
    woke = asyncio.Event()

    @durable.function(name="sleep.before")
    async def before(x: int) -> int:
        ran.append("before")
        return x + 1

    @durable.function(name="sleep.flow")
    async def flow(x: int) -> int:
        y = await before(x)
        await durable_module.sleep(HOUR)
        ran.append("woke")
        woke.set()
        return y * 2

    @durable.function(name="sleep.other")
    async def other() -> str:
        return "done"

    async with VirtualClock(threshold=0.2), durable:
        started = time.time()
        handle = await flow.dispatch(1)
        await _until_status(handle, "sleeping")
        shown = await durable.show_run(handle.id)
        step = shown.steps["2"]
        assert step.function == SLEEP_STEP
        assert abs(float(step.outcome) - (started + HOUR)) < 60
        assert shown.run.due == float(step.outcome)  # the run's due is the wake-up
        # the one worker slot is free: another function runs meanwhile
        assert await (await other.dispatch()).result(timeout=HOUR / 2) == "done"
        assert (await handle.status()).status == "sleeping" and ran == ["before"]
        await woke.wait()
        assert _now() - started >= HOUR  # woken by the (virtual) clock, not earlier
        assert await handle.result(timeout=2 * HOUR) == 4
    assert ran == ["before", "woke"]


async def test_a_sleep_survives_its_worker_stopping(make_durable: Any) -> None:
    first: Durable = make_durable()
    second: Durable = make_durable()
    ran: list[str] = []
    woke = asyncio.Event()

    def register(durable: Durable, who: str) -> Any:
        @durable.function(name="sleep.step")
        async def step(x: int) -> int:
            ran.append(f"step@{who}")
            return x

        @durable.function(name="sleep.job")
        async def job() -> int:
            a = await step(1)
            await durable_module.sleep(2 * HOUR)
            ran.append(f"woke@{who}")
            result = a + await step(2)
            woke.set()
            return result

        return job

    job = register(first, "first")
    register(second, "second")
    async with VirtualClock(threshold=0.2):
        await first.start()
        handle = await job.dispatch()
        await _until_status(handle, "sleeping")
        due = (await handle.status()).due
        await first.stop()  # its parked message goes back to the broker
        async with second:
            await woke.wait()
            assert await second.handle(handle.id, job).result(timeout=4 * HOUR) == 3
        record = await second.store.get_run(handle.id)
        assert record is not None and record.due == due  # the journalled wake-up held
    assert ran == ["step@first", "woke@second", "step@second"]


async def test_short_sleeps_wait_in_place_and_outside_a_run_it_is_asyncio_sleep(
    durable: Durable,
) -> None:
    @durable.function(name="sleep.short")
    async def short() -> str:
        await durable_module.sleep(0.05)
        await durable_module.sleep(0)
        return "ok"

    async with durable:
        handle = await short.dispatch()
        assert await handle.result(timeout=10) == "ok"
    steps = (await durable.show_run(handle.id)).steps
    assert [steps[p].function for p in ("1", "2")] == [SLEEP_STEP, SLEEP_STEP]
    await durable_module.sleep(0.001)  # no run: a plain sleep


async def test_a_sleep_where_the_journal_has_another_step_fails_naming_it(
    make_durable: Any,
) -> None:
    old: Durable = make_durable()
    new: Durable = make_durable()

    @old.function(name="sleep.changed")
    async def v1() -> int:
        await durable_module.sleep(1.5)  # over the in-place threshold: suspends (real time)
        return 1

    @new.function(name="sleep.work")
    async def work() -> int:
        return 2

    @new.function(name="sleep.changed")
    async def v2() -> int:
        return await work()

    await old.start()
    handle = await v1.dispatch()
    await _until_status(handle, "sleeping")
    await old.stop()
    async with new:
        try:
            await new.handle(handle.id, v2).result(timeout=20)
        except RunFailedError as exc:
            assert exc.type == NonDeterminismError.__name__
            assert "step 1" in exc.message and SLEEP_STEP in exc.message
        else:
            raise AssertionError("a changed step must fail the run")


async def test_max_parked_bounds_what_a_worker_holds(make_durable: Any) -> None:
    durable: Durable = make_durable(max_in_flight=2, max_parked=3)
    assert durable.dispatcher.max_unsettled == 3
    assert make_durable(max_in_flight=2).dispatcher.max_unsettled == 8  # 4 x max_in_flight
