"""Hypothesis: generated models and values round-trip identically through JSON and Avro
(both framings)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Annotated, Any

from dispytch import EventBase
from dispytch.avro import AvroSerializer, ConfluentAvroSerializer, InMemorySchemaRegistry
from dispytch.serialization import JsonSerializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, create_model


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = 2


class Point(BaseModel):
    x: int
    y: float


INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOAT = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=20)
INSTANT = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
)
MONEY = st.decimals(min_value=-(10**7), max_value=10**7, places=2, allow_nan=False)
POINT = st.builds(Point, x=INT64, y=FLOAT)

# (annotation, values): kinds JSON and Avro both carry without loss.
KINDS: list[tuple[Any, st.SearchStrategy[Any]]] = [
    (bool, st.booleans()),
    (int, INT64),
    (float, FLOAT),
    (str, TEXT),
    (bytes, TEXT.map(str.encode)),  # JSON carries bytes as UTF-8
    (dt.datetime, INSTANT),
    (dt.date, st.dates()),
    (uuid.UUID, st.uuids()),
    (Annotated[Decimal, Field(max_digits=10, decimal_places=2)], MONEY),
    (Mood, st.sampled_from(Mood)),
    (Point, POINT),
    (list[int], st.lists(INT64, max_size=4)),
    (list[Point], st.lists(POINT, max_size=3)),
    (dict[str, str], st.dictionaries(TEXT, TEXT, max_size=3)),
    (dict[str, Mood], st.dictionaries(TEXT, st.sampled_from(Mood), max_size=3)),
    (int | None, st.none() | INT64),
    (Point | None, st.none() | POINT),
    (list[str] | None, st.none() | st.lists(TEXT, max_size=3)),
]


@st.composite
def model_and_event(draw: st.DrawFn) -> EventBase:
    chosen = draw(st.lists(st.integers(0, len(KINDS) - 1), min_size=1, max_size=7))
    fields = {f"f{i}": (KINDS[k][0], ...) for i, k in enumerate(chosen)}
    model = create_model(f"Gen{draw(st.integers(0, 10**6))}", __base__=EventBase, **fields)  # type: ignore[call-overload]
    values = {f"f{i}": draw(KINDS[k][1]) for i, k in enumerate(chosen)}
    return model.model_validate(values)  # type: ignore[no-any-return]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_event())
def test_json_and_avro_round_trip_identically(event: EventBase) -> None:
    model = type(event)
    json_s = JsonSerializer()
    via_json = json_s.decoder(model)(json_s.encode(event))
    for serializer in (
        AvroSerializer(InMemorySchemaRegistry()),
        ConfluentAvroSerializer(InMemorySchemaRegistry()),
    ):
        via_avro = serializer.decoder(model)(serializer.encode(event))
        assert via_avro == event
        assert via_avro == via_json
        assert via_avro.model_dump(mode="json") == via_json.model_dump(mode="json")
