"""The ``XREADGROUP`` loop of one (group, member), and turning entries into messages.

A reader holds one pooled connection for its blocking reads and uses redis-py's public
connection API on it: ``send_packed_command`` of a command packed by hiredis and
``read_response`` (hiredis parses when installed; RESP3 push frames that arrive in the
middle of a read, such as client-side caching invalidations, are handled by redis-py
and never mistaken for the reply). The reply is taken raw, without redis-py's
per-entry response callbacks, in its RESP2 (list) or RESP3 (map) shape.

What is read follows the consumer's read-ahead bound: each ``XREADGROUP`` asks for no
more than the room left (``COUNT``), and none is sent while the room is zero. Streams of
paused lanes are left out of the request until resumed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dispytch.backoff import Backoff
from dispytch.redis.envelope import unpack_fields
from dispytch.transport import Message
from hiredis import pack_command

from redis.exceptions import RedisError, ResponseError

if TYPE_CHECKING:
    from dispytch.redis.streams.consumer import RedisStreamConsumer

log = logging.getLogger("dispytch.redis")


def stream_pairs(reply: Any) -> Iterable[tuple[Any, Any]]:
    """``(stream, entries)`` from a raw XREADGROUP reply: RESP2 a list of pairs, RESP3 a
    map; ``None`` when BLOCK timed out. Anything else yields nothing."""
    if not reply:
        return ()
    if isinstance(reply, dict):
        return reply.items()
    if isinstance(reply, list):
        return ((pair[0], pair[1]) for pair in reply if isinstance(pair, list) and len(pair) == 2)
    return ()


def entry_fields(raw: Any) -> dict[bytes, bytes] | None:
    """An entry's field map from its raw form (a flat list, or a map under RESP3)."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        return raw
    it = iter(raw)
    return dict(zip(it, it, strict=False))


def to_messages(
    consumer: RedisStreamConsumer,
    stream: str,
    group: str,
    member: str,
    entries: Iterable[Any],
    attempts: dict[bytes, int] | None,
) -> list[Message]:
    """Messages for the entries read; trimmed ones are acknowledged, malformed ones given
    up (dead-letter stream) with the parse error."""
    out = []
    now = time.monotonic()
    lane = stream if consumer.ordered else None
    inflight = consumer._inflight
    for entry in entries:
        entry_id, raw = entry[0], entry[1]
        if raw is None:  # trimmed away (MAXLEN) while pending: nothing to deliver
            consumer._acks.add(stream, group, entry_id)
            continue
        fields = entry_fields(raw)
        assert fields is not None
        token = (stream, group, entry_id, member)
        attempt = attempts.get(entry_id, 1) if attempts else 1
        try:
            payload, headers, key = unpack_fields(fields)
        except (ValueError, TypeError) as exc:
            consumer._malformed(token, fields, exc, attempt)
            continue
        inflight[token] = now
        out.append(
            Message(
                payload,
                route=stream,
                headers=headers,
                key=key,
                attempt=attempt,
                metadata={
                    "stream": stream,
                    "group": group,
                    "consumer": member,
                    "id": entry_id.decode(),
                },
                lane=lane,
                token=token,
            )
        )
    return out


class StreamReader:
    """``XREADGROUP ... BLOCK`` for one (group, member) until the consumer stops."""

    def __init__(self, consumer: RedisStreamConsumer, group: str, member: str) -> None:
        self.c = consumer
        self.group = group
        self.member = member
        self._backoff = Backoff(initial=0.1, cap=5.0, jitter=0.2)
        self._turn = 0  # which streams go first when the room is less than one each

    def _request(self, conn: Any, streams: list[str], count: int) -> Any:
        c = self.c
        args: list[Any] = [
            b"XREADGROUP", b"GROUP", self.group.encode(), self.member.encode(),
            b"COUNT", b"%d" % count, b"BLOCK", b"%d" % c.block_ms, b"STREAMS",
        ]  # fmt: skip
        args.extend(s.encode() for s in streams)
        args.extend(b">" for _ in streams)
        return pack_command(tuple(args))

    async def run(self) -> None:
        c = self.c
        key = (self.group, self.member)
        streams = c._members[key]
        if c._named:
            await c._guard(c._keeper.read_own_pending(self.group, self.member, streams))
        pool = c.redis.connection_pool
        conn: Any = None
        # An explicit read timeout longer than BLOCK: a short socket_timeout on the
        # user's client must not cut blocking reads.
        read_timeout = c.block_ms / 1000 + 10.0
        try:
            while c._running:
                current = [s for s in c._members[key] if s not in c._paused]
                if current is not streams and c._named:
                    added = [s for s in current if s not in streams]
                    if added:
                        await c._guard(c._keeper.read_own_pending(self.group, self.member, added))
                streams = current
                if not streams:
                    await c._wait_change()
                    continue
                count = c._reserve()
                if count == 0:
                    await c._wait_room()
                    continue
                # COUNT applies to each stream: never ask for more than was reserved in all.
                reading = streams
                if count < len(streams):
                    start = self._turn % len(streams)
                    self._turn += count
                    reading = (streams[start:] + streams[:start])[:count]
                per_stream = count // len(reading)
                c._release(count - per_stream * len(reading))
                count = per_stream * len(reading)
                try:
                    try:
                        if conn is None:
                            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                        await conn.send_packed_command(self._request(conn, reading, per_stream))
                        reply = await conn.read_response(timeout=read_timeout)
                        if reply is None and not conn.is_connected:
                            raise ConnectionError("the read was cut")
                    except ResponseError as exc:
                        await self._error_reply(exc, reading)
                        continue
                    except (RedisError, OSError) as exc:
                        if conn is not None:
                            await conn.disconnect(nowait=True)
                            await pool.release(conn)
                            conn = None
                        await self._retry_later(exc)
                        continue
                    self._backoff.reset()
                    for raw_name, entries in stream_pairs(reply):
                        name = c._names.get(raw_name) if type(raw_name) is bytes else raw_name
                        if name is None or not isinstance(entries, list):
                            continue
                        c._deliver(to_messages(c, name, self.group, self.member, entries, None))
                finally:
                    c._release(count)
        finally:
            if conn is not None:
                await pool.release(conn)

    async def _error_reply(self, exc: ResponseError, streams: list[str]) -> None:
        c = self.c
        if str(exc).startswith("NOGROUP"):
            log.warning("Redis group %r vanished (%s); recreating it.", self.group, exc)
            for stream in streams:
                await c._guard(c._create_group(stream, self.group, "0"))
        else:
            await self._retry_later(exc)

    async def _retry_later(self, exc: BaseException) -> None:
        c = self.c
        if not c._running:
            return
        delay = self._backoff.next()
        log.warning(
            "Reading Redis streams failed (%s: %s); retrying in %.1fs.",
            type(exc).__name__,
            exc,
            delay,
        )
        try:
            await asyncio.wait_for(c._stopping.wait(), delay)
        except TimeoutError:
            pass
