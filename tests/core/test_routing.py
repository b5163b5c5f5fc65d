"""Event-type dispatch, several handlers per route, the older registration form, routers
(nesting, middleware order across levels) and dotted names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from dispytch import (
    Event,
    EventBase,
    HandlerContext,
    HandlerGroup,
    Message,
    Router,
    TopicSubscription,
)
from dispytch.middleware import CallNext
from pydantic import BaseModel

from tests.seed_readme import User, UserCreatedEvent, UserEvent, UserRegistered

if TYPE_CHECKING:
    from tests.core.conftest import Kit


class OrderEvent(EventBase):
    __topic__ = "orders"


class Placed(OrderEvent):
    __event_type__ = "order_placed"
    order_id: int


class Cancelled(OrderEvent):
    __event_type__ = "order_cancelled"
    order_id: int
    reason: str


class AnyOrder(BaseModel):
    order_id: int


async def test_event_type_dispatch_and_several_handlers_per_route(kit: Kit) -> None:
    d = kit.dispatcher()
    placed: list[int] = []
    cancelled: list[tuple[int, str]] = []
    everything: list[tuple[str | None, int]] = []

    @d.handler(topic="orders")
    async def on_placed(event: Event[Placed]) -> None:
        placed.append(event.body.order_id)

    @d.handler(topic="orders")
    async def on_cancelled(event: Event[Cancelled]) -> None:
        cancelled.append((event.body.order_id, event.body.reason))

    @d.handler(topic="orders")
    async def audit(event: Event[AnyOrder]) -> None:  # a plain model: every type
        everything.append((event.type, event.body.order_id))

    async with d:
        await kit.emitter.emit(Placed(order_id=1))
        await kit.emitter.emit(Cancelled(order_id=2, reason="changed mind"))
        await kit.emitter.emit(Placed(order_id=3))
        await kit.until(lambda: d.stats["handled"] == 3, "three messages")
    assert placed == [1, 3]
    assert cancelled == [(2, "changed mind")]
    assert sorted(everything, key=lambda x: x[1]) == [
        ("order_placed", 1),
        ("order_cancelled", 2),
        ("order_placed", 3),
    ]
    assert kit.broker.rejected == []


async def test_explicit_event_filter_overrides_the_model(kit: Kit) -> None:
    d = kit.dispatcher()
    got: list[int] = []

    @d.handler(topic="orders", event="order_cancelled")
    async def only_cancelled(event: Event[AnyOrder]) -> None:
        got.append(event.body.order_id)

    async with d:
        await kit.emitter.emit(Placed(order_id=1))
        await kit.emitter.emit(Cancelled(order_id=2, reason="x"))
        await kit.until(lambda: d.stats["handled"] + d.stats["skipped"] == 2, "both")
    assert got == [2]
    # A message no handler's event type wants is settled, not left hanging.
    assert d.stats["skipped"] == 1
    assert kit.unacked() == 0 and kit.queued() == 0


@dataclass(frozen=True, kw_only=True)
class TenantSubscription(TopicSubscription):
    """A subscription that narrows by a header, as a transport's own subscription may."""

    tenant: str
    filters_messages: ClassVar[bool] = True

    def accepts(self, message: Message) -> bool:
        return message.headers.get("tenant") == self.tenant


async def test_a_lone_handler_still_goes_through_its_subscriptions_filter(kit: Kit) -> None:
    d = kit.dispatcher()
    got: list[int] = []

    @d.handler(TenantSubscription(topic="orders", tenant="acme"))
    async def acme_only(event: Event[AnyOrder]) -> None:
        got.append(event.body.order_id)

    async with d:
        await kit.emitter.emit(Placed(order_id=1), headers={"tenant": "other"})
        await kit.emitter.emit(Placed(order_id=2), headers={"tenant": "acme"})
        await kit.until(lambda: d.stats["handled"] + d.stats["skipped"] == 2, "both")
    assert got == [2]
    assert d.stats["skipped"] == 1
    assert kit.unacked() == 0 and kit.queued() == 0


# -- the older form of the seed README -----------------------------------------------------


# Its models are the seed's (tests/seed_readme.py); one more event type on its topic.


class UserDeleted(UserEvent):
    __event_type__ = "user_deleted"
    user: User
    timestamp: int


async def test_handler_group_topic_and_event_form(kit: Kit) -> None:
    user_events = HandlerGroup()
    got: list[str] = []

    @user_events.handler(topic="user_events", event="user_registered")
    async def handle_user_registered(event: Event[UserCreatedEvent]) -> None:
        got.append(event.body.user.email)

    assert isinstance(user_events, Router)
    d = kit.dispatcher()
    d.add_router(user_events)
    u = User(id="1", email="a@example.com", name="A")
    async with d:
        await kit.emitter.emit(UserDeleted(user=u, timestamp=1))
        await kit.emitter.emit(UserRegistered(user=u, timestamp=2))
        await kit.until(lambda: d.stats["handled"] + d.stats["skipped"] == 2, "both")
    assert got == ["a@example.com"]


# -- routers and middleware levels -------------------------------------------------------


def recorder(journal: list[str], name: str) -> Any:
    async def mw(ctx: HandlerContext, call_next: CallNext) -> Any:
        journal.append(f"{name}>")
        try:
            return await call_next(ctx)
        finally:
            journal.append(f"<{name}")

    return mw


async def test_middleware_order_across_levels(kit: Kit) -> None:
    journal: list[str] = []
    d = kit.dispatcher(middlewares=[recorder(journal, "d1"), recorder(journal, "d2")])
    outer = Router(middlewares=[recorder(journal, "r1"), recorder(journal, "r2")])
    inner = Router(middlewares=[recorder(journal, "n")])

    @inner.handler(topic="orders", middlewares=[recorder(journal, "h1"), recorder(journal, "h2")])
    async def handle(event: Event[Placed]) -> None:
        journal.append("handler")

    outer.include_router(inner)
    d.add_router(outer)
    async with d:
        await kit.emitter.emit(Placed(order_id=1))
        await kit.until(lambda: d.stats["handled"] == 1, "the handler")
    assert journal == [
        "d1>", "d2>", "r1>", "r2>", "n>", "h1>", "h2>",
        "handler",
        "<h2", "<h1", "<n", "<r2", "<r1", "<d2", "<d1",
    ]  # fmt: skip


async def test_router_middlewares_only_wrap_their_own_handlers(kit: Kit) -> None:
    journal: list[str] = []
    d = kit.dispatcher()
    r = Router(middlewares=[recorder(journal, "r")])

    @r.handler(topic="a")
    async def in_router() -> None:
        journal.append("in_router")

    @d.handler(topic="b")
    async def outside() -> None:
        journal.append("outside")

    d.add_router(r)
    assert {s.route_pattern for s in d.subscriptions} == {"a", "b"}

    class A(EventBase):
        __topic__ = "a"

    class B(EventBase):
        __topic__ = "b"

    async with d:
        await kit.emitter.emit(B())
        await kit.until(lambda: d.stats["handled"] == 1, "b")
        await kit.emitter.emit(A())
        await kit.until(lambda: d.stats["handled"] == 2, "a")
    assert journal == ["outside", "r>", "in_router", "<r"]


def test_router_cannot_include_itself_or_form_a_cycle() -> None:
    a, b, c = Router(), Router(), Router()
    with pytest.raises(ValueError, match="cannot include itself"):
        a.include_router(a)
    a.include_router(b)
    b.include_router(c)
    with pytest.raises(ValueError, match="cycle"):
        c.include_router(a)
    # The tree is still walkable.
    assert a.walk() == []


async def test_registration_after_start_is_refused(kit: Kit) -> None:
    d = kit.dispatcher()

    @d.handler(topic="orders")
    async def h() -> None: ...

    async with d:
        with pytest.raises(RuntimeError, match="before the dispatcher starts"):
            d.handler(topic="x")
        with pytest.raises(RuntimeError, match="before the dispatcher starts"):
            d.add_router(Router())


# -- dotted names --------------------------------------------------------------------------


class DottedEvent(EventBase):
    __topic__ = "user.events"
    n: int


class Almost(EventBase):
    __topic__ = "userXevents"
    n: int


async def test_dotted_topic_names_route_exactly(kit: Kit) -> None:
    d = kit.dispatcher()
    got: list[tuple[str, int]] = []

    @d.handler(TopicSubscription(topic="user.events"))
    async def handle(event: Event[DottedEvent]) -> None:
        got.append((event.route, event.body.n))

    async with d:
        await kit.emitter.emit(Almost(n=0))  # a "." is not a regex wildcard
        await kit.emitter.emit(DottedEvent(n=1))
        await kit.until(lambda: got, "the dotted topic")
    assert got == [("user.events", 1)]
    # The near miss was never delivered to this group at all.
    assert kit.queued() == 0 and d.stats["unknown_route"] == 0
