"""The seed documents' examples, adapted only in the transport (the memory one).

Seed 000 (README): the handler example (``HandlerGroup``, ``handler(topic=, event=)``,
``Event[T]``, ``Dependency``) and the emitter example (``__topic__``/``__event_type__``).
Seed 001 (EventDispatcher docs): ``Router`` grouping handlers, ``AsyncLock`` middleware.
Seed 002 (EventEmitter docs): ``__route__`` events and ``on_timeout``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest
from dispytch import (
    AsyncLock,
    EmitTimeoutError,
    Event,
    EventBase,
    EventDispatcher,
    EventEmitter,
    OutgoingMessage,
    Router,
)
from dispytch.memory import MemoryEventRoute, MemoryProducer
from pydantic import BaseModel

from tests.seed_readme import SERVICE, example_emit, printed, user_events

if TYPE_CHECKING:
    from tests.core.conftest import Kit


# -- seed 000: the README's handler and emitter examples (tests/seed_readme.py) -------------


async def test_seed_readme_handler_and_emitter_examples(
    kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    SERVICE.done.clear()
    dispatcher = EventDispatcher(kit.consumer())
    kit.dispatchers.append(dispatcher)
    dispatcher.add_router(user_events)
    async with dispatcher:
        await example_emit(kit.emitter)
        await kit.until(lambda: SERVICE.done, "the seed handler")
    assert len(SERVICE.done) == 1
    assert str(uuid.UUID(SERVICE.done[0])) == SERVICE.done[0]
    assert printed(SERVICE.done[0]) in capsys.readouterr().out
    assert dispatcher.stats["handled"] == 1


# -- seed 001: Router and AsyncLock --------------------------------------------------------


class OrderPlaced(EventBase):
    __topic__ = "orders"
    __event_type__ = "order_placed"
    order_id: int
    user_id: str


router = Router(middlewares=[AsyncLock(key=lambda e: e.body.user_id)])
PLACED: list[int] = []


@router.handler(topic="orders", event="order_placed")
async def handle_order(event: Event[OrderPlaced]) -> None:
    PLACED.append(event.body.order_id)


async def test_seed_router_with_async_lock(kit: Kit) -> None:
    PLACED.clear()
    dispatcher = kit.dispatcher()
    dispatcher.add_router(router)
    async with dispatcher:
        for i in range(3):
            await kit.emitter.emit(OrderPlaced(order_id=i, user_id="u1"))
        await kit.until(lambda: len(PLACED) == 3, "three orders")
    assert sorted(PLACED) == [0, 1, 2]


# -- seed 002: __route__ events, the emitter, on_timeout -----------------------------------


class MyEvent(EventBase):
    __route__ = MemoryEventRoute(
        topic="my_topic",
    )

    user_id: str
    value: int


class SystemAlert(EventBase):
    __route__ = MemoryEventRoute(topic="system.alerts")  # seed: RedisEventRoute(channel=...)

    level: str
    message: str


async def test_seed_emitter_route_examples(kit: Kit) -> None:
    got: list[BaseModel] = []
    dispatcher = kit.dispatcher()

    @dispatcher.handler(topic="my_topic")
    async def on_my_event(event: Event[MyEvent]) -> None:
        got.append(event.body)

    @dispatcher.handler(topic="system.alerts")
    async def on_alert(event: Event[SystemAlert]) -> None:
        got.append(event.body)

    producer = MemoryProducer(kit.broker)
    await producer.start()  # the seed: "REMEMBER TO START THE PRODUCER!"
    event_emitter = EventEmitter(producer)
    async with dispatcher:
        await event_emitter.emit(MyEvent(user_id="abc123", value=1))
        await event_emitter.emit(SystemAlert(level="critical", message="CPU temperature high"))
        await kit.until(lambda: len(got) == 2, "both events")
    await producer.stop()
    assert MyEvent(user_id="abc123", value=1) in got
    assert SystemAlert(level="critical", message="CPU temperature high") in got


FAILED_EVENTS: list[EventBase] = []


def save_failed_event(event: EventBase) -> None:
    FAILED_EVENTS.append(event)


class NeverConfirms(MemoryProducer):
    async def send(self, message: OutgoingMessage) -> None:
        raise EmitTimeoutError("the broker did not confirm")

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        raise EmitTimeoutError("the broker did not confirm")


async def test_seed_on_timeout_example() -> None:
    FAILED_EVENTS.clear()
    emitter = EventEmitter(NeverConfirms())

    @emitter.on_timeout
    def handle_timeout(event: EventBase) -> None:
        save_failed_event(event)

    event = MyEvent(user_id="abc123", value=2)
    await emitter.emit(event)
    assert [event] == FAILED_EVENTS
