"""Per-partition offset tracking for at-least-once commits (pure logic, no broker).

Kafka stores one committed position per partition: "everything below this offset is
done". Dispytch handles messages concurrently (across partitions, and within one when
``ordered=False``) and they finish out of order, so the commit point of a partition is
the offset just after the longest run of *received* messages that all finished.

Offsets are tracked as they were received, never computed as "last + 1": compacted
topics and transaction markers leave holes in the offset sequence, and a hole must not
be waited for. Memory holds only the received-but-not-yet-released deliveries of a
partition (from the oldest unfinished one on), which the dispatcher's in-flight bound
keeps small; released deliveries are forgotten at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable


class Delivery:
    """One received record: the token a :class:`~dispytch.transport.Message` carries.

    Attributes:
        partition: The partition's tracker.
        offset: The record's offset.
        attempt: Delivery attempt (raised when the record is redelivered after a
            ``nack(requeue=True)``).
        done: Finished (acked, or given up on).
        dropped: Superseded (the partition was rewound or revoked): settling it changes
            nothing, a later delivery of the same offset counts instead.
    """

    __slots__ = ("attempt", "done", "dropped", "offset", "partition")

    def __init__(self, partition: PartitionOffsets, offset: int, attempt: int) -> None:
        self.partition = partition
        self.offset = offset
        self.attempt = attempt
        self.done = False
        self.dropped = False

    def __repr__(self) -> str:
        return f"Delivery({self.partition.key!r}, offset={self.offset}, attempt={self.attempt})"


class PartitionOffsets:
    """Received-but-unreleased deliveries of one partition and its commit point.

    Attributes:
        key: What identifies the partition (an aiokafka ``TopicPartition``).
        committable: The offset to commit (last released offset + 1), or ``None``
            before anything finished.
        committed: The offset last committed to the broker by this tracker.
        epoch: Raised on every rewind, so a fetch loop can drop records it fetched
            before the rewind.
        first: The offset of the first record received, or ``None``.
        closed: The partition was revoked or the consumer closed; nothing counts any more.
    """

    __slots__ = (
        "_attempts",
        "_pending",
        "_waiter",
        "closed",
        "committable",
        "committed",
        "epoch",
        "first",
        "key",
        "revoking",
    )

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self._pending: deque[Delivery] = deque()
        self._attempts: dict[int, int] = {}
        self._waiter: asyncio.Future[None] | None = None
        self.committable: int | None = None
        self.committed: int | None = None
        self.epoch = 0
        self.first: int | None = None
        self.closed = False
        self.revoking = False

    # -- receiving -------------------------------------------------------------------
    def receive(self, offset: int) -> Delivery:
        """Track a record as it is handed to the dispatcher."""
        attempt = self._attempts.pop(offset, 0) + 1 if self._attempts else 1
        if self.first is None:
            self.first = offset
        delivery = Delivery(self, offset, attempt)
        self._pending.append(delivery)
        return delivery

    # -- settling --------------------------------------------------------------------
    def finish(self, delivery: Delivery) -> bool:
        """Mark a delivery finished; return True when the commit point moved.

        Settling twice, or settling a dropped delivery, changes nothing.
        """
        if delivery.done or delivery.dropped or self.closed:
            return False
        delivery.done = True
        pending = self._pending
        if not pending or not pending[0].done:
            return False
        last = pending.popleft()
        while pending and pending[0].done:
            last = pending.popleft()
        self.committable = last.offset + 1
        if not pending and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    def rewind(self, delivery: Delivery) -> bool:
        """Forget ``delivery`` and everything received after it, to fetch them again.

        The commit point stays below ``delivery.offset`` until its redelivery finishes.
        Returns False (nothing to do) when the delivery is stale: already settled, or
        superseded by an earlier rewind or a revoke.
        """
        if delivery.done or delivery.dropped or self.closed:
            return False
        pending = self._pending
        offset = delivery.offset
        while pending and pending[-1].offset >= offset:
            pending.pop().dropped = True
        self._attempts[offset] = delivery.attempt
        self.epoch += 1
        if not pending and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    # -- inspection --------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Deliveries received and not yet released (finished ones waiting behind an
        unfinished one included): what memory holds for this partition."""
        return len(self._pending)

    @property
    def due(self) -> int | None:
        """The offset to commit now, or ``None`` when the broker already has it."""
        c = self.committable
        if c is None or c == self.committed or self.closed:
            return None
        return c

    @property
    def restart_offset(self) -> int | None:
        """Where a new reader of this partition must begin so that nothing received and
        unreleased is skipped: the commit point, else the first offset received (``None``
        when nothing was received)."""
        return self.committable if self.committable is not None else self.first

    async def drained(self) -> None:
        """Wait until every received delivery was released (or dropped)."""
        while self._pending and not self.closed:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Stop counting: later settlements of this partition's deliveries are ignored."""
        self.closed = True
        for d in self._pending:
            d.dropped = True
        self._pending.clear()
        self._attempts.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __repr__(self) -> str:
        return (
            f"PartitionOffsets({self.key!r}, in_flight={self.in_flight}, "
            f"committable={self.committable}, committed={self.committed})"
        )
