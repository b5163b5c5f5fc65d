"""Minimal RESP encoding and decoding for the hot paths (pipelines, Pub/Sub frames).

redis-py's pure-Python parser costs about 1.5 µs per element; a Pub/Sub message is four
elements and a stream entry eight or more, which made the parser the single largest
cost per event. These helpers work on whole buffers instead: commands are packed into
one ``bytes`` per pipeline, and complete Pub/Sub frames are parsed straight out of the
bytes read from the socket. Only what those paths need is supported; anything else
raises :class:`RespError` and the caller falls back to redis-py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = [
    "ErrorReply",
    "RespError",
    "bulk",
    "command",
    "parse_frames",
    "parse_replies",
    "read_replies",
]


class RespError(Exception):
    """The bytes are not what the fast path expects (the caller falls back)."""


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    return b"*%d\r\n%s" % (len(args), b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))


def parse_frames(buf: bytearray, handle: Callable[[list[Any]], None]) -> int:
    """Hand every complete top-level array in ``buf`` to ``handle``.

    Frames are RESP2 arrays or RESP3 pushes; elements may be bulk strings (``bytes``,
    ``None`` for nil), integers and simple strings (nested aggregates do not occur in
    Pub/Sub frames).

    Returns:
        How many bytes were consumed (complete frames only).

    Raises:
        RespError: On anything else (an error reply, a nested array, garbage).
    """
    pos = 0
    size = len(buf)
    find = buf.find
    while pos < size:
        if buf[pos] not in (42, 62):  # "*" array (RESP2) or ">" push (RESP3)
            raise RespError(f"expected an array, got {bytes(buf[pos : pos + 40])!r}")
        end = find(b"\r\n", pos)
        if end < 0:
            return pos
        count = int(buf[pos + 1 : end])
        p = end + 2
        items: list[Any] = []
        for _ in range(count):
            if p >= size:
                return pos
            kind = buf[p]
            end = find(b"\r\n", p)
            if end < 0:
                return pos
            if kind == 36:  # "$" bulk string
                length = int(buf[p + 1 : end])
                if length < 0:
                    items.append(None)
                    p = end + 2
                    continue
                start = end + 2
                stop = start + length
                if stop + 2 > size:
                    return pos
                items.append(bytes(buf[start:stop]))
                p = stop + 2
            elif kind == 58:  # ":" integer
                items.append(int(buf[p + 1 : end]))
                p = end + 2
            elif kind == 43:  # "+" simple string
                items.append(bytes(buf[p + 1 : end]))
                p = end + 2
            else:
                raise RespError(f"unexpected element {bytes(buf[p : p + 40])!r}")
        handle(items)
        pos = p
    return pos


class ClosedEarly(ConnectionError):
    """The server closed the connection before every reply arrived."""

    def __init__(self, received: int, expected: int) -> None:
        super().__init__(f"Redis closed the connection after {received} of {expected} replies")
        self.received = received


class ErrorReply(str):
    """An error reply (``-ERR ...``) among pipeline replies."""

    __slots__ = ()


def parse_replies(buf: bytearray, out: list[Any], limit: int) -> int:
    """Append complete simple replies from ``buf`` to ``out`` (up to ``limit`` in all).

    Replies may be integers, bulk strings, simple strings and errors (as
    :class:`ErrorReply`) — what ``PUBLISH`` and ``XADD`` answer.

    Returns:
        How many bytes were consumed.

    Raises:
        RespError: On another kind of reply.
    """
    pos = 0
    size = len(buf)
    find = buf.find
    append = out.append
    while pos < size and len(out) < limit:
        kind = buf[pos]
        end = find(b"\r\n", pos)
        if end < 0:
            break
        if kind == 58:  # ":" integer
            append(int(buf[pos + 1 : end]))
            pos = end + 2
        elif kind == 36:  # "$" bulk string
            length = int(buf[pos + 1 : end])
            if length < 0:
                append(None)
                pos = end + 2
                continue
            stop = end + 2 + length
            if stop + 2 > size:
                break
            append(bytes(buf[end + 2 : stop]))
            pos = stop + 2
        elif kind == 43:  # "+" simple string
            append(bytes(buf[pos + 1 : end]))
            pos = end + 2
        elif kind == 45:  # "-" error
            append(ErrorReply(buf[pos + 1 : end].decode("utf-8", "replace")))
            pos = end + 2
        else:
            raise RespError(f"unexpected reply {bytes(buf[pos : pos + 40])!r}")
    return pos


async def read_replies(conn: Any, count: int) -> list[Any]:
    """Read ``count`` simple replies from a redis-py connection we hold exclusively.

    Parses straight from the connection's stream when it has one (every reply on the
    wire is ours, so nothing else is consumed); otherwise uses ``read_response``.
    """
    reader = getattr(conn, "_reader", None)
    if not isinstance(reader, asyncio.StreamReader) or getattr(conn, "_parser", None) is None:
        return [await _read_one(conn) for _ in range(count)]
    buf = bytearray()
    out: list[Any] = []
    while len(out) < count:
        chunk = await reader.read(65536)
        if not chunk:
            raise ClosedEarly(len(out), count)
        buf += chunk
        consumed = parse_replies(buf, out, count)
        if consumed:
            del buf[:consumed]
    return out


async def _read_one(conn: Any) -> Any:
    from redis.exceptions import ResponseError

    try:
        return await conn.read_response()
    except ResponseError as exc:
        return ErrorReply(str(exc))


class ReplyParser:
    """Incremental parser of one RESP2/RESP3 reply of any shape (``XREADGROUP``'s).

    Feed it the bytes read from the connection; :meth:`feed` returns ``True`` once the
    reply is complete (then read :attr:`value`). Aggregates become lists (a RESP3 map
    becomes a flat list of keys and values), nulls ``None``, errors :class:`ErrorReply`.
    Work already done is kept between feeds, so a large reply is parsed once.
    """

    __slots__ = ("_buf", "_pos", "_stack", "done", "value")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._stack: list[list[Any]] = []  # [items, remaining]
        self.done = False
        self.value: Any = None

    def feed(self, chunk: bytes) -> bool:
        """Add bytes; True when the reply is complete.

        Raises:
            RespError: On an unknown type byte, or bytes after the reply.
        """
        buf = self._buf
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
        buf += chunk
        pos = 0
        size = len(buf)
        find = buf.find
        stack = self._stack
        while True:
            if pos >= size:
                break
            kind = buf[pos]
            end = find(b"\r\n", pos)
            if end < 0:
                break
            if kind == 36:  # "$" bulk string
                length = int(buf[pos + 1 : end])
                if length < 0:
                    value: Any = None
                    pos = end + 2
                else:
                    stop = end + 2 + length
                    if stop + 2 > size:
                        break
                    value = bytes(buf[end + 2 : stop])
                    pos = stop + 2
            elif kind in (42, 62, 37, 126):  # "*" array, ">" push, "%" map, "~" set
                count = int(buf[pos + 1 : end])
                pos = end + 2
                if kind == 37:
                    count *= 2
                if count < 0:
                    value = None
                elif count == 0:
                    value = []
                else:
                    stack.append([[], count])
                    continue
            elif kind == 58:  # ":" integer
                value = int(buf[pos + 1 : end])
                pos = end + 2
            elif kind == 43:  # "+" simple string
                value = bytes(buf[pos + 1 : end])
                pos = end + 2
            elif kind == 45:  # "-" error
                value = ErrorReply(buf[pos + 1 : end].decode("utf-8", "replace"))
                pos = end + 2
            elif kind == 95:  # "_" null
                value = None
                pos = end + 2
            else:
                raise RespError(f"unexpected reply type {bytes(buf[pos : pos + 40])!r}")
            while stack:
                top = stack[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                value = top[0]
                stack.pop()
            else:
                if pos != size:
                    raise RespError(f"{size - pos} unexpected bytes after the reply")
                self.done = True
                self.value = value
                self._buf = bytearray()
                return True
        self._pos = pos
        return False


async def read_reply(conn: Any) -> Any:
    """Read one reply from a redis-py connection we hold exclusively (see above)."""
    reader = getattr(conn, "_reader", None)
    if not isinstance(reader, asyncio.StreamReader) or getattr(conn, "_parser", None) is None:
        return await _read_one(conn)
    parser = ReplyParser()
    while True:
        chunk = await reader.read(262144)
        if not chunk:
            raise ClosedEarly(0, 1)
        if parser.feed(chunk):
            return parser.value
