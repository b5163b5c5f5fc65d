"""Pydantic events mapped to the generated shop_pb2 / evo_*_pb2 message classes."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal

import evo_v1_pb2
import evo_v2_pb2
import shop_pb2
from dispytch import EventBase
from pydantic import BaseModel, Field


class Tier(enum.Enum):
    FREE = "free"  # TIER_FREE in the .proto: the enum's name is a prefix there
    PRO = "pro"


class Address(BaseModel):
    street: str
    city: str
    zip: str | None = None


class Node(BaseModel):
    label: str
    children: list[Node] = []


class Everything(EventBase):
    __topic__ = "everything"
    __protobuf__ = shop_pb2.Everything

    flag: bool
    count: int
    ratio: float
    name: str
    blob: bytes
    at: dt.datetime
    wait: dt.timedelta
    ident: uuid.UUID
    price: Decimal
    day: dt.date
    tier: Tier
    address: Address
    addresses: list[Address]
    tags: list[str]
    numbers: tuple[int, ...]
    scores: dict[str, float]
    by_city: dict[str, Address]
    tiers: list[Tier]
    maybe: int | None = None
    maybe_address: Address | None = None
    maybe_tier: Tier | None = None
    by_number: dict[int, str] = {}
    tree: Node = Node(label="root")
    small: int = 0
    single: float = 0.0


def everything(**changes: object) -> Everything:
    values: dict[str, object] = dict(
        flag=True,
        count=-(2**62),
        ratio=0.1,
        name="ünïcødé ✓",
        blob=b"\x00\xff\x10",
        at=dt.datetime(2026, 12, 4, 18, 0, 1, 123456, tzinfo=dt.UTC),
        wait=dt.timedelta(seconds=90, microseconds=5),
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        price=Decimal("-12345.678"),
        day=dt.date(1969, 7, 20),
        tier=Tier.PRO,
        address=Address(street="1 Main St", city="Springfield"),
        addresses=[Address(street="a", city="b", zip="c")],
        tags=["x", "y", ""],
        numbers=(1, 2, 3),
        scores={"a": 1.0, "b": -0.5},
        by_city={"Paris": Address(street="rue", city="Paris")},
        tiers=[Tier.FREE, Tier.PRO],
        maybe=5,
        maybe_address=Address(street="s", city="c"),
        maybe_tier=Tier.FREE,
        by_number={1: "one", -2: "minus two"},
        tree=Node(label="r", children=[Node(label="a", children=[Node(label="b")])]),
        small=7,
        single=0.5,
    )
    values.update(changes)
    return Everything.model_validate(values)


class Order(EventBase):
    """Also Avro-derivable, so the mixed-formats test sends it in every format."""

    __topic__ = "orders"
    __protobuf__ = shop_pb2.Order

    order_id: int
    customer: str
    total: Decimal = Field(max_digits=10, decimal_places=2)
    placed_at: dt.datetime
    items: list[str]
    note: str | None = None


class UserV1(EventBase):
    __topic__ = "users"
    __protobuf__ = evo_v1_pb2.User
    id: int
    name: str


class UserV2(EventBase):
    __topic__ = "users"
    __protobuf__ = evo_v2_pb2.User
    id: int
    name: str
    email: str = "unknown@example.com"


class UserV2Strict(EventBase):
    """Reads v2 messages and requires the field v1 writers never set."""

    __topic__ = "users"
    __protobuf__ = evo_v2_pb2.User
    id: int
    email: str
