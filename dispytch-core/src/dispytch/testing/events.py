"""The event types the conformance cases publish and handle."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from dispytch.event import EventBase


class Address(BaseModel):
    """A nested model, so that payloads are not flat."""

    street: str
    city: str


class Placed(EventBase):
    """An event type used by the cases."""

    __event_type__ = "order_placed"
    order_id: int
    user: str
    amount: float
    address: Address
    tags: list[str]
    at: datetime


class Cancelled(EventBase):
    """A second event type sharing a route with :class:`Placed`."""

    __event_type__ = "order_cancelled"
    order_id: int
    reason: str


def placed(i: int, user: str = "ann") -> Placed:
    """A valid :class:`Placed` event."""
    return Placed(
        order_id=i,
        user=user,
        amount=12.5 + i,
        address=Address(street=f"{i} Main St", city="Springfield"),
        tags=["web", f"t{i % 3}"],
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )
