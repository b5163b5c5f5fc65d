"""The core API over the memory transport and a SQLite journal: dispatch, results from
another Durable (as another process would), run(), sync functions, steps and replay."""

from __future__ import annotations

import asyncio
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
from dispytch.backoff import Backoff
from dispytch.durable import (
    Durable,
    NonDeterminismError,
    RunFailedError,
    SQLiteJournalStore,
    gather,
)


def test_pickle_is_unusable_here() -> None:
    with pytest.raises(AssertionError, match="pickle was used"):
        pickle.dumps(1)
    with pytest.raises(AssertionError, match="pickle was used"):
        pickle.loads(b"")


async def test_dispatch_and_result(durable: Durable) -> None:
    @durable.function
    async def double(x: int) -> int:
        return 2 * x

    async with durable:
        call = await double.dispatch(21)
        assert isinstance(call.id, str) and call.id
        assert await call.result(timeout=10) == 42
        record = await call.status()
        assert record.status == "succeeded"


async def test_a_run_finished_here_wakes_its_waiter_with_the_outcome(durable: Durable) -> None:
    # A worker of this process hands the stored outcome to the waiter: no read of the run
    # while it executes here (the one read is the check before the worker took it), and
    # the value, or the error, comes back as its type.
    started = asyncio.Event()
    release = asyncio.Event()

    @durable.function
    async def slow(x: int) -> tuple[int, str]:
        started.set()
        await release.wait()
        if x < 0:
            raise ValueError("negative")
        return x, "done"

    reads = 0
    store = durable.store
    real_get_run = store.get_run

    async def counting_get_run(run_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await real_get_run(run_id)

    async with durable:
        store.get_run = counting_get_run  # type: ignore[method-assign]
        for x, expected in ((3, (3, "done")), (-1, None)):
            started.clear()
            release.clear()
            reads = 0
            call = await slow.dispatch(x)
            await asyncio.wait_for(started.wait(), 10)
            waiter = asyncio.create_task(call.result(timeout=10))
            await asyncio.sleep(0.3)  # many poll intervals (2 ms and up) while it runs here
            assert reads == 0
            release.set()
            if expected is None:
                with pytest.raises(RunFailedError, match="negative"):
                    await waiter
            else:
                assert await waiter == expected
            assert reads == 0
        assert durable._finals == {} and durable._local == {} and durable._waiters == {}


async def test_result_read_from_the_store_by_another_durable(
    make_durable: Any, journal_path: Path
) -> None:
    worker: Durable = make_durable()
    reader = Durable(worker.transport, store=SQLiteJournalStore(journal_path), topic=worker.topic)

    @worker.function(name="shout")
    def shout(text: str) -> str:
        return text.upper()

    @reader.function(name="shout")
    def shout_there(text: str) -> str:  # the reader's copy is never run here
        raise AssertionError("the reader has no worker")

    async with worker:
        handle = await shout_there.dispatch("hi")
        assert await reader.handle(handle.id, shout_there).result(timeout=10) == "HI"
    await reader.stop()


async def test_sync_function_runs_in_a_worker_thread(durable: Durable) -> None:
    threads: list[str] = []

    @durable.function
    def where() -> str:
        threads.append(threading.current_thread().name)
        return "ok"

    assert await durable.run(where(), timeout=10) == "ok"
    assert threads and threads[0] != threading.main_thread().name


async def test_run_starts_and_stops_a_worker(durable: Durable) -> None:
    @durable.function
    async def one() -> int:
        return 1

    assert await durable.run(one(), timeout=10) == 1
    assert not durable.running


async def test_steps_are_journalled_and_replay_does_not_rerun_them(durable: Durable) -> None:
    runs: dict[str, int] = {"a": 0, "b": 0, "boom": 0}
    gate = {"fail": True}

    @durable.function
    async def a(x: int) -> int:
        runs["a"] += 1
        return x + 1

    @durable.function
    async def b(x: int) -> int:
        runs["b"] += 1
        if gate["fail"]:
            gate["fail"] = False
            raise ConnectionError("the service is down")  # transient: the run is retried
        return x * 10

    @durable.function
    async def pipeline(x: int) -> int:
        y = await a(x)
        return await b(y)

    assert await durable.run(pipeline(1), timeout=10) == 20
    assert runs["a"] == 1  # replayed from the journal on the second attempt
    assert runs["b"] == 2


async def test_nested_steps_keep_their_positions(durable: Durable) -> None:
    counts = {"leaf": 0}
    gate = {"fail": True}

    @durable.function
    async def leaf(x: int) -> int:
        counts["leaf"] += 1
        return x

    @durable.function
    async def middle(x: int) -> int:
        return await leaf(x) + await leaf(x + 1)

    @durable.function
    async def flaky() -> int:
        if gate["fail"]:
            gate["fail"] = False
            raise TimeoutError("slow")
        return 100

    @durable.function
    async def top() -> int:
        return await middle(1) + await flaky()

    assert await durable.run(top(), timeout=10) == 103
    assert counts["leaf"] == 2  # middle's result came from the journal on replay


async def test_changed_code_fails_the_run_naming_the_step(
    make_durable: Any,
) -> None:
    first: Durable = make_durable(backoff=Backoff(initial=0.5, cap=0.5))
    release = asyncio.Event()

    @first.function(name="s1")
    async def s1(x: int) -> int:
        return x

    @first.function(name="s2")
    async def s2(x: int) -> int:
        await release.wait()
        return x

    @first.function(name="flow")
    async def flow(x: int) -> int:
        await s1(x)
        await asyncio.sleep(0)
        raise ConnectionError("crash before step 2")  # retried later, by the new code

    await first.start()
    handle = await flow.dispatch(5)
    for _ in range(500):  # step 1 journalled, the run waits for its retry
        record = await handle.status()
        if record.status == "retrying":
            break
        await asyncio.sleep(0.01)
    assert record.status == "retrying" and record.attempts == 1
    await first.stop(timeout=0.05)  # the waiting tick is handed back to the broker
    # "Deploy" a version whose step 1 calls something else.
    second: Durable = make_durable()

    @second.function(name="other")
    async def other(x: int) -> int:
        return x

    @second.function(name="flow")
    async def flow2(x: int) -> int:
        await other(x)
        return x

    async with second:
        with pytest.raises(RunFailedError) as info:
            await second.handle(handle.id, flow2).result(timeout=10)
    assert info.value.type == "NonDeterminismError"
    assert "step 1" in info.value.message and "s1" in info.value.message
    assert "other" in info.value.message
    assert (await second.store.get_run(handle.id)).status == "failed"  # type: ignore[union-attr]
    release.set()


async def test_gather_results_in_input_order(durable: Durable) -> None:
    @durable.function
    async def square(x: int) -> int:
        await asyncio.sleep(0.001 * (5 - x))  # finish out of order
        return x * x

    @durable.function
    async def fan_out(n: int) -> list[int]:
        return await gather(*[square(i) for i in range(n)])

    assert await durable.run(fan_out(5), timeout=20) == [0, 1, 4, 9, 16]


async def test_gather_outside_a_run(durable: Durable) -> None:
    @durable.function
    async def inc(x: int) -> int:
        return x + 1

    async with durable:
        assert await gather(inc(1), inc(2)) == [2, 3]


async def test_awaiting_a_call_outside_a_run_dispatches_and_waits(durable: Durable) -> None:
    @durable.function
    async def inc(x: int) -> int:
        return x + 1

    async with durable:
        assert await inc(41) == 42


def test_nondeterminism_error_is_exported() -> None:
    assert issubclass(NonDeterminismError, Exception)


async def test_stop_mid_step_hands_the_run_back_and_gives_the_lease_up(
    make_durable: Any,
) -> None:
    first: Durable = make_durable()
    started = asyncio.Event()
    counts = {"n": 0}

    @first.function(name="blocking")
    async def blocking() -> int:
        counts["n"] += 1
        started.set()
        await asyncio.Event().wait()  # until cancelled by the stop
        return 0

    await first.start()
    handle = await blocking.dispatch()
    await asyncio.wait_for(started.wait(), 10)
    await first.stop(timeout=0.05)
    record = await first.store.get_run(handle.id)
    assert record is not None and record.lease_until == 0 and not record.final
    await first.store.close()
    second: Durable = make_durable()

    @second.function(name="blocking")
    async def blocking_fixed() -> int:
        return 7

    async with second:  # the handed-back tick, resumed at once (no lease to wait for)
        assert await second.handle(handle.id, blocking_fixed).result(timeout=10) == 7
    assert counts["n"] == 1
