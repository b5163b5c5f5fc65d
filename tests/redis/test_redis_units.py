"""Pure logic of the Redis transport: the envelope, stream fields, routes, URL options."""

from __future__ import annotations

import pytest
from dispytch.errors import ConfigError
from dispytch.event import EventBase
from dispytch.redis import (
    RedisEventRoute,
    RedisEventSubscription,
    RedisStreamRoute,
    RedisStreamSubscription,
)
from dispytch.redis._options import RedisOptions, RedisStreamOptions, fields_of, split_url
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
    url, opts = split_url(
        "redis+streams://h:1/2?group=g&socket_timeout=5&max_deliveries=3", RedisStreamOptions, {}
    )
    assert url == "redis://h:1/2?socket_timeout=5"
    assert fields_of(opts, ("group", "max_deliveries", "block_ms")) == {
        "group": "g",
        "max_deliveries": 3,
    }
    url, opts = split_url("rediss+streams://h/0?group=g", RedisStreamOptions, {"group": "kw"})
    assert url == "rediss://h/0"
    assert opts.group == "kw"  # keyword arguments win over the query


def test_split_url_errors() -> None:
    with pytest.raises(ConfigError, match="Not a Redis URL"):
        split_url("kafka://h:9092", RedisOptions, {})
    with pytest.raises(ConfigError, match="max_deliveries='many'"):
        split_url("redis+streams://h?max_deliveries=many", RedisStreamOptions, {})
    with pytest.raises(ConfigError, match="Did you mean 'group'"):
        split_url("redis+streams://h", RedisStreamOptions, {"grop": "g"})
    # Streams options are not Pub/Sub options: a typo'd scheme shows up at once.
    with pytest.raises(ConfigError, match="is a Redis Streams option"):
        split_url("redis://h?group=g", RedisOptions, {})


def test_one_boolean_vocabulary() -> None:
    for text, value in (("on", True), ("off", False), ("yes", True), ("0", False)):
        assert RedisOptions.parse(f"ordered={text}").ordered is value


def test_options_are_listed_for_dispytch_plugins() -> None:
    names = {o["name"] for o in RedisStreamOptions.describe()}
    assert {"group", "max_unsettled", "dead_letter_stream", "delivery_timeout"} <= names
    assert all(o["description"] for o in RedisStreamOptions.describe())


def test_stream_pairs_reads_resp2_and_resp3_shapes() -> None:
    from dispytch.redis.streams.reader import entry_fields, stream_pairs

    entries = [[b"1-0", [b"payload", b"x"]]]
    assert list(stream_pairs([[b"s", entries]])) == [(b"s", entries)]
    assert list(stream_pairs({b"s": entries})) == [(b"s", entries)]
    assert list(stream_pairs(None)) == []
    assert list(stream_pairs(b"OK")) == []  # not an XREADGROUP reply: nothing
    assert entry_fields([b"payload", b"x", b"key", b"k"]) == {b"payload": b"x", b"key": b"k"}
    assert entry_fields({b"payload": b"x"}) == {b"payload": b"x"}
    assert entry_fields(None) is None
