"""How headers and keys travel with a payload over Redis.

Pub/Sub carries one byte string per message, so Dispytch prefixes a small header block
(the *envelope*)::

    offset  size  content
    0       4     magic b"\\x00DY1" (NUL, "DY", format version 1)
    4       4     header block length H, unsigned big-endian
    8       4     key length K, unsigned big-endian; 0xFFFFFFFF means "no key"
    12      H     headers: a JSON object of text to text, UTF-8
    12+H    K     key bytes
    12+H+K  ...   the payload, untouched

A message that does not start with the magic is taken as a bare payload with no headers
or key, so plain ``PUBLISH`` from other programs is received as-is (JSON starts with
``{`` or ``[``, never NUL). Stream entries need no envelope: they are field maps, with
``payload``, ``headers`` (the same JSON object, omitted when empty) and ``key``.

This module does not import ``redis``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "FIELD_HEADERS",
    "FIELD_KEY",
    "FIELD_PAYLOAD",
    "MAGIC",
    "decode_headers",
    "encode_headers",
    "pack",
    "stream_fields",
    "unpack",
    "unpack_fields",
]

MAGIC = b"\x00DY1"
_PREFIX = struct.Struct(">4sII")
_LENGTHS = struct.Struct(">II")
_NO_KEY = 0xFFFFFFFF
_HEAD = _PREFIX.size

FIELD_PAYLOAD = b"payload"
FIELD_HEADERS = b"headers"
FIELD_KEY = b"key"

_dumps: Callable[[Any], bytes]
_loads: Callable[[bytes], Any]
try:  # orjson is optional: it only makes the header block cheaper.
    import orjson as _orjson

    _dumps = _orjson.dumps
    _loads = _orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def _dumps(obj: Any) -> bytes:
        return _encoder.encode(obj).encode()

    _loads = json.loads


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Headers as a compact JSON object (UTF-8)."""
    return _dumps(headers if type(headers) is dict else dict(headers))


def decode_headers(raw: bytes) -> dict[str, str]:
    """The inverse of :func:`encode_headers`.

    Raises:
        ValueError: When ``raw`` is not a JSON object of strings.
    """
    try:
        headers = _loads(raw)
    except ValueError as exc:  # json and orjson errors, UnicodeDecodeError included
        raise ValueError(f"Redis message headers are not valid JSON ({exc}): {raw[:80]!r}") from exc
    if type(headers) is not dict:
        raise ValueError(f"Redis message headers must be a JSON object, got {raw[:80]!r}")
    return headers


def pack(payload: bytes, headers: Mapping[str, str] | None, key: bytes | None) -> bytes:
    """Wrap a payload with its headers and key for Pub/Sub (see the module docs)."""
    hb = _dumps(headers if type(headers) is dict else dict(headers or {})) if headers else b""
    if key is None:
        return b"".join((_PREFIX.pack(MAGIC, len(hb), _NO_KEY), hb, payload))
    return b"".join((_PREFIX.pack(MAGIC, len(hb), len(key)), hb, key, payload))


def unpack(data: bytes) -> tuple[bytes, dict[str, str], bytes | None]:
    """Split a Pub/Sub message into ``(payload, headers, key)``.

    Data without the envelope's magic is a bare payload (published by another program).

    Raises:
        ValueError: On an envelope whose lengths do not fit the message.
    """
    if data[:4] != MAGIC:
        return data, {}, None
    if len(data) < _HEAD:
        raise ValueError(f"Truncated Dispytch envelope: {len(data)} bytes.")
    hl, kl = _LENGTHS.unpack_from(data, 4)
    start = _HEAD + hl
    end = start if kl == _NO_KEY else start + kl
    if end > len(data):
        raise ValueError(
            f"Truncated Dispytch envelope: it announces {end} bytes of headers and key "
            f"but the message has {len(data)}."
        )
    headers = decode_headers(data[_HEAD:start]) if hl else {}
    key = None if kl == _NO_KEY else data[start:end]
    return data[end:], headers, key


def stream_fields(
    payload: bytes, headers: Mapping[str, str] | None, key: bytes | None
) -> dict[bytes, bytes]:
    """The field map of a stream entry (``XADD``)."""
    fields = {FIELD_PAYLOAD: payload}
    if headers:
        fields[FIELD_HEADERS] = encode_headers(headers)
    if key is not None:
        fields[FIELD_KEY] = key
    return fields


def unpack_fields(fields: Mapping[bytes, bytes]) -> tuple[bytes, dict[str, str], bytes | None]:
    """Read ``(payload, headers, key)`` from a stream entry.

    An entry written by another program without a ``payload`` field but with exactly one
    field is read as that field's value (``XADD s * data <json>``).

    Raises:
        ValueError: When the entry has no ``payload`` field and several others.
    """
    payload = fields.get(FIELD_PAYLOAD)
    if payload is None:
        if len(fields) != 1:
            raise ValueError(
                "The stream entry has no 'payload' field and more than one other field "
                f"({sorted(k.decode(errors='replace') for k in fields)}); Dispytch cannot "
                "tell which one is the event. Publish with a 'payload' field."
            )
        payload = next(iter(fields.values()))
        return payload, {}, None
    raw = fields.get(FIELD_HEADERS)
    return payload, decode_headers(raw) if raw else {}, fields.get(FIELD_KEY)
