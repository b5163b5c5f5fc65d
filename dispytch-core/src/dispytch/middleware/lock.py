"""``AsyncLock``: one handling at a time, globally or per key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dispytch.event import Event
from dispytch.middleware.base import CallNext, HandlerContext


class AsyncLock:
    """Serialise handling, globally or per key computed from the event.

    Example::

        @router.handler(sub, middlewares=[AsyncLock(key=lambda e: e.body.user_id)])

    Unrelated keys never wait for each other; a key's lock is dropped when nobody holds
    or waits for it, so memory stays bounded by the keys in flight.

    Args:
        key: A function of the :class:`~dispytch.Event` giving the key; ``None`` for one
            global lock.
    """

    def __init__(self, key: Callable[[Event[Any]], Any] | None = None) -> None:
        self.key = key
        self._global = asyncio.Lock()
        self._locks: dict[Any, tuple[asyncio.Lock, int]] = {}
        # asyncio locks belong to one event loop; a middleware declared at module level
        # may serve several loops in turn (a test suite, a restarted service).
        self._loop: asyncio.AbstractEventLoop | None = None

    def _for_this_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._global = asyncio.Lock()
            self._locks = {}

    def held(self, key: Any) -> bool:
        """Whether ``key``'s lock is held now."""
        entry = self._locks.get(key)
        return entry is not None and entry[0].locked()

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any:
        if self._loop is not asyncio.get_running_loop():
            self._for_this_loop()
        if self.key is None:
            async with self._global:
                return await call_next(ctx)
        event = ctx.event
        k = self.key(event) if event is not None else None
        lock, users = self._locks.get(k, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[k] = (lock, users + 1)
        try:
            async with lock:
                return await call_next(ctx)
        finally:
            lock_, n = self._locks[k]
            if n <= 1:
                del self._locks[k]
            else:
                self._locks[k] = (lock_, n - 1)
