"""A small stop-aware buffer between a reader task and ``Consumer.listen()``."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Generic, TypeVar

from dispytch.errors import ConsumerClosedError

T = TypeVar("T")


class Inbox(Generic[T]):
    """FIFO with back-pressure for one producer task and one consumer.

    :meth:`get` returns ``None`` once :meth:`close` was called, even when items remain
    (``stop`` means stop handing out messages); :meth:`drain` returns what was left.
    Readers wait in :meth:`wait_space` while ``high_water`` items are buffered.
    """

    __slots__ = ("_getter", "_high", "_items", "_low", "_putters", "closed", "failure", "on_wait")

    def __init__(self, high_water: int) -> None:
        self._items: deque[T] = deque()
        self._high = max(1, high_water)
        self._low = self._high // 2
        self._getter: asyncio.Future[None] | None = None
        self._putters: list[asyncio.Future[None]] = []
        self.closed = False
        #: Why the inbox was closed by a failure (``None`` for a normal stop).
        self.failure: BaseException | None = None
        #: Called when the consumer side starts waiting on an empty inbox (demand).
        self.on_wait: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def put_many(self, items: Iterable[T]) -> None:
        self._items.extend(items)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def put_front(self, items: list[T]) -> None:
        """Put ``items`` before everything buffered, in their order (resumed ones)."""
        self._items.extendleft(reversed(items))
        getter = self._getter
        if items and getter is not None and not getter.done():
            getter.set_result(None)

    def take_where(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove and return the buffered items ``predicate`` picks, in order."""
        if not self._items:
            return []
        taken = [item for item in self._items if predicate(item)]
        if taken:
            kept = [item for item in self._items if not predicate(item)]
            self._items.clear()
            self._items.extend(kept)
        return taken

    async def wait_space(self) -> None:
        """Wait until the buffer fell to half of ``high_water`` (or was closed)."""
        while len(self._items) >= self._high and not self.closed:
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            await fut

    @property
    def full(self) -> bool:
        """True when a reader should wait for space."""
        return len(self._items) >= self._high

    def _wake_putters(self) -> None:
        putters, self._putters = self._putters, []
        for fut in putters:
            if not fut.done():
                fut.set_result(None)

    def get_nowait(self) -> T | None:
        """An item if one is ready (and the inbox is open), else ``None``."""
        if self.closed or not self._items:
            return None
        item = self._items.popleft()
        if self._putters and len(self._items) <= self._low:
            self._wake_putters()
        return item

    async def get(self) -> T | None:
        """The next item, waiting for one; ``None`` once closed."""
        while True:
            if self.closed:
                return None
            if self._items:
                return self.get_nowait()
            fut = self._getter = asyncio.get_running_loop().create_future()
            if self.on_wait is not None:
                self.on_wait()
            try:
                await fut
            finally:
                self._getter = None

    @property
    def waiting(self) -> bool:
        """Whether the consumer side is waiting for an item right now."""
        return self._getter is not None and not self._items

    async def items(self, owner: str = "The consumer") -> AsyncIterator[T]:
        """Yield items until the inbox is closed (what a consumer's ``listen`` hands out).

        Raises:
            ConsumerClosedError: When it was closed by a failure (:meth:`fail`).
        """
        while True:
            item = self.get_nowait()
            if item is None:
                item = await self.get()
                if item is None:
                    self.raise_failure(owner)
                    return
            yield item

    def raise_failure(self, owner: str) -> None:
        """Raise :class:`~dispytch.errors.ConsumerClosedError` if a failure closed it."""
        exc = self.failure
        if exc is not None:
            raise ConsumerClosedError(
                f"{owner} cannot go on: {type(exc).__name__}: {exc}.\n"
                "This is a bug or a broken client, not a dropped connection (those are "
                "retried); see the logged traceback, then restart the service."
            ) from exc

    def fail(self, exc: BaseException) -> None:
        """Close because of ``exc``: ``listen`` raises ConsumerClosedError."""
        if self.failure is None:
            self.failure = exc
        self.close()

    def close(self) -> None:
        """Wake everyone; :meth:`get` returns ``None`` from now on."""
        self.closed = True
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)
        self._wake_putters()

    def drain(self) -> list[T]:
        """Take every buffered item (after :meth:`close`, to hand them back)."""
        items = list(self._items)
        self._items.clear()
        return items


def close_on_failure(
    inbox: Inbox[Any], what: str, log: logging.Logger
) -> Callable[[asyncio.Task[None]], None]:
    """A task done-callback: a background task that died of a bug ends ``listen``.

    Errors the tasks expect (connection losses) are handled inside them; anything else
    is logged with its traceback and the inbox failed, so ``listen`` raises
    :class:`~dispytch.errors.ConsumerClosedError`: the dispatcher stops and says so
    instead of waiting forever.
    """

    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s failed; the consumer stops.", what, exc_info=exc)
            inbox.fail(exc)

    return done
