"""Stopping an aiokafka client within a deadline (a broker that is down must not hang a
stop): shared by the consumer and the producer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("dispytch.kafka")


#: Stops still under way after their deadline (referenced, so they are not collected).
_BACKGROUND: set[asyncio.Future[Any]] = set()


async def stop_within(raw: Any, timeout: float, who: str) -> None:
    """``await raw.stop()`` for at most ``timeout`` seconds; past that it goes on in the
    background (a broker that is down must not hang a stop) and its outcome is logged."""
    stopping = asyncio.ensure_future(raw.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout)
    if not done:
        log.warning(
            "%s: the client did not disconnect within %.1f s (broker unreachable?); it "
            "goes on stopping in the background",
            who,
            timeout,
        )
        _BACKGROUND.add(stopping)

        def finished(task: asyncio.Future[Any]) -> None:
            _BACKGROUND.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("%s: stopping the client failed: %r", who, task.exception())

        stopping.add_done_callback(finished)
    elif not stopping.cancelled() and stopping.exception() is not None:
        log.warning("%s: stopping the client failed: %r", who, stopping.exception())
