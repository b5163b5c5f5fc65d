"""When a Kafka consumer commits: at most every ``commit_interval``, from one timer.

Acks only mark a partition's tracker (:mod:`dispytch.kafka.offsets`) and set a dirty
flag; one timer per consumer turns that into one ``commit()`` of every partition whose
commit point moved. A failed commit is retried on the next round; a commit refused
because the group rebalanced is dropped (the partitions' new owner continues from the
last successful commit: at-least-once, some records come again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    IllegalStateError,
    KafkaError,
)
from dispytch.kafka.offsets import PartitionOffsets

log = logging.getLogger("dispytch.kafka")


class CommitScheduler:
    """Commits the partitions' due offsets through ``client()``, rate-limited.

    Args:
        client: Returns the aiokafka consumer, or ``None`` while there is none.
        states: The consumer's trackers, by partition (read at each commit).
        interval: Minimum seconds between two periodic commits.
    """

    def __init__(
        self,
        client: Callable[[], Any],
        states: Callable[[], Iterable[PartitionOffsets]],
        interval: float,
    ) -> None:
        self._client = client
        self._states = states
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        #: A commit is due and scheduled (acks need not call :meth:`due` again).
        self.dirty = False
        self._closed = True

    def open(self) -> None:
        """Start scheduling (on consumer start)."""
        self._closed = False
        self.dirty = False
        self._last = asyncio.get_running_loop().time()

    def due(self) -> None:
        """A commit point moved: commit within ``interval`` (one timer, not one per ack).

        Callers on the hot path may skip the call while :attr:`dirty` is set."""
        if self.dirty:
            return
        self.dirty = True
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None or self._closed:
            return
        task = self._task
        if task is not None and not task.done():
            return  # its done-callback reschedules
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last + self.interval - loop.time())
        self._timer = loop.call_later(delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if not self.dirty or self._closed:
            return
        self.dirty = False
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        task = loop.create_task(self.commit(list(self._states())))
        task.add_done_callback(self._done)
        self._task = task

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("Kafka commit failed: %r", task.exception())
            self.dirty = True
        if self.dirty:
            self._schedule()

    async def close(self) -> None:
        """Stop scheduling and wait for a commit under way (bound it from outside)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                task.cancel()
                raise
            except Exception:
                pass  # logged by _done

    async def commit(self, states: list[PartitionOffsets]) -> None:
        """Commit the due offsets of ``states`` that this consumer still holds."""
        raw = self._client()
        if raw is None:
            return
        offsets: dict[TopicPartition, int] = {}
        assigned = raw.assignment()
        for st in states:
            due = st.due
            if due is not None and st.key in assigned:
                offsets[st.key] = due
        if not offsets:
            return
        try:
            await raw.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("Kafka commit of %s skipped: %s", offsets, exc)
            return
        except KafkaError as exc:
            self.dirty = True
            log.warning("Kafka commit of %s failed, will retry: %r", offsets, exc)
            return
        for st in states:
            off = offsets.get(st.key)
            if off is not None and (st.committed is None or off > st.committed):
                st.committed = off
