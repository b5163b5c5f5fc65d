"""The Protobuf serializer: round trips on memory for every mapped field kind, the
mapping errors, evolution by Protobuf's rules, interoperability with plain protobuf
code, and the plugin listing."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import evo_v1_pb2
import evo_v2_pb2
import pytest
import shop_pb2
from dispytch import Event, EventBase
from dispytch.plugins import serializer_for
from dispytch.protobuf import ProtobufMappingError, ProtobufSerializer, check_mapping

from .conftest import Kit
from .models import Everything, Order, Tier, UserV1, UserV2, UserV2Strict, everything


async def test_every_field_kind_round_trips_through_the_memory_broker(kit: Kit) -> None:
    emitter = await kit.emitter("protobuf")
    d = kit.dispatcher()
    got: list[Everything] = []

    @d.handler(topic="everything")
    async def on(event: Event[Everything]) -> None:
        got.append(event.body)

    await d.start()
    sent = [
        everything(),
        everything(maybe=None, maybe_address=None, maybe_tier=None),
        everything(tags=[], numbers=(), scores={}, by_city={}, tiers=[], addresses=[]),
    ]
    for e in sent:
        await emitter.emit(e)
    await kit.until(lambda: len(got) == 3, "every event handled")
    assert got == sent
    assert kit.broker.rejected == []
    msg = emitter.build(sent[0])
    assert msg.headers["dispytch-content-type"] == "application/x-protobuf"


def test_plain_protobuf_reads_what_dispytch_writes() -> None:
    s = ProtobufSerializer()
    payload = s.encode(everything())
    msg = shop_pb2.Everything.FromString(payload)
    assert msg.count == -(2**62) and msg.name == "ünïcødé ✓" and msg.blob == b"\x00\xff\x10"
    assert msg.at.ToDatetime(tzinfo=dt.UTC) == dt.datetime(
        2026, 12, 4, 18, 0, 1, 123456, tzinfo=dt.UTC
    )
    assert msg.wait.ToTimedelta() == dt.timedelta(seconds=90, microseconds=5)
    assert msg.ident == "12345678-1234-5678-1234-567812345678"
    assert msg.price == "-12345.678" and msg.day == "1969-07-20"
    assert msg.tier == shop_pb2.TIER_PRO
    assert list(msg.tiers) == [shop_pb2.TIER_FREE, shop_pb2.TIER_PRO]
    assert msg.address.city == "Springfield" and not msg.address.HasField("zip")
    assert msg.addresses[0].zip == "c"
    assert dict(msg.scores) == {"a": 1.0, "b": -0.5}
    assert msg.by_city["Paris"].street == "rue"
    assert msg.HasField("maybe") and msg.maybe == 5
    assert dict(msg.by_number) == {1: "one", -2: "minus two"}
    assert msg.tree.children[0].children[0].label == "b"
    none = shop_pb2.Everything.FromString(s.encode(everything(maybe=None, maybe_address=None)))
    assert not none.HasField("maybe") and not none.HasField("maybe_address")


async def test_dispytch_handles_what_plain_protobuf_writes(kit: Kit) -> None:
    order = shop_pb2.Order(order_id=9, customer="eve", total="10.50", items=["a", "b"])
    order.placed_at.FromDatetime(dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC))
    d = kit.dispatcher()
    got: list[Order] = []

    @d.handler(topic="orders")
    async def on(event: Event[Order]) -> None:
        got.append(event.body)

    await d.start()
    kit.broker.publish(
        "orders",
        order.SerializeToString(),
        {"dispytch-content-type": "application/x-protobuf"},
        None,
    )
    await kit.until(lambda: len(got) == 1, "the plain message handled")
    assert got == [
        Order(
            order_id=9,
            customer="eve",
            total=Decimal("10.50"),
            placed_at=dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC),
            items=["a", "b"],
        )
    ]


# -- evolution: Protobuf's rules (field numbers) -----------------------------------------


def round_trip(writer: EventBase, reader: type[EventBase]) -> EventBase:
    s = ProtobufSerializer()
    return s.decoder(reader)(s.encode(writer))  # type: ignore[return-value]


def test_old_writer_new_reader_takes_the_model_default_for_the_added_field() -> None:
    assert round_trip(UserV1(id=1, name="a"), UserV2) == UserV2(id=1, name="a")


def test_new_writer_old_reader_skips_the_added_field() -> None:
    got = round_trip(UserV2(id=1, name="a", email="e@x"), UserV1)
    assert got == UserV1(id=1, name="a")


def test_a_reader_requiring_a_field_the_writer_never_set_rejects_the_payload() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="email"):
        round_trip(UserV1(id=1, name="a"), UserV2Strict)


async def test_undecodable_and_invalid_payloads_are_rejected_with_the_reason(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher()
    got: list[UserV2Strict] = []

    @d.handler(topic="users")
    async def on(event: Event[UserV2Strict]) -> None:
        got.append(event.body)

    await d.start()
    headers = {"dispytch-content-type": "application/x-protobuf"}
    kit.broker.publish("users", b"\xff\xff\xff", headers, None)  # not Protobuf at all
    old = evo_v1_pb2.User(id=1, name="a").SerializeToString()
    kit.broker.publish("users", old, headers, None)  # lacks the required email
    ok = evo_v2_pb2.User(id=2, email="b@x").SerializeToString()
    kit.broker.publish("users", ok, headers, None)
    await kit.until(lambda: len(got) == 1 and len(kit.broker.rejected) == 2, "all settled")
    assert got == [UserV2Strict(id=2, email="b@x")]
    assert d.running and d.stats["invalid_payload"] == 2
    assert "is not a valid Protobuf evo.v2.User" in caplog.text
    assert "email: Field required" in caplog.text


def test_unknown_enum_number_is_a_payload_error() -> None:
    msg = shop_pb2.Everything.FromString(ProtobufSerializer().encode(everything()))
    msg.tier = 0  # TIER_UNSPECIFIED: no member of Tier
    with pytest.raises(ValueError, match="TIER_UNSPECIFIED|value 0 has no member in Tier"):
        ProtobufSerializer().decoder(Everything)(msg.SerializeToString())
    assert Tier.PRO


# -- mapping errors -----------------------------------------------------------------------


def test_missing_message_class_says_what_to_set() -> None:
    class Bare(EventBase):
        x: int

    with pytest.raises(ProtobufMappingError, match=r"Set __protobuf__ = your_pb2\.Bare"):
        check_mapping(Bare)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"order_id": int, "nope": int}, r"Bad\.nope: message shop\.v1\.Order has no field 'nope'"),
        ({"order_id": str}, r"Bad\.order_id: cannot be mapped .*shop\.v1\.Order\.order_id"),
        ({"customer": str | None}, r"Bad\.customer: .*needs a field with presence"),
        ({"items": str}, r"Bad\.items: .*repeated field maps to list"),
        ({"placed_at": int}, r"Bad\.placed_at: .*Timestamp maps to datetime"),
    ],
)
def test_fields_that_do_not_map_are_named(fields: dict[str, object], says: str) -> None:
    Bad = type(
        "Bad",
        (EventBase,),
        {"__annotations__": fields, "__protobuf__": shop_pb2.Order, "__module__": __name__},
    )
    with pytest.raises(ProtobufMappingError, match=says) as info:
        ProtobufSerializer().prepare(Bad)
    assert "docs/schemas.md" in str(info.value) or "the .proto" in str(info.value)


def test_enum_members_without_a_proto_value_are_named() -> None:
    import enum

    class Mood(enum.Enum):
        FREE = 1
        GRUMPY = 2

    Bad = type(
        "Bad",
        (EventBase,),
        {
            "__annotations__": {"tier": Mood},
            "__protobuf__": shop_pb2.Everything,
            "__module__": __name__,
        },
    )
    with pytest.raises(ProtobufMappingError, match=r"Bad\.tier: .*member GRUMPY"):
        check_mapping(Bad)


async def test_first_emit_fails_on_a_model_that_does_not_map(kit: Kit) -> None:
    class Unmapped(EventBase):
        __topic__ = "x"
        x: int

    emitter = await kit.emitter("protobuf")
    with pytest.raises(ProtobufMappingError):
        await emitter.emit(Unmapped(x=1))
    assert kit.broker.published == 0


# -- the plugin ---------------------------------------------------------------------------

DISPYTCH = shutil.which("dispytch") or str(Path(sys.executable).parent / "dispytch")


def test_dispytch_plugins_json_lists_protobuf_with_its_content_type() -> None:
    out = subprocess.run(
        [DISPYTCH, "plugins", "--json"], capture_output=True, text=True, timeout=60, check=True
    )
    (plugin,) = [p for p in json.loads(out.stdout)["plugins"] if p["name"] == "protobuf"]
    assert plugin["distribution"] == "dispytch-protobuf"
    assert [(s["name"], s["content_type"]) for s in plugin["serializers"]] == [
        ("protobuf", "application/x-protobuf")
    ]
    assert isinstance(serializer_for("application/x-protobuf"), ProtobufSerializer)


def test_discovery_does_not_import_the_protobuf_runtime() -> None:
    code = (
        "import sys, dispytch.plugins as p, dispytch.protobuf\n"
        "p.plugin_infos()\n"
        "assert 'google.protobuf' not in sys.modules, 'protobuf imported by discovery'\n"
        "p.serializer_for('protobuf')\n"
        "assert 'google.protobuf' in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(2026, 6, 1, 12, 0),  # naive: UTC, as protobuf's FromDatetime takes it
    ],
)
def test_timestamps_match_protobufs_own_conversion(when: dt.datetime) -> None:
    payload = ProtobufSerializer().encode(everything(at=when))
    msg = shop_pb2.Everything.FromString(payload)
    reference = shop_pb2.Everything()
    reference.at.FromDatetime(when)
    assert (msg.at.seconds, msg.at.nanos) == (reference.at.seconds, reference.at.nanos)
    back = ProtobufSerializer().decoder(Everything)(payload).at
    assert back == reference.at.ToDatetime(tzinfo=dt.UTC)
