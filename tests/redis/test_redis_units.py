"""Pure logic of the Redis transport: the envelope, stream fields, routes, URL options."""

from __future__ import annotations

import pytest
from dispytch.event import EventBase
from dispytch.redis import (
    RedisEventRoute,
    RedisEventSubscription,
    RedisStreamRoute,
    RedisStreamSubscription,
)
from dispytch.redis._client import split_url
from dispytch.redis.envelope import MAGIC, pack, stream_fields, unpack, unpack_fields


def test_envelope_round_trip_with_headers_and_key() -> None:
    headers = {"dispytch-event-type": "placed", "trace": "ünïcødé ✓"}
    data = pack(b'{"a":1}', headers, b"user-7")
    assert data.startswith(MAGIC)
    assert unpack(data) == (b'{"a":1}', headers, b"user-7")


def test_envelope_without_headers_or_key() -> None:
    assert unpack(pack(b"payload", None, None)) == (b"payload", {}, None)
    assert unpack(pack(b"payload", {}, b"")) == (b"payload", {}, b"")
    assert unpack(pack(b"", {"h": "v"}, None)) == (b"", {"h": "v"}, None)


def test_bare_payload_from_another_program() -> None:
    assert unpack(b'{"order_id": 1}') == (b'{"order_id": 1}', {}, None)
    assert unpack(b"") == (b"", {}, None)


def test_truncated_envelope_is_an_error() -> None:
    data = pack(b"payload", {"h": "v"}, b"key-bytes")
    with pytest.raises(ValueError, match="Truncated Dispytch envelope"):
        unpack(data[:20])


def test_headers_must_be_an_object() -> None:
    data = MAGIC + (2).to_bytes(4, "big") + (0xFFFFFFFF).to_bytes(4, "big") + b"[]payload"
    with pytest.raises(ValueError, match="must be a JSON object"):
        unpack(data)


def test_stream_fields_round_trip() -> None:
    fields = stream_fields(b"p", {"h": "v"}, b"k")
    assert fields == {b"payload": b"p", b"headers": b'{"h":"v"}', b"key": b"k"}
    assert unpack_fields(fields) == (b"p", {"h": "v"}, b"k")
    assert stream_fields(b"p", {}, None) == {b"payload": b"p"}
    assert unpack_fields({b"payload": b"p"}) == (b"p", {}, None)


def test_stream_entry_from_another_program() -> None:
    assert unpack_fields({b"data": b'{"x": 1}'}) == (b'{"x": 1}', {}, None)
    with pytest.raises(ValueError, match="no 'payload' field and more than one"):
        unpack_fields({b"a": b"1", b"b": b"2"})


def test_routes_resolve_placeholders() -> None:
    class UserEvent(EventBase):
        user_id: int

    route = RedisEventRoute(channel="user.{user_id}.events")
    assert route.resolve(UserEvent(user_id=7)).channel == "user.7.events"
    assert route.address == "user.{user_id}.events"
    stream = RedisStreamRoute(stream="orders.{user_id}", maxlen=100)
    resolved = stream.resolve(UserEvent(user_id=3))
    assert (resolved.stream, resolved.maxlen, resolved.approximate) == ("orders.3", 100, True)


def test_stream_route_rejects_nonpositive_maxlen() -> None:
    with pytest.raises(ValueError, match="trim the stream to nothing"):
        RedisStreamRoute(stream="s", maxlen=0)


def test_stream_subscription_patterns() -> None:
    sub = RedisStreamSubscription(stream="orders.{region}", group="g")
    assert sub.compiled.glob == "orders.*"
    assert sub.compiled.match("orders.eu") == {"region": "eu"}
    assert RedisStreamSubscription(stream="orders.eu").compiled.is_static


def test_pubsub_subscription_patterns_become_globs() -> None:
    assert RedisEventSubscription(channel="user.events").compiled.is_static
    assert RedisEventSubscription(channel="user.*").compiled.glob == "user.*"
    sub = RedisEventSubscription(channel="user.{user_id}.events")
    assert sub.compiled.glob == "user.*.events"
    assert sub.compiled.match("user.42.events") == {"user_id": "42"}


def test_split_url_maps_schemes_and_takes_options() -> None:
    known = {"group": str, "max_deliveries": int}
    url, opts = split_url(
        "redis+streams://h:1/2?group=g&socket_timeout=5&max_deliveries=3", {}, known
    )
    assert url == "redis://h:1/2?socket_timeout=5"
    assert opts == {"group": "g", "max_deliveries": 3}
    url, opts = split_url("rediss+streams://h/0?group=g", {"group": "explicit"}, known)
    assert (url, opts) == ("rediss://h/0", {"group": "explicit"})


def test_split_url_errors() -> None:
    with pytest.raises(ValueError, match="Not a Redis URL"):
        split_url("kafka://h:9092", {}, {})
    with pytest.raises(ValueError, match=r"Bad value 'many' for \?max_deliveries="):
        split_url("redis://h?max_deliveries=many", {}, {"max_deliveries": int})


# ---------------------------------------------------------------------- RESP fast paths
def _frames(data: bytes) -> tuple[list[list[object]], int]:
    from dispytch.redis._resp import parse_frames

    got: list[list[object]] = []
    consumed = parse_frames(bytearray(data), got.append)
    return got, consumed


def test_parse_frames_resp2_and_resp3() -> None:
    message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    push = b">4\r\n$8\r\npmessage\r\n$3\r\nch*\r\n$2\r\nch\r\n$0\r\n\r\n"
    confirm = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    got, consumed = _frames(message + push + confirm)
    assert consumed == len(message + push + confirm)
    assert got == [
        [b"message", b"ch", b"hello"],
        [b"pmessage", b"ch*", b"ch", b""],
        [b"subscribe", b"ch", 1],
    ]


def test_parse_frames_keeps_partial_frames_for_later() -> None:
    data = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhel\r\n\r\n" * 2
    data = data.replace(b"$5\r\nhel\r\n\r\n", b"$5\r\nhe\r\nl\r\n")  # CRLF inside payload
    whole, consumed = _frames(data)
    assert consumed == len(data)
    assert [f[2] for f in whole] == [b"he\r\nl", b"he\r\nl"]
    for cut in range(len(data)):
        got, consumed = _frames(data[:cut])
        assert consumed in (0, len(data) // 2)
        assert len(got) == (1 if consumed else 0)


def test_parse_frames_rejects_what_it_does_not_know() -> None:
    from dispytch.redis._resp import RespError

    with pytest.raises(RespError, match="expected an array"):
        _frames(b"+OK\r\n")
    with pytest.raises(RespError, match="unexpected element"):
        _frames(b"*1\r\n*1\r\n:1\r\n")


def test_parse_replies() -> None:
    from dispytch.redis._resp import ErrorReply, RespError, parse_replies

    data = b":3\r\n$15\r\n1700000000000-0\r\n-WRONGTYPE bad key\r\n$-1\r\n+OK\r\n:7"
    out: list[object] = []
    consumed = parse_replies(bytearray(data), out, 10)
    assert out == [3, b"1700000000000-0", "WRONGTYPE bad key", None, b"OK"]
    assert isinstance(out[2], ErrorReply)
    assert consumed == len(data) - 2  # the incomplete ":7" waits for its CRLF
    out = []
    assert parse_replies(bytearray(b":1\r\n:2\r\n"), out, 1) == 4
    assert out == [1]
    with pytest.raises(RespError, match="unexpected reply"):
        parse_replies(bytearray(b"*1\r\n:1\r\n"), [], 1)


def test_command_encoding() -> None:
    from dispytch.redis._resp import bulk, command

    assert bulk(b"ab") == b"$2\r\nab\r\n"
    assert command(b"PUBLISH", b"ch", b"") == b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$0\r\n\r\n"
