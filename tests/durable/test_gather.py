"""gather: children as their own runs, completions journalled into the parent's slot
(first write wins), the last child wakes the parent; duplicates change nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from dispytch.durable import ChildOutcome, Durable, RunFailedError, gather


async def test_gather_of_100_with_duplicated_ticks_resumes_the_parent_once(
    durable: Durable,
) -> None:
    executions: Counter[int] = Counter()
    after_gather = {"n": 0}
    original = durable._send_tick

    async def twice(run_id: str) -> None:  # every tick delivered twice: at-least-once
        await original(run_id)
        await original(run_id)

    durable._send_tick = twice  # type: ignore[method-assign]

    @durable.function
    async def child(i: int) -> int:
        executions[i] += 1
        await asyncio.sleep(0)
        return i * 3

    @durable.function
    async def parent(n: int) -> list[int]:
        values = await gather(*[child(i) for i in range(n)])
        after_gather["n"] += 1  # plain code after the gather: runs once per resume
        return values

    async with durable:
        handle = await parent.dispatch(100)
        assert await handle.result(timeout=60) == [i * 3 for i in range(100)]
        # let the duplicate ticks still in flight drain: each must be a no-op
        for _ in range(200):
            if durable.dispatcher.in_flight == 0:
                break
            await asyncio.sleep(0.02)
    assert after_gather["n"] == 1
    assert all(executions[i] == 1 for i in range(100)), executions
    journal = await durable.store.load(handle.id)
    assert journal is not None and len(journal.children["1"]) == 100


async def test_a_duplicate_child_completion_is_a_no_op(durable: Durable) -> None:
    await durable.connect()
    from dispytch.durable import NewRun

    await durable.store.create_run(NewRun("p", "f", "{}", "h"))
    first = await durable.store.complete_child("p", "1", 0, ChildOutcome("ok", "1"))
    again = await durable.store.complete_child("p", "1", 0, ChildOutcome("ok", "2"))
    assert first == (True, 1) and again == (False, 1)
    journal = await durable.store.load("p")
    assert journal is not None and journal.children["1"][0].outcome == "1"


async def test_a_failed_child_fails_the_gather(durable: Durable) -> None:
    @durable.function
    async def maybe(i: int) -> int:
        if i == 2:
            raise KeyError(f"no {i}")
        return i

    @durable.function
    async def fan() -> list[int]:
        return await gather(maybe(1), maybe(2), maybe(3))

    @durable.function
    async def catching() -> str:
        try:
            await gather(maybe(2))
        except RunFailedError as exc:
            return f"caught {exc.type}"
        return "no error"

    async with durable:
        with pytest.raises(RunFailedError, match="KeyError"):
            await (await fan.dispatch()).result(timeout=20)
        assert await (await catching.dispatch()).result(timeout=20) == "caught KeyError"


async def test_steps_after_a_gather_run_once(durable: Durable) -> None:
    counts: Counter[str] = Counter()

    @durable.function
    async def leaf(x: int) -> int:
        counts[f"leaf{x}"] += 1
        return x

    @durable.function
    async def flow() -> int:
        first = await leaf(0)
        pair: list[Any] = await gather(leaf(1), leaf(2))
        last = await leaf(3)
        return first + sum(pair) + last

    assert await durable.run(flow(), timeout=20) == 6
    assert counts == Counter({"leaf0": 1, "leaf1": 1, "leaf2": 1, "leaf3": 1})


async def test_any_returns_a_success_and_fails_when_all_fail(durable: Durable) -> None:
    from dispytch.durable import AnyFailedError
    from dispytch.durable import any as any_of

    @durable.function
    async def sq(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative {x}")
        return x * x

    @durable.function
    async def first_ok() -> int:
        return await any_of(sq(-1), sq(3), sq(-2))

    @durable.function
    async def none_ok() -> str:
        try:
            await any_of(sq(-1), sq(-2))
        except AnyFailedError as exc:
            return ",".join(type(e).__name__ for e in exc.errors)
        return "no error"

    async with durable:
        assert await (await first_ok.dispatch()).result(timeout=20) == 9
        assert (
            await (await none_ok.dispatch()).result(timeout=20) == "RunFailedError,RunFailedError"
        )


async def test_race_returns_the_first_to_finish_and_replays_the_same(durable: Durable) -> None:
    from dispytch.durable import race

    release = asyncio.Event()
    counts: Counter[str] = Counter()

    @durable.function
    async def fast() -> str:
        return "fast"

    @durable.function
    async def slow() -> str:
        await release.wait()
        return "slow"

    @durable.function
    async def after(winner: str) -> str:
        counts["after"] += 1
        if counts["after"] == 1:
            release.set()  # the slow child now finishes too, before the retry
            raise ConnectionError("retry the parent")
        return winner

    @durable.function
    async def racing() -> str:
        winner = await race(slow(), fast())
        return await after(winner)

    assert await durable.run(racing(), timeout=20) == "fast"
    assert counts["after"] == 2  # replayed with the same winner, although slow finished


async def test_any_and_race_outside_a_run(durable: Durable) -> None:
    from dispytch.durable import any as any_of
    from dispytch.durable import race

    @durable.function
    async def ident(x: int) -> int:
        return x

    async with durable:
        assert await any_of(ident(4)) == 4
        assert await race(ident(5)) == 5
