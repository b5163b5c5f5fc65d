"""A model Avro cannot express is an error naming the field: from schema_for, at
dispatcher start (the decoder is built then) and at the first emit at the latest."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Literal

import pytest
from dispytch import Event, EventBase
from dispytch.avro import AvroSchemaError, AvroSerializer, InMemorySchemaRegistry, schema_for
from pydantic import BaseModel

from .conftest import Kit


class A(BaseModel):
    x: int


class B(BaseModel):
    y: int


class Deep(BaseModel):
    ok: int
    wait: dt.timedelta


@pytest.mark.parametrize(
    ("annotation", "field", "says"),
    [
        (Any, "bad", "no Avro type"),
        (Literal["a", "b"], "bad", "no Avro type"),
        (dt.timedelta, "bad", "no Avro type"),
        (Decimal, "bad", "max_digits"),
        (dict[int, str], "bad", "map keys are strings"),
        (A | B, "bad", "more than one record branch"),
        (tuple[int, str], "bad", "tuple[X, ...]"),
        (list, "bad", "item type"),
        (list[Deep], "bad[].wait", "no Avro type"),
        (dict[str, Deep], "bad{}.wait", "no Avro type"),
    ],
)
def test_inexpressible_field_is_named(annotation: Any, field: str, says: str) -> None:
    Bad = type("Bad", (EventBase,), {"__annotations__": {"bad": annotation}})
    with pytest.raises(AvroSchemaError) as info:
        schema_for(Bad)
    first, second = str(info.value).split("\n")
    assert f"Bad.{field}:" in first and says in first
    assert "docs/schemas.md" in second


def test_nested_model_field_path_is_named() -> None:
    class Outer(EventBase):
        inner: Deep

    with pytest.raises(AvroSchemaError, match=r"Outer\.inner\.wait: type timedelta"):
        schema_for(Outer)


def test_invalid_record_name_is_refused() -> None:
    class Named(EventBase):
        __avro_name__ = "not valid!"
        x: int

    with pytest.raises(AvroSchemaError, match="not a valid Avro name"):
        schema_for(Named)


def test_explicit_schema_errors_say_what_is_wrong() -> None:
    class Garbage(EventBase):
        __avro_schema__ = {"type": "record", "name": "G", "fields": [{"name": "x"}]}
        x: int

    with pytest.raises(AvroSchemaError, match=r"Garbage.__avro_schema__ is not a valid"):
        schema_for(Garbage)

    class Missing(EventBase):
        __avro_schema__ = {"type": "record", "name": "M", "fields": []}
        x: int

    with pytest.raises(AvroSchemaError, match=r"has no field 'x'"):
        schema_for(Missing)

    class Extra(EventBase):
        __avro_schema__ = {
            "type": "record",
            "name": "X",
            "fields": [{"name": "x", "type": "long"}, {"name": "y", "type": "long"}],
        }
        x: int

    with pytest.raises(AvroSchemaError, match=r"field 'y' is not a field of Extra"):
        schema_for(Extra)


class Unwritable(EventBase):
    __topic__ = "unwritable"
    wait: dt.timedelta


async def test_an_avro_message_for_an_inexpressible_handler_event_is_rejected(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    from dispytch.plugins import serializer_for

    # Core builds JSON decoders at dispatcher start; an Avro decoder is built on the
    # first Avro message (or up front, by asking the serializer for it):
    with pytest.raises(AvroSchemaError, match=r"Unwritable\.wait"):
        serializer_for("avro").decoder(Unwritable)
    d = kit.dispatcher()
    got: list[Unwritable] = []

    @d.handler(topic="unwritable")
    async def on(event: Event[Unwritable]) -> None:
        got.append(event.body)

    await d.start()
    kit.broker.publish(
        "unwritable", b"\xc3\x01" + bytes(8), {"dispytch-content-type": "application/avro"}, None
    )
    await kit.until(lambda: len(kit.broker.rejected) == 1, "the message rejected")
    assert got == [] and d.running
    assert "Unwritable.wait" in caplog.text


async def test_first_emit_fails_and_prepare_fails_earlier(kit: Kit) -> None:
    emitter = await kit.emitter("avro")
    with pytest.raises(AvroSchemaError, match=r"Unwritable\.wait"):
        await emitter.emit(Unwritable(wait=dt.timedelta(seconds=1)))
    assert kit.broker.published == 0
    with pytest.raises(AvroSchemaError, match=r"Unwritable\.wait"):
        AvroSerializer(InMemorySchemaRegistry()).prepare(Unwritable)
