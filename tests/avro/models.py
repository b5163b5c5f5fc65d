"""Event classes shared by the Avro tests: one field of every supported kind."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Annotated

from dispytch import EventBase
from pydantic import BaseModel, Field, NaiveDatetime


class Tier(enum.Enum):
    FREE = "free"
    PRO = "pro"
    ENTERPRISE = 3


class Address(BaseModel):
    street: str
    city: str
    zip: str | None = None


class Node(BaseModel):
    """A recursive model: Avro refers to the record by name inside itself."""

    label: str
    children: list[Node] = []


class Everything(EventBase):
    """Every field kind the Avro serializer derives a schema for."""

    __topic__ = "everything"

    flag: bool
    count: int
    ratio: float
    name: str
    blob: bytes
    at: dt.datetime
    local_at: NaiveDatetime
    day: dt.date
    clock: dt.time
    price: Decimal = Field(max_digits=12, decimal_places=3)
    ident: uuid.UUID
    tier: Tier
    address: Address
    addresses: list[Address]
    tags: list[str]
    unique: set[int]
    pair: tuple[float, ...]
    scores: dict[str, float]
    by_city: dict[str, Address]
    tiers: list[Tier]
    maybe: int | None = None
    maybe_tier: Tier | None = None
    maybe_address: Address | None = None
    either: int | str = 0
    tree: Node = Node(label="root")
    amount: Annotated[Decimal, Field(max_digits=6, decimal_places=0)] = Decimal(7)


def everything(**changes: object) -> Everything:
    values: dict[str, object] = dict(
        flag=True,
        count=-(2**62),
        ratio=0.1,
        name="ünïcødé ✓",
        blob=b"\x00\xff\x10",
        at=dt.datetime(2026, 12, 4, 18, 0, 1, 123456, tzinfo=dt.UTC),
        local_at=dt.datetime(2026, 1, 2, 3, 4, 5, 6),
        day=dt.date(1969, 7, 20),
        clock=dt.time(23, 59, 58, 999999),
        price=Decimal("-12345.678"),
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        tier=Tier.ENTERPRISE,
        address=Address(street="1 Main St", city="Springfield"),
        addresses=[Address(street="a", city="b", zip="c")],
        tags=["x", "y", ""],
        unique={1, 2, 3},
        pair=(1.5, -2.0),
        scores={"a": 1.0, "b": -0.5},
        by_city={"Paris": Address(street="rue", city="Paris")},
        tiers=[Tier.FREE, Tier.PRO],
        maybe=5,
        maybe_tier=Tier.PRO,
        maybe_address=Address(street="s", city="c"),
        either="text",
        tree=Node(label="r", children=[Node(label="a", children=[Node(label="b")])]),
    )
    values.update(changes)
    return Everything.model_validate(values)
