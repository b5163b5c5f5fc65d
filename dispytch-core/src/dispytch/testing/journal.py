"""The journal-store conformance suite: what every :class:`~dispytch.durable.JournalStore`
must do, as pytest cases.

Subclass :class:`JournalStoreConformance` in a test module and give it a ``store`` fixture
yielding an opened store over an empty journal (unique names per test)::

    class TestMyStore(JournalStoreConformance):
        @pytest.fixture
        async def store(self):
            s = MyStore(...)
            await s.open()
            yield s
            await s.close()

Needs ``pytest`` and ``pytest-asyncio`` (``asyncio_mode = "auto"``).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from dispytch.durable.errors import LeaseLostError
from dispytch.durable.store import (
    FINAL_STATUSES,
    STATUSES,
    ChildOutcome,
    CompletionFeed,
    JournalStore,
    NewRun,
    StepRecord,
)

__all__ = ["JournalStoreConformance"]


def _run(
    parent: tuple[str, str, int, int] | None = None,
    *,
    id: str | None = None,
    function: str = "mod.fn",
) -> NewRun:
    rid = id or f"run-{uuid.uuid4().hex}"
    return NewRun(rid, function, '{"x":1}', "hash-1", parent=parent)


def _step(position: str, outcome: str = "1") -> StepRecord:
    return StepRecord(position, "mod.step", "h", "ok", outcome)


class JournalStoreConformance:
    """The cases; a subclass provides the ``store`` fixture."""

    async def test_create_run_then_existing(self, store: JournalStore) -> None:
        new = _run()
        record, created = await store.create_run(new)
        assert created and record.id == new.id and record.status == "pending"
        assert (record.function, record.args, record.args_hash) == (
            new.function,
            new.args,
            new.args_hash,
        )
        assert record.attempts == 0 and record.outcome is None and record.parent is None
        again, created_again = await store.create_run(NewRun(new.id, "other", "{}", "hash-2"))
        assert not created_again and again.args_hash == "hash-1" and again.function == "mod.fn"

    async def test_missing_runs_are_none(self, store: JournalStore) -> None:
        assert await store.get_run(f"missing-{uuid.uuid4().hex}") is None
        assert await store.load(f"missing-{uuid.uuid4().hex}") is None

    async def test_parent_is_kept(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run(parent=("p", "2.1", 3, 7)))
        assert record.parent == ("p", "2.1", 3, 7)
        loaded = await store.get_run(record.id)
        assert loaded is not None and loaded.parent == ("p", "2.1", 3, 7)

    async def test_one_lease_at_a_time_with_growing_tokens(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        assert await store.acquire(record.id, 30.0) is None  # held
        await store.release(record.id, token)
        second = await store.acquire(record.id, 30.0)
        assert second is not None and second > token

    async def test_an_expired_lease_is_taken_over_and_fences_the_old_holder(
        self, store: JournalStore
    ) -> None:
        record, _ = await store.create_run(_run())
        old = await store.acquire(record.id, 0.05)
        assert old is not None
        new = None
        for _ in range(100):  # bounded: the lease expires after 50 ms
            await asyncio.sleep(0.02)
            new = await store.acquire(record.id, 30.0)
            if new is not None:
                break
        assert new is not None and new > old
        with pytest.raises(LeaseLostError):
            await store.put_step(record.id, old, _step("1", "late"))
        with pytest.raises(LeaseLostError):
            await store.complete(record.id, old, "succeeded", "1")
        with pytest.raises(LeaseLostError):
            await store.set_retry(record.id, old, 1, time.time())
        assert not await store.renew(record.id, old, 30.0)
        await store.release(record.id, old)  # a stale release changes nothing
        assert await store.acquire(record.id, 30.0) is None
        assert await store.put_step(record.id, new, _step("1", "fresh"))
        journal = await store.load(record.id)
        assert journal is not None and journal.steps["1"].outcome == "fresh"

    async def test_renew_extends_only_the_holder(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        assert await store.renew(record.id, token, 30.0)
        assert not await store.renew(record.id, token + 1, 30.0)

    async def test_steps_first_write_wins(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        assert await store.put_step(record.id, token, _step("1", "a"))
        assert not await store.put_step(record.id, token, _step("1", "b"))
        assert await store.put_step(record.id, token, _step("1.1", "c"))
        journal = await store.load(record.id)
        assert journal is not None
        assert {p: s.outcome for p, s in journal.steps.items()} == {"1": "a", "1.1": "c"}
        assert journal.steps["1"] == _step("1", "a")

    async def test_retry_journals_attempts_and_due_and_releases(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        due = time.time() + 60
        await store.set_retry(record.id, token, 2, due)
        after = await store.get_run(record.id)
        assert after is not None and after.attempts == 2 and after.status == "retrying"
        assert abs(after.due - due) < 1e-3
        assert await store.acquire(record.id, 30.0) is not None  # the lease was given up

    async def test_complete_first_wins_and_final_runs_take_no_lease(
        self, store: JournalStore
    ) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        with pytest.raises(ValueError):
            await store.complete(record.id, token, "pending", "x")
        assert await store.complete(record.id, token, "succeeded", '"ok"')
        done = await store.get_run(record.id)
        assert done is not None and done.final and done.outcome == '"ok"'
        assert await store.acquire(record.id, 30.0) is None
        await store.release(record.id, token, "waiting")  # no effect on a final run
        still = await store.get_run(record.id)
        assert still is not None and still.status == "succeeded"

    async def test_release_sets_a_status(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        await store.release(record.id, token, "waiting")
        after = await store.get_run(record.id)
        assert after is not None and after.status == "waiting"

    async def test_children_first_write_wins_and_counts(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        assert await store.complete_child(record.id, "2", 1, ChildOutcome("ok", "10")) == (
            True,
            1,
        )
        assert await store.complete_child(record.id, "2", 1, ChildOutcome("ok", "11")) == (
            False,
            1,
        )
        assert await store.complete_child(record.id, "2", 0, ChildOutcome("error", "{}")) == (
            True,
            2,
        )
        assert await store.complete_child(record.id, "3", 0, ChildOutcome("ok", "1")) == (
            True,
            1,
        )
        journal = await store.load(record.id)
        assert journal is not None
        assert journal.children["2"] == {
            1: ChildOutcome("ok", "10"),
            0: ChildOutcome("error", "{}"),
        }

    async def test_concurrent_acquires_admit_one(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        tokens = await asyncio.gather(*(store.acquire(record.id, 30.0) for _ in range(10)))
        assert sum(t is not None for t in tokens) == 1

    async def test_open_and_close_are_idempotent(self, store: JournalStore) -> None:
        await store.open()
        record, _ = await store.create_run(_run())
        assert await store.get_run(record.id) is not None

    # -- statuses -------------------------------------------------------------------
    async def test_acquire_marks_running_and_release_pending_or_given(
        self, store: JournalStore
    ) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        running = await store.get_run(record.id)
        assert running is not None and running.status == "running"
        assert running.lease_until > time.time()
        await store.release(record.id, token)
        after = await store.get_run(record.id)
        assert after is not None and after.status == "pending" and after.lease_until == 0

    async def test_release_with_due_journals_the_wake_up_time(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        due = time.time() + 3600
        await store.release(record.id, token, "sleeping", due=due)
        after = await store.get_run(record.id)
        assert after is not None and after.status == "sleeping" and abs(after.due - due) < 1e-3
        assert after.attempts == 0
        again = await store.acquire(record.id, 30.0)  # the engine, not the store, waits
        assert again is not None
        await store.release(record.id, again)
        kept = await store.get_run(record.id)
        assert kept is not None and abs(kept.due - due) < 1e-3  # no due: unchanged

    async def test_steps_carry_the_time_they_were_journalled(self, store: JournalStore) -> None:
        record, _ = await store.create_run(_run())
        token = await store.acquire(record.id, 30.0)
        assert token is not None
        before = time.time()
        await store.put_step(record.id, token, _step("1"))
        journal = await store.load(record.id)
        assert journal is not None
        assert before - 5 <= journal.steps["1"].created <= time.time() + 5

    # -- operations -----------------------------------------------------------------
    async def test_list_runs_newest_first_with_filters_and_limit(self, store: JournalStore) -> None:
        fn_a, fn_b = f"a.{uuid.uuid4().hex}", f"b.{uuid.uuid4().hex}"
        ids = []
        for function in (fn_a, fn_b, fn_a):
            record, _ = await store.create_run(_run(function=function))
            ids.append(record.id)
            await asyncio.sleep(0.01)  # distinct creation times
        token = await store.acquire(ids[2], 30.0)
        assert token is not None
        await store.complete(ids[2], token, "failed", '{"type":"E"}')
        of_a = await store.list_runs(function=fn_a)
        assert [r.id for r in of_a] == [ids[2], ids[0]]
        assert [r.id for r in await store.list_runs(function=fn_a, limit=1)] == [ids[2]]
        failed = await store.list_runs(status=["failed"], function=fn_a)
        assert [(r.id, r.status, r.outcome) for r in failed] == [(ids[2], "failed", '{"type":"E"}')]
        pending = await store.list_runs(status=["pending", "dead"], function=fn_a)
        assert [r.id for r in pending] == [ids[0]]
        assert await store.list_runs(status=[], function=fn_a) == []
        assert await store.list_runs(function=f"none.{uuid.uuid4().hex}") == []
        everything = {r.id for r in await store.list_runs(limit=1000)}
        assert set(ids) <= everything

    async def test_retry_starts_a_failed_run_and_its_failed_children_over(
        self, store: JournalStore
    ) -> None:
        record, _ = await store.create_run(_run())
        rid = record.id
        child, _ = await store.create_run(_run(parent=(rid, "2", 0, 1), id=f"{rid}/2.0"))
        done_child, _ = await store.create_run(_run(parent=(rid, "2", 1, 1), id=f"{rid}/2.1"))
        token = await store.acquire(rid, 30.0)
        assert token is not None
        await store.put_step(rid, token, _step("1", "10"))
        await store.put_step(rid, token, StepRecord("2", "gather", "h", "waiting", "2"))
        await store.put_step(rid, token, StepRecord("3", "mod.step", "h", "error", "{}"))
        await store.set_retry(rid, token, 3, time.time() + 60)
        for cid, status in ((child.id, "dead"), (done_child.id, "succeeded")):
            ctoken = await store.acquire(cid, 30.0)
            assert ctoken is not None
            await store.complete(cid, ctoken, status, "{}" if status == "dead" else "5")
        await store.complete_child(rid, "2", 0, ChildOutcome("error", "{}"))
        await store.complete_child(rid, "2", 1, ChildOutcome("ok", "5"))
        token = await store.acquire(rid, 30.0)
        assert token is not None
        assert await store.complete(rid, token, "failed", '{"type":"E"}')

        assert await store.retry_run(rid)
        journal = await store.load(rid)
        assert journal is not None
        run = journal.run
        assert (run.status, run.attempts, run.due, run.outcome) == ("pending", 0, 0.0, None)
        assert sorted(journal.steps) == ["1", "2"]  # the ok step and the slot are kept
        assert journal.children["2"] == {1: ChildOutcome("ok", "5")}
        again = await store.get_run(child.id)
        assert again is not None and again.status == "pending" and again.outcome is None
        kept = await store.get_run(done_child.id)
        assert kept is not None and kept.status == "succeeded" and kept.outcome == "5"
        assert await store.acquire(rid, 30.0) is not None
        # only a failed, dead or cancelled run is retried
        assert not await store.retry_run(rid)
        assert not await store.retry_run(f"missing-{uuid.uuid4().hex}")

    async def test_cancel_fences_the_holder_and_cancels_unfinished_descendants(
        self, store: JournalStore
    ) -> None:
        record, _ = await store.create_run(_run())
        rid = record.id
        running_child, _ = await store.create_run(_run(id=f"{rid}/1.0"))
        grandchild, _ = await store.create_run(_run(id=f"{rid}/1.0/1.0"))
        finished_child, _ = await store.create_run(_run(id=f"{rid}/1.1"))
        neighbours = [
            (await store.create_run(_run(id=f"{rid}0/1.0")))[0],
            (await store.create_run(_run(id=f"{rid}x")))[0],
            (await store.create_run(_run(id=f"{rid}_/1.0")))[0],
        ]
        ftoken = await store.acquire(finished_child.id, 30.0)
        assert ftoken is not None
        await store.complete(finished_child.id, ftoken, "succeeded", "1")
        token = await store.acquire(running_child.id, 30.0)
        assert token is not None

        ids = await store.cancel_run(rid, '{"type":"RunCancelledError"}')
        assert ids == sorted([rid, running_child.id, grandchild.id])
        for cid in ids:
            got = await store.get_run(cid)
            assert got is not None and got.status == "cancelled" and got.final
            assert got.outcome == '{"type":"RunCancelledError"}'
            assert await store.acquire(cid, 30.0) is None
        with pytest.raises(LeaseLostError):
            await store.put_step(running_child.id, token, _step("1"))
        with pytest.raises(LeaseLostError):
            await store.complete(running_child.id, token, "succeeded", "1")
        assert not await store.renew(running_child.id, token, 30.0)
        finished = await store.get_run(finished_child.id)
        assert finished is not None and finished.status == "succeeded"
        for other in neighbours:
            got = await store.get_run(other.id)
            assert got is not None and got.status == "pending"
        assert await store.cancel_run(rid, "{}") == []  # final already
        assert await store.cancel_run(f"missing-{uuid.uuid4().hex}", "{}") == []
        assert await store.retry_run(rid)  # a cancelled run is retried with its children
        for cid in ids:
            got = await store.get_run(cid)
            assert got is not None and got.status == "pending"

    # -- concurrency limit ----------------------------------------------------------
    async def test_concurrency_limit_counts_live_leases_of_the_function(
        self, store: JournalStore
    ) -> None:
        fn, other = f"lim.{uuid.uuid4().hex}", f"free.{uuid.uuid4().hex}"
        runs = [(await store.create_run(_run(function=fn)))[0] for _ in range(3)]
        free, _ = await store.create_run(_run(function=other))
        first = await store.acquire(runs[0].id, 30.0, concurrency=2)
        second = await store.acquire(runs[1].id, 30.0, concurrency=2)
        assert first is not None and second is not None
        assert await store.acquire(runs[2].id, 30.0, concurrency=2) is None
        limited = await store.get_run(runs[2].id)
        assert limited is not None and limited.status == "limited"
        assert await store.acquire(free.id, 30.0, concurrency=2) is not None  # other function
        await store.release(runs[0].id, first, "waiting")  # a waiting run holds no slot
        third = await store.acquire(runs[2].id, 30.0, concurrency=2)
        assert third is not None
        assert await store.acquire(runs[0].id, 30.0, concurrency=2) is None
        # an expired lease (a dead worker) holds no slot either
        await store.release(runs[2].id, third)
        short = await store.acquire(runs[2].id, 0.05, concurrency=2)
        assert short is not None
        taken = None
        for _ in range(100):  # bounded: the lease expires after 50 ms
            await asyncio.sleep(0.02)
            taken = await store.acquire(runs[0].id, 30.0, concurrency=2)
            if taken is not None:
                break
        assert taken is not None

    async def test_concurrent_acquires_respect_the_limit(self, store: JournalStore) -> None:
        fn = f"lim.{uuid.uuid4().hex}"
        runs = [(await store.create_run(_run(function=fn)))[0] for _ in range(8)]
        tokens = await asyncio.gather(*(store.acquire(r.id, 30.0, concurrency=3) for r in runs))
        assert sum(t is not None for t in tokens) == 3

    async def test_statuses_are_known(self, store: JournalStore) -> None:
        assert FINAL_STATUSES <= STATUSES and "cancelled" in FINAL_STATUSES
        record, _ = await store.create_run(_run())
        assert record.status in STATUSES

    # -- pushed completions (optional) ---------------------------------------------
    async def test_a_completion_feed_pushes_finished_and_cancelled_runs(
        self, store: JournalStore
    ) -> None:
        if not isinstance(store, CompletionFeed):
            pytest.skip(f"{type(store).__name__} has no completion feed (waiters poll)")
        seen: list[str | None] = []
        arrived = asyncio.Event()

        def on_completion(run_id: str | None) -> None:
            seen.append(run_id)
            arrived.set()

        stop = await store.watch_completions(on_completion)
        try:
            done, _ = await store.create_run(_run())
            gone, _ = await store.create_run(_run())
            await store.watch_run(done.id)
            await store.watch_run(gone.id)
            await store.watch_run(gone.id)  # idempotent
            token = await store.acquire(done.id, 30.0)
            assert token is not None
            await store.put_step(done.id, token, _step("1"))
            await store.release(done.id, token)  # not final: no notice
            token = await store.acquire(done.id, 30.0)
            assert token is not None
            assert await store.complete(done.id, token, "succeeded", "1")
            assert await store.cancel_run(gone.id, "{}") == [gone.id]
            async with asyncio.timeout(10):
                while not {done.id, gone.id} <= set(seen):
                    arrived.clear()
                    await arrived.wait()
            assert [r for r in seen if r is not None] == [done.id, gone.id]
        finally:
            await stop()
