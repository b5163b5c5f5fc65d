"""Schema evolution the Avro way, through the dispatcher on the memory transport.

The matrix (writer -> reader: expected outcome):

- v1 -> v2 (v2 added ``email`` with a default): handled, ``email`` takes the default.
- v2 -> v1 (old reader, new writer): handled, ``email`` skipped.
- v1 -> v3 (v3 removed ``name``): handled.
- v3 -> v1 (v1 needs ``name``, which has no default): rejected, IncompatibleSchemaError.
- v1 -> v4 (``id`` changed from long to string): rejected, IncompatibleSchemaError.
- v1 -> v5 (``id`` promoted from long to double): handled (Avro's promotion).
- unknown writer schema (not in the consumer's registry): rejected, UnknownSchemaError.
- nested record gained a defaulted field: handled; writer enum gained a symbol: handled
  unless the message carries the new symbol (then rejected, per message).

A rejected message is logged with its reason and nacked without requeue (dead-lettered
where a dead-letter policy is configured); the dispatcher goes on with the next message.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import uuid
from decimal import Decimal

import pytest
from dispytch import Event, EventBase, EventEmitter
from dispytch.avro import (
    AvroSerializer,
    ConfluentAvroSerializer,
    IncompatibleSchemaError,
    InMemorySchemaRegistry,
    UnknownSchemaError,
)
from dispytch.memory import MemoryProducer
from pydantic import BaseModel, Field, NaiveDatetime

from .conftest import Kit
from .models import Address, Tier


class UserV1(EventBase):
    __avro_name__ = "User"
    __topic__ = "users"
    __event_type__ = "user"
    id: int
    name: str


class UserV2(EventBase):
    __avro_name__ = "User"
    __topic__ = "users"
    __event_type__ = "user"
    id: int
    name: str
    email: str = "unknown@example.com"


class UserV3(EventBase):
    __avro_name__ = "User"
    __topic__ = "users"
    __event_type__ = "user"
    id: int


class UserV4(EventBase):
    __avro_name__ = "User"
    __topic__ = "users"
    __event_type__ = "user"
    id: str
    name: str


class UserV5(EventBase):
    __avro_name__ = "User"
    __topic__ = "users"
    __event_type__ = "user"
    id: float
    name: str


def make(cls: type[EventBase]) -> EventBase:
    values: dict[str, object] = {"id": 7, "name": "ada", "email": "ada@example.com"}
    if cls is UserV4:
        values["id"] = "7"
    return cls.model_validate({k: v for k, v in values.items() if k in cls.model_fields})


HANDLED = [
    (UserV1, UserV2, {"id": 7, "name": "ada", "email": "unknown@example.com"}),
    (UserV2, UserV1, {"id": 7, "name": "ada"}),
    (UserV1, UserV3, {"id": 7}),
    (UserV1, UserV5, {"id": 7.0, "name": "ada"}),
    (UserV2, UserV2, {"id": 7, "name": "ada", "email": "ada@example.com"}),
]
REJECTED = [
    (UserV3, UserV1, "No default value for field name"),
    (UserV1, UserV4, "Schema mismatch"),
]


async def run_one(
    kit: Kit, framing: str, writer: type[EventBase], reader: type[EventBase]
) -> list[EventBase]:
    emitter = await kit.emitter(framing)
    d = kit.dispatcher()
    got: list[EventBase] = []

    async def on(event):  # type: ignore[no-untyped-def]
        got.append(event.body)

    # The reader class is a parameter: annotate at run time (annotations are strings here).
    on.__annotations__ = {"event": Event[reader], "return": None}
    d.handler(topic="users")(on)
    await d.start()
    await emitter.emit(make(writer))
    # A control event of the reader's own schema proves the dispatcher goes on.
    await emitter.emit(make(reader))
    await kit.until(lambda: len(got) + len(kit.broker.rejected) == 2, "both settled")
    return got


@pytest.mark.parametrize("framing", ["avro", "avro-confluent"])
@pytest.mark.parametrize(("writer", "reader", "expected"), HANDLED)
async def test_compatible_changes_are_resolved(
    kit: Kit, framing: str, writer: type, reader: type, expected: dict[str, object]
) -> None:
    got = await run_one(kit, framing, writer, reader)
    assert [g.model_dump() for g in got] == [expected, make(reader).model_dump()]
    assert all(type(g) is reader for g in got)
    assert kit.broker.rejected == []


@pytest.mark.parametrize("framing", ["avro", "avro-confluent"])
@pytest.mark.parametrize(("writer", "reader", "reason"), REJECTED)
async def test_incompatible_changes_are_rejected_with_the_reason(
    kit: Kit,
    caplog: pytest.LogCaptureFixture,
    framing: str,
    writer: type,
    reader: type,
    reason: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="dispytch")
    got = await run_one(kit, framing, writer, reader)
    assert got == [make(reader)]  # the control event, after the rejected one
    assert len(kit.broker.rejected) == 1
    assert kit.dispatchers[0].running
    assert kit.dispatchers[0].stats["invalid_payload"] == 1
    assert "IncompatibleSchemaError" in caplog.text or "cannot be read as User" in caplog.text
    assert reason in caplog.text


@pytest.mark.parametrize(
    ("serializer", "says"),
    [
        (AvroSerializer, "does not have"),
        (ConfluentAvroSerializer, "does not have"),
    ],
)
async def test_unknown_writer_schema_is_rejected_and_the_dispatcher_goes_on(
    kit: Kit, caplog: pytest.LogCaptureFixture, serializer: type, says: str
) -> None:
    # The producer registers into a registry the consumer does not share.
    private = InMemorySchemaRegistry()
    private.register({"type": "record", "name": "Pad", "fields": []})  # ids differ too
    stranger = EventEmitter(MemoryProducer(kit.broker), serializer=serializer(private))
    await stranger.start()
    kit.emitters.append(stranger)
    normal = await kit.emitter(serializer.content_type)
    d = kit.dispatcher()
    got: list[EventBase] = []

    @d.handler(topic="users")
    async def on(event: Event[UserV1]) -> None:
        got.append(event.body)

    await d.start()
    await stranger.emit(make(UserV2))
    await normal.emit(make(UserV1))
    await kit.until(lambda: len(got) == 1 and len(kit.broker.rejected) == 1, "both settled")
    assert d.running and d.stats["invalid_payload"] == 1
    assert says in caplog.text and "UnknownSchemaError" in caplog.text


def test_error_classes_are_payload_errors() -> None:
    from dispytch.errors import PayloadError

    assert issubclass(UnknownSchemaError, PayloadError)
    assert issubclass(IncompatibleSchemaError, PayloadError)
    s = AvroSerializer(InMemorySchemaRegistry())
    with pytest.raises(PayloadError, match="Not Avro single-object encoding"):
        s.decoder(UserV1)(b'{"id": 1}')
    with pytest.raises(PayloadError, match="Not the Confluent wire format"):
        ConfluentAvroSerializer(InMemorySchemaRegistry()).decoder(UserV1)(b"\x01")


class UserV6(EventBase):
    """v1 plus fields of every kind whose default fastavro fills in Avro's JSON form."""

    __avro_name__ = "User"
    __topic__ = "users"
    __event_type__ = "user"
    id: int
    name: str
    joined: dt.datetime = dt.datetime(2020, 5, 17, 8, 30, 0, 250, tzinfo=dt.UTC)
    local: NaiveDatetime = dt.datetime(2020, 5, 17, 8, 30)
    day: dt.date = dt.date(1999, 12, 31)
    clock: dt.time = dt.time(7, 6, 5, 4)
    ref: uuid.UUID = uuid.UUID(int=12345)
    balance: Decimal = Field(Decimal("-10.05"), max_digits=8, decimal_places=2)
    avatar: bytes = b"\x00\xfe"
    tier: Tier = Tier.PRO
    home: Address = Address(street="s", city="c")
    history: list[dt.date] = [dt.date(2000, 1, 1)]
    maybe: dt.datetime | None = None


async def test_added_fields_of_every_kind_take_their_defaults(kit: Kit) -> None:
    got = await run_one(kit, "avro", UserV1, UserV6)
    assert got[0] == UserV6(id=7, name="ada")
    assert kit.broker.rejected == []


async def test_truncated_payloads_are_rejected_and_the_dispatcher_goes_on(kit: Kit) -> None:
    emitter = await kit.emitter("avro")
    d = kit.dispatcher()
    got: list[UserV1] = []

    @d.handler(topic="users")
    async def on(event: Event[UserV1]) -> None:
        got.append(event.body)

    await d.start()
    good = emitter.build(make(UserV1)).payload
    headers = {"dispytch-content-type": "application/avro"}
    kit.broker.publish("users", good[:-3], headers, None)  # cut inside the body
    kit.broker.publish("users", good[:6], headers, None)  # cut inside the fingerprint
    kit.broker.publish("users", good, headers, None)
    await kit.until(lambda: len(got) == 1 and len(kit.broker.rejected) == 2, "all settled")
    assert d.running and d.stats["invalid_payload"] == 2


class ColorV1(enum.Enum):
    __avro_name__ = "Color"
    RED = 1
    BLUE = 2


class ColorV2(enum.Enum):
    __avro_name__ = "Color"
    RED = 1
    BLUE = 2
    GREEN = 3


class PartV1(BaseModel):
    __avro_name__ = "Part"
    sku: str


class PartV2(BaseModel):
    __avro_name__ = "Part"
    sku: str
    qty: int = 1


class PaintV2(EventBase):
    __avro_name__ = "Paint"
    color: ColorV2
    parts: list[PartV1]


class PaintV1(EventBase):
    __avro_name__ = "Paint"
    color: ColorV1
    parts: list[PartV2]


def test_nested_records_and_enums_evolve_too() -> None:
    # Nested: the reader's nested record added a field with a default -> filled in.
    # Enum: the writer added a symbol -> its other symbols still read; the new one is
    # an incompatible datum (Avro enums derive no default), rejected per message.
    s = AvroSerializer(InMemorySchemaRegistry())
    read = s.decoder(PaintV1)
    ok = read(s.encode(PaintV2(color=ColorV2.BLUE, parts=[PartV1(sku="a")])))
    assert ok == PaintV1(color=ColorV1.BLUE, parts=[PartV2(sku="a", qty=1)])
    with pytest.raises(IncompatibleSchemaError, match="GREEN not found in reader symbol"):
        read(s.encode(PaintV2(color=ColorV2.GREEN, parts=[])))
