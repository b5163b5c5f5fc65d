"""Settling Redis stream entries: batched ``XACK``, hand-back, give-up (dead letters).

* :class:`AckBatcher` collects acknowledgements and sends them in the background, one
  ``XACK`` per (stream, group) per flush; XACK is idempotent, so a failed flush is retried
  with a :class:`~dispytch.backoff.Backoff` (an entry whose ack is lost is delivered again
  after ``min_idle_time``: at-least-once).
* :func:`hand_back` makes entries claimable by any member (``XCLAIM ... IDLE``), which is
  how ``nack(requeue=True)``, delayed requeues and a closing consumer give entries back.
* :func:`give_up` moves an entry to the dead-letter stream (``XADD`` + ``XACK`` in
  ``MULTI``) with the real error in ``dispytch-error-*`` headers, or logs it at ERROR and
  acknowledges it when no dead-letter stream is configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dispytch.backoff import Backoff
from dispytch.redis._client import packed_round_trip
from dispytch.redis.envelope import FIELD_HEADERS, FIELD_KEY, FIELD_PAYLOAD, encode_headers
from dispytch.transport import (
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_ROUTE,
)

from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("dispytch.redis")

#: Seconds one XACK round trip may take before it counts as failed (and is retried).
ACK_TIMEOUT = 10.0

#: (stream, group, entry id, member)
Token = tuple[str, str, bytes, str]


class AckBatcher:
    """XACKs sent in the background, batched per flush.

    :attr:`pending` counts acknowledgements queued or on their way: the reader counts
    them as unsettled, so what Redis holds pending never exceeds the read-ahead bound.
    """

    def __init__(self, client: Any, on_flushed: Callable[[], None]) -> None:
        self._r = client
        self._acks: dict[tuple[str, str], list[bytes]] = {}
        self._task: asyncio.Task[None] | None = None
        self._on_flushed = on_flushed
        self.pending = 0

    def add(self, stream: str, group: str, entry_id: bytes) -> None:
        ids = self._acks.get((stream, group))
        if ids is None:
            self._acks[(stream, group)] = [entry_id]
        else:
            ids.append(entry_id)
        self.pending += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._acks:
                batch, self._acks = self._acks, {}
                count = sum(len(v) for v in batch.values())
                backoff = Backoff(initial=0.05, cap=1.0)
                for attempt in range(1, 4):
                    try:
                        # One packed round trip (not redis-py's pipeline object).
                        async with asyncio.timeout(ACK_TIMEOUT):
                            replies = await packed_round_trip(
                                self._r,
                                [
                                    (b"XACK", stream.encode(), group.encode(), *ids)
                                    for (stream, group), ids in batch.items()
                                ],
                            )
                        for reply in replies:
                            if isinstance(reply, ResponseError):
                                raise reply
                        break
                    except (RedisError, OSError, TimeoutError) as exc:
                        if attempt < 3:
                            await backoff.sleep()
                            continue
                        log.warning(
                            "XACK of %d entries failed (%s); they stay pending and will be "
                            "delivered again after min_idle_time.",
                            count,
                            exc,
                        )
                self.pending -= count
                self._on_flushed()
        finally:
            self._task = None

    async def flush_all(self) -> None:
        """Wait until every queued acknowledgement was sent (or given up)."""
        while self._task is not None or self._acks:
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            elif self._acks:
                self._task = asyncio.get_running_loop().create_task(self._flush())

    def drop(self) -> int:
        """Forget what was not sent (close gave up on an unreachable Redis)."""
        count = sum(len(v) for v in self._acks.values())
        self._acks.clear()
        if self._task is not None:
            self._task.cancel()
        self.pending = 0
        return count


async def hand_back(client: Any, tokens: Sequence[Token], idle_ms: int) -> None:
    """Set the idle time of pending entries to ``idle_ms`` (``XCLAIM ... IDLE JUSTID``).

    With a very large ``idle_ms`` every member's next ``XAUTOCLAIM`` takes them; with
    ``min_idle_time - delay`` they become claimable ``delay`` seconds from now.
    """
    grouped: dict[tuple[str, str, str], list[bytes]] = {}
    for stream, group, entry_id, member in tokens:
        grouped.setdefault((stream, group, member), []).append(entry_id)
    pipe = client.pipeline(transaction=False)
    for (stream, group, member), ids in grouped.items():
        pipe.xclaim(stream, group, member, 0, ids, idle=max(0, idle_ms), justid=True)
    await pipe.execute()


def dead_letter_fields(
    payload: bytes,
    headers: Mapping[str, str],
    key: bytes | None,
    *,
    stream: str,
    error_type: str,
    reason: str,
    attempt: int,
) -> dict[bytes, bytes]:
    """The entry written to the dead-letter stream: the original plus error headers."""
    out = dict(headers)
    out[HEADER_ORIGINAL_ROUTE] = stream
    out[HEADER_ERROR_TYPE] = error_type
    out[HEADER_ERROR_MESSAGE] = reason
    out[HEADER_ERROR_ATTEMPTS] = str(attempt)
    out[HEADER_DEAD_LETTERED_AT] = f"{time.time():.6f}"
    fields = {FIELD_PAYLOAD: payload, FIELD_HEADERS: encode_headers(out)}
    if key is not None:
        fields[FIELD_KEY] = key
    return fields


async def give_up(
    client: Any,
    acks: AckBatcher,
    dead_letter_stream: str | None,
    token: Token,
    fields: dict[bytes, bytes] | None,
    error_type: str,
    reason: str,
) -> None:
    """Dead-letter an entry (atomically with its XACK) or log it and acknowledge it.

    ``fields`` is the dead-letter entry (:func:`dead_letter_fields`), or ``None`` for an
    entry whose original fields could not be read at all.
    """
    stream, group, entry_id, _ = token
    if dead_letter_stream is None or fields is None:
        log.error(
            "Gave up on entry %s of Redis stream %r (group %r): %s: %s -- It is acknowledged "
            "and will not be delivered again; set dead_letter_stream= to keep such entries.",
            entry_id.decode(),
            stream,
            group,
            error_type,
            reason,
        )
        acks.add(stream, group, entry_id)
        return
    pipe = client.pipeline(transaction=True)
    pipe.xadd(dead_letter_stream, fields)
    pipe.xack(stream, group, entry_id)
    await pipe.execute()
    log.warning(
        "Moved entry %s of Redis stream %r (group %r) to dead-letter stream %r: %s: %s",
        entry_id.decode(),
        stream,
        group,
        dead_letter_stream,
        error_type,
        reason,
    )
