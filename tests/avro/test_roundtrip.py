"""Round trips on the memory transport: emitter -> broker -> dispatcher -> handler, for
every supported field kind and both framings; the schema derived from the model."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from dispytch import Event, EventBase
from dispytch.avro import (
    AvroSerializer,
    ConfluentAvroSerializer,
    InMemorySchemaRegistry,
    schema_for,
)
from dispytch.plugins import serializer_for
from pydantic import Field

from .conftest import Kit
from .models import Address, Everything, Node, Tier, everything

FRAMINGS = ["avro", "avro-confluent"]


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_every_field_kind_round_trips_through_the_memory_broker(
    kit: Kit, framing: str
) -> None:
    emitter = await kit.emitter(framing)
    d = kit.dispatcher()
    got: list[Everything] = []

    @d.handler(topic="everything")
    async def on(event: Event[Everything]) -> None:
        got.append(event.body)

    await d.start()
    sent = [
        everything(),
        everything(maybe=None, maybe_tier=None, maybe_address=None, either=-3),
        everything(tags=[], unique=set(), pair=(), scores={}, by_city={}, tiers=[]),
    ]
    for e in sent:
        await emitter.emit(e)
    await kit.until(lambda: len(got) == len(sent), "every event handled")
    assert got == sent
    assert d.stats["handled"] == 3 and kit.broker.rejected == []


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_content_type_header_names_the_framing(kit: Kit, framing: str) -> None:
    emitter = await kit.emitter(framing)
    msg = emitter.build(everything())
    expected = serializer_for(framing).content_type
    assert msg.headers["dispytch-content-type"] == expected
    assert (
        expected
        == {
            "avro": "application/avro",
            "avro-confluent": "application/vnd.confluent.avro",
        }[framing]
    )
    if framing == "avro":
        assert msg.payload[:2] == b"\xc3\x01"
    else:
        assert msg.payload[:1] == b"\x00"


@pytest.mark.parametrize(
    ("value", "avro_type"),
    [
        (True, "boolean"),
        (2**63 - 1, "long"),
        (-1.25, "double"),
        ("s", "string"),
        (b"\x01", "bytes"),
    ],
)
def test_primitives_map_to_avro_primitives(value: object, avro_type: str) -> None:
    class One(EventBase):
        v: type(value)  # type: ignore[valid-type]

    assert schema_for(One)["fields"] == [{"name": "v", "type": avro_type}]
    s = AvroSerializer(InMemorySchemaRegistry())
    assert s.decoder(One)(s.encode(One(v=value))).v == value


def test_logical_types_and_named_types_in_the_derived_schema() -> None:
    fields = {f["name"]: f for f in schema_for(Everything)["fields"]}
    assert fields["at"]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["local_at"]["type"] == {"type": "long", "logicalType": "local-timestamp-micros"}
    assert fields["day"]["type"] == {"type": "int", "logicalType": "date"}
    assert fields["clock"]["type"] == {"type": "long", "logicalType": "time-micros"}
    assert fields["ident"]["type"] == {"type": "string", "logicalType": "uuid"}
    assert fields["price"]["type"] == {
        "type": "bytes",
        "logicalType": "decimal",
        "precision": 12,
        "scale": 3,
    }
    assert fields["amount"]["type"]["precision"] == 6
    assert fields["tier"]["type"] == {
        "type": "enum",
        "name": "Tier",
        "symbols": ["FREE", "PRO", "ENTERPRISE"],
    }
    # Named types are defined once, then referred to by name.
    assert fields["address"]["type"]["type"] == "record"
    assert fields["addresses"]["type"] == {"type": "array", "items": "Address"}
    assert fields["tiers"]["type"] == {"type": "array", "items": "Tier"}
    assert fields["scores"]["type"] == {"type": "map", "values": "double"}
    assert fields["maybe"] == {"name": "maybe", "type": ["null", "long"], "default": None}
    assert fields["maybe_tier"]["type"] == ["null", "Tier"]
    assert fields["either"] == {"name": "either", "type": ["long", "string"], "default": 0}
    tree = fields["tree"]
    assert tree["type"]["fields"][1]["type"] == {"type": "array", "items": "Node"}
    assert tree["default"] == {"label": "root", "children": []}
    assert fields["amount"]["default"] == "\x07"  # Avro's JSON form of bytes
    # The model's docstring becomes the record's doc.
    assert "Every field kind" in schema_for(Everything)["doc"]


def test_defaults_are_written_in_avro_json_form() -> None:
    class Defaults(EventBase):
        at: dt.datetime = dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
        day: dt.date = dt.date(1970, 1, 11)
        tier: Tier = Tier.PRO
        ident: uuid.UUID = uuid.UUID(int=0)
        address: Address = Address(street="s", city="c")
        tags: list[str] = ["a"]
        price: Decimal = Field(Decimal("1.50"), max_digits=4, decimal_places=2)
        maybe: int | None = 3

    fields = {f["name"]: f for f in schema_for(Defaults)["fields"]}
    assert fields["at"]["default"] == 1_000_000
    assert fields["day"]["default"] == 10
    assert fields["tier"]["default"] == "PRO"
    assert fields["ident"]["default"] == "00000000-0000-0000-0000-000000000000"
    assert fields["address"]["default"] == {"street": "s", "city": "c", "zip": None}
    assert fields["tags"]["default"] == ["a"]
    assert fields["price"]["default"] == "\x00\x96"  # 150, two's complement big-endian
    assert fields["maybe"] == {"name": "maybe", "type": ["long", "null"], "default": 3}
    # fastavro accepts every one of them (it validates defaults when parsing).
    import fastavro

    fastavro.parse_schema(schema_for(Defaults))


def test_explicit_schema_on_the_class_is_used_as_given() -> None:
    schema = {
        "type": "record",
        "name": "com.acme.Payment",
        "fields": [
            {"name": "amount", "type": "long"},
            {"name": "note", "type": "string", "default": ""},
            {"name": "legacy", "type": "int", "default": 0},
        ],
    }

    class Payment(EventBase):
        __avro_schema__ = json.dumps(schema)
        amount: int
        note: str = ""

    assert schema_for(Payment) == schema
    s = AvroSerializer(InMemorySchemaRegistry())
    payload = s.encode(Payment(amount=5, note="n"))
    assert s.decoder(Payment)(payload) == Payment(amount=5, note="n")


def test_one_schema_per_class_is_registered_once() -> None:
    reg = InMemorySchemaRegistry()
    s = ConfluentAvroSerializer(reg)
    for n in range(3):
        s.encode(everything(count=n))
    s.prepare(Everything)
    assert reg.lookup(1) is not None and reg.lookup(2) is None
    assert reg.lookup(1).schema == schema_for(Everything)  # type: ignore[union-attr]


def test_a_model_with_aliases_decodes_by_field_name() -> None:
    class Aliased(EventBase):
        user_id: int = Field(alias="userId")

    s = AvroSerializer(InMemorySchemaRegistry())
    e = Aliased(userId=4)
    assert schema_for(Aliased)["fields"][0]["name"] == "user_id"
    assert s.decoder(Aliased)(s.encode(e)) == e


def test_naive_datetimes_in_an_instant_field_are_taken_as_utc() -> None:
    class At(EventBase):
        at: dt.datetime

    s = AvroSerializer(InMemorySchemaRegistry())
    back = s.decoder(At)(s.encode(At(at=dt.datetime(2020, 1, 1, 12))))
    assert back.at == dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC)


def test_recursive_models_round_trip() -> None:
    class Tree(EventBase):
        root: Node

    s = AvroSerializer(InMemorySchemaRegistry())
    t = Tree(root=Node(label="a", children=[Node(label="b", children=[Node(label="c")])]))
    assert s.decoder(Tree)(s.encode(t)) == t
    assert Address and Tier  # the shared models import cleanly
