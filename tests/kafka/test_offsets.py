"""The per-partition offset tracker, without a broker."""

from __future__ import annotations

import asyncio
import random

import pytest
from dispytch.kafka.offsets import PartitionOffsets


def test_in_order_acks_advance_the_commit_point() -> None:
    p = PartitionOffsets("t-0")
    ds = [p.receive(o) for o in range(3)]
    assert p.committable is None and p.due is None
    assert p.finish(ds[0])
    assert p.committable == 1
    p.finish(ds[1])
    p.finish(ds[2])
    assert p.committable == 3
    assert p.in_flight == 0


def test_out_of_order_acks_commit_only_below_the_first_unfinished() -> None:
    p = PartitionOffsets("t-0")
    ds = [p.receive(o) for o in range(5)]
    assert not p.finish(ds[3])
    assert not p.finish(ds[1])
    assert p.committable is None  # offset 0 still running
    assert p.finish(ds[0])
    assert p.committable == 2  # 0 and 1 done, 2 still running
    assert p.finish(ds[2])
    assert p.committable == 4  # 3 was already done
    p.finish(ds[4])
    assert p.committable == 5


def test_gaps_from_compaction_or_transaction_markers_do_not_stall() -> None:
    """Offsets 1-4 and 6 never arrive (compacted away, or transaction markers)."""
    p = PartitionOffsets("t-0")
    a, b, c = p.receive(0), p.receive(5), p.receive(7)
    p.finish(c)
    p.finish(a)
    assert p.committable == 1
    p.finish(b)
    assert p.committable == 8
    assert p.in_flight == 0


def test_settling_twice_or_a_stale_delivery_changes_nothing() -> None:
    p = PartitionOffsets("t-0")
    d0, d1 = p.receive(0), p.receive(1)
    assert p.finish(d0)
    assert not p.finish(d0)
    assert p.rewind(d1)
    assert not p.finish(d1)  # superseded by the rewind
    assert p.committable == 1


def test_rewind_keeps_the_commit_point_below_the_requeued_offset() -> None:
    p = PartitionOffsets("t-0")
    ds = [p.receive(o) for o in range(5)]
    p.finish(ds[0])
    p.finish(ds[3])
    epoch = p.epoch
    assert p.rewind(ds[2])
    assert p.epoch == epoch + 1
    assert ds[2].dropped and ds[3].dropped and ds[4].dropped
    p.finish(ds[1])
    assert p.committable == 2
    # Redelivered from offset 2: the requeued one counts its attempt.
    again = [p.receive(o) for o in (2, 3, 4)]
    assert [d.attempt for d in again] == [2, 1, 1]
    for d in again:
        p.finish(d)
    assert p.committable == 5


def test_rewind_of_a_settled_delivery_is_ignored() -> None:
    p = PartitionOffsets("t-0")
    d = p.receive(0)
    p.finish(d)
    assert not p.rewind(d)
    assert p.epoch == 0


def test_memory_stays_bounded_by_what_is_in_flight() -> None:
    """A million records through a window of 100 concurrent ones, acked in random order:
    the tracker never holds more than the window, whatever the gaps."""
    rng = random.Random(7)
    p = PartitionOffsets("t-0")
    window: list = []
    offset = 0
    peak = 0
    for _ in range(200_000):
        offset += rng.choice((1, 1, 1, 3))  # some gaps
        window.append(p.receive(offset))
        if len(window) >= 100:
            p.finish(window.pop(rng.randrange(len(window))))
        peak = max(peak, p.in_flight)
    for d in window:
        p.finish(d)
    assert p.in_flight == 0
    assert p.committable == offset + 1
    assert peak < 5_000  # bounded by the window (and its spread), never by the 200k total
    assert len(p._attempts) == 0


def test_committed_bookkeeping() -> None:
    p = PartitionOffsets("t-0")
    p.finish(p.receive(10))
    assert p.due == 11
    p.committed = 11
    assert p.due is None
    p.close()
    assert p.due is None


async def test_drained_waits_for_in_flight_and_close_releases_waiters() -> None:
    p = PartitionOffsets("t-0")
    d = p.receive(0)
    waiter = asyncio.create_task(p.drained())
    await asyncio.sleep(0)
    assert not waiter.done()
    p.finish(d)
    await asyncio.wait_for(waiter, 1)

    q = PartitionOffsets("t-1")
    q.receive(0)
    w2 = asyncio.create_task(q.drained())
    await asyncio.sleep(0)
    q.close()
    await asyncio.wait_for(w2, 1)


def test_closed_partition_ignores_settlements() -> None:
    p = PartitionOffsets("t-0")
    d = p.receive(0)
    p.close()
    assert d.dropped
    assert not p.finish(d)
    assert p.committable is None


@pytest.mark.parametrize("seed", range(5))
def test_random_acks_never_commit_an_unfinished_offset(seed: int) -> None:
    rng = random.Random(seed)
    p = PartitionOffsets("t-0")
    offsets = sorted(rng.sample(range(10_000), 300))
    ds = [p.receive(o) for o in offsets]
    finished: set[int] = set()
    order = ds[:]
    rng.shuffle(order)
    for d in order:
        p.finish(d)
        finished.add(d.offset)
        if p.committable is not None:
            assert all(o in finished for o in offsets if o < p.committable)
    assert p.committable == offsets[-1] + 1
