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
from dispytch.durable.store import ChildOutcome, JournalStore, NewRun, StepRecord

__all__ = ["JournalStoreConformance"]


def _run(parent: tuple[str, str, int, int] | None = None) -> NewRun:
    rid = f"run-{uuid.uuid4().hex}"
    return NewRun(rid, "mod.fn", '{"x":1}', "hash-1", parent=parent)


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
