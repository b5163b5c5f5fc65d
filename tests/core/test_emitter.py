"""The emitter: never a silent loss, timeouts, dynamic routes, keys, headers, batches,
serializers; and what a handler's Event carries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from dispytch import (
    EmitTimeoutError,
    Event,
    EventBase,
    EventEmitter,
    NotStartedError,
    OutgoingMessage,
    TopicRoute,
)
from dispytch.memory import MemoryEventRoute, MemoryProducer
from dispytch.transport import (
    HEADER_CONTENT_TYPE,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_TIMESTAMP,
)
from pydantic import BaseModel

if TYPE_CHECKING:
    from tests.core.conftest import Kit


class Note(EventBase):
    __topic__ = "notes"
    text: str


class UserEvent(EventBase):
    __route__ = MemoryEventRoute(topic="user.{user_id}.events", key="user_id")
    __event_type__ = "user_event"
    user_id: int
    region: str


class Regional(EventBase):
    __route__ = MemoryEventRoute(
        topic="regions", key=lambda e: e.region.upper(), headers={"x-source": "test"}
    )
    region: str


class BadRoute(EventBase):
    __topic__ = "user.{uid}.events"
    user_id: int


class Routeless(EventBase):
    text: str


class Address(BaseModel):
    city: str


class Rich(EventBase):
    __topic__ = "rich"
    n: int
    price: float
    address: Address
    tags: list[str]
    at: datetime


class TimingOutProducer:
    """A producer whose broker never confirms in time."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, message: OutgoingMessage) -> None:
        self.sent.append(message)
        raise EmitTimeoutError("no confirm within 0.1s")

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        self.sent.extend(messages)
        raise EmitTimeoutError("no confirm within 0.1s")


# -- never a silent loss -----------------------------------------------------------------


async def test_emit_on_an_unstarted_producer_raises(kit: Kit) -> None:
    emitter = EventEmitter(MemoryProducer(kit.broker))
    with pytest.raises(NotStartedError, match=r"not started\. Call `await emitter\.start\(\)`"):
        await emitter.emit(Note(text="lost?"))
    assert kit.broker.published == 0


async def test_emit_on_a_stopped_producer_raises(kit: Kit) -> None:
    emitter = EventEmitter(MemoryProducer(kit.broker))
    async with emitter:
        await emitter.emit(Note(text="one"))
    with pytest.raises(NotStartedError, match="not started"):
        await emitter.emit(Note(text="two"))
    with pytest.raises(NotStartedError, match="not started"):
        await emitter.emit_batch([Note(text="three")])
    assert kit.broker.published == 1


def test_event_without_a_route_says_what_to_set() -> None:
    with pytest.raises(TypeError, match=r"Routeless has no route\. Set __route__ ="):
        Routeless.event_route()


# -- timeouts ----------------------------------------------------------------------------


async def test_timeout_without_callback_raises(caplog: pytest.LogCaptureFixture) -> None:
    emitter = EventEmitter(TimingOutProducer())
    with (
        caplog.at_level(logging.WARNING, logger="dispytch.emitter"),
        pytest.raises(EmitTimeoutError, match="no confirm within"),
    ):
        await emitter.emit(Note(text="x"))
    assert "timed out" in caplog.text


async def test_sync_and_async_on_timeout_callbacks_receive_the_event() -> None:
    producer = TimingOutProducer()
    emitter = EventEmitter(producer)
    sync_got: list[EventBase] = []
    async_got: list[EventBase] = []

    @emitter.on_timeout
    def save_failed_event(event: EventBase) -> None:
        sync_got.append(event)

    @emitter.on_timeout
    async def alert(event: EventBase) -> None:
        await asyncio.sleep(0)
        async_got.append(event)

    note = Note(text="late")
    await emitter.emit(note)  # no exception: the callbacks took it
    assert sync_got == [note] and async_got == [note]
    assert sync_got[0] is note

    batch = [Note(text="a"), Note(text="b")]
    await emitter.emit_batch(batch)
    assert sync_got[1:] == batch and async_got[1:] == batch
    assert len(producer.sent) == 3


async def test_asyncio_timeout_from_a_producer_is_an_emit_timeout() -> None:
    class Slow(TimingOutProducer):
        async def send(self, message: OutgoingMessage) -> None:
            raise TimeoutError

    with pytest.raises(EmitTimeoutError, match="did not confirm in time"):
        await EventEmitter(Slow()).emit(Note(text="x"))


# -- routes, keys, headers ---------------------------------------------------------------


async def test_dynamic_route_and_key_from_a_field(kit: Kit) -> None:
    msg = kit.emitter.build(UserEvent(user_id=42, region="eu"))
    assert isinstance(msg.route, MemoryEventRoute)
    assert msg.route.topic == "user.42.events"
    assert msg.key == b"42"
    assert msg.headers[HEADER_EVENT_TYPE] == "user_event"
    # The class's route itself is untouched.
    assert UserEvent.__route__ is not None and UserEvent.__route__.topic == "user.{user_id}.events"


async def test_dynamic_route_missing_field_is_a_clear_error(kit: Kit) -> None:
    with pytest.raises(ValueError, match=r"needs the field 'uid', which BadRoute does not have"):
        await kit.emitter.emit(BadRoute(user_id=1))
    assert kit.broker.published == 0


async def test_key_from_a_callable_and_static_route_headers(kit: Kit) -> None:
    msg = kit.emitter.build(Regional(region="eu"))
    assert msg.key == b"EU"
    assert msg.headers["x-source"] == "test"
    assert msg.headers[HEADER_EVENT_TYPE] == "Regional"  # defaults to the class name


async def test_key_and_headers_given_to_emit_win(kit: Kit) -> None:
    msg = kit.emitter.build(
        Regional(region="eu"), key=7, headers={"x-source": "override", "x-trace": "t1"}
    )
    assert msg.key == b"7"
    assert msg.headers["x-source"] == "override" and msg.headers["x-trace"] == "t1"
    assert kit.emitter.build(Regional(region="eu"), key=b"raw").key == b"raw"


async def test_route_override_for_an_event_without_a_route(kit: Kit) -> None:
    d = kit.dispatcher()
    got: list[str] = []

    @d.handler(topic="elsewhere.{part}")
    async def h(event: Event[Routeless], part: str) -> None:
        got.append(f"{part}:{event.body.text}")

    async with d:
        await kit.emitter.emit(Routeless(text="hi"), route=TopicRoute(topic="elsewhere.a"))
        await kit.until(lambda: got, "the handler")
    assert got == ["a:hi"]


async def test_headers_and_key_travel_to_the_handler(kit: Kit) -> None:
    d = kit.dispatcher()
    got: list[Event[UserEvent]] = []

    @d.handler(topic="user.{user_id}.events")
    async def h(event: Event[UserEvent]) -> None:
        got.append(event)

    async with d:
        await kit.emitter.emit(UserEvent(user_id=5, region="us"), headers={"x-trace": "abc"})
        await kit.until(lambda: got, "the handler")
    event = got[0]
    assert event.body == UserEvent(user_id=5, region="us")
    assert event.type == "user_event"
    assert event.route == "user.5.events"
    assert event.headers["x-trace"] == "abc"
    assert event.headers[HEADER_CONTENT_TYPE] == "application/json"
    assert event.message.key == b"5"
    assert len(event.id) >= 16 and event.id == event.headers[HEADER_EVENT_ID]
    assert event.attempt == 1
    assert event.metadata == {"group": "g"}
    stamp = float(event.headers[HEADER_TIMESTAMP])
    assert event.timestamp == datetime.fromtimestamp(stamp, tz=UTC)
    assert "user.5.events" in repr(event)


async def test_event_ids_are_unique(kit: Kit) -> None:
    ids = {kit.emitter.build(Note(text=str(i))).headers[HEADER_EVENT_ID] for i in range(100)}
    other = EventEmitter(MemoryProducer(kit.broker)).build(Note(text="0"))
    assert len(ids) == 100 and other.headers[HEADER_EVENT_ID] not in ids


async def test_emit_batch_publishes_all_in_order(kit: Kit) -> None:
    d = kit.dispatcher(ordered=True)
    got: list[str] = []

    @d.handler(topic="notes")
    async def h(event: Event[Note]) -> None:
        got.append(event.body.text)

    async with d:
        await kit.emitter.emit_batch([Note(text=str(i)) for i in range(5)], headers={"b": "1"})
        await kit.until(lambda: len(got) == 5, "the batch")
    assert got == ["0", "1", "2", "3", "4"]


# -- serializers -------------------------------------------------------------------------


def rich(n: int) -> Rich:
    return Rich(
        n=n,
        price=9.5,
        address=Address(city="Lviv"),
        tags=["a", "b"],
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


async def test_msgpack_round_trip_beside_json(kit: Kit) -> None:
    packer = EventEmitter(MemoryProducer(kit.broker), serializer="msgpack")
    d = kit.dispatcher()
    got: list[tuple[str, Rich]] = []

    @d.handler(topic="rich")
    async def h(event: Event[Rich]) -> None:
        got.append((event.headers[HEADER_CONTENT_TYPE], event.body))

    async with d, packer:
        await packer.emit(rich(1))
        await kit.emitter.emit(rich(2))
        await kit.until(lambda: len(got) == 2, "both events")
    by_n = {body.n: (ctype, body) for ctype, body in got}
    assert by_n[1] == ("application/msgpack", rich(1))
    assert by_n[2] == ("application/json", rich(2))
    raw = packer.build(rich(1)).payload
    assert raw[:1] != b"{"  # really msgpack, not JSON


async def test_unknown_serializer_name_is_a_clear_error() -> None:
    from dispytch.errors import PluginError

    with pytest.raises(PluginError, match="xml"):
        EventEmitter(MemoryProducer(), serializer="xml")


class Owner(BaseModel):
    id: int


class Nested(EventBase):
    __topic__ = "user.{owner.id}.{tags[0]}.{n:03d}"
    owner: Owner
    tags: list[str]
    n: int


class NestedBad(EventBase):
    __topic__ = "user.{owner.name}.events"
    owner: Owner


async def test_dynamic_route_from_nested_fields_and_format_specs(kit: Kit) -> None:
    msg = kit.emitter.build(Nested(owner=Owner(id=7), tags=["vip", "x"], n=5))
    assert msg.route.topic == "user.7.vip.005"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"cannot fill .* from NestedBad: AttributeError"):
        kit.emitter.build(NestedBad(owner=Owner(id=1)))


# -- batch timeouts: callbacks only for what was not confirmed ----------------------------


class PartlyConfirmingProducer(TimingOutProducer):
    """Confirms the first ``confirmed`` messages of a batch and says which were not."""

    def __init__(self, confirmed: int, *, tells: bool) -> None:
        super().__init__()
        self.confirmed = confirmed
        self.tells = tells

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        self.sent.extend(messages)
        late = list(messages[self.confirmed :])
        if late:
            raise EmitTimeoutError(
                f"{len(late)} not confirmed", undelivered=late if self.tells else None
            )


async def test_batch_timeout_calls_back_only_for_unconfirmed_events() -> None:
    producer = PartlyConfirmingProducer(confirmed=2, tells=True)
    emitter = EventEmitter(producer)
    got: list[EventBase] = []
    emitter.on_timeout(got.append)
    batch = [Note(text=str(i)) for i in range(5)]
    await emitter.emit_batch(batch)
    assert got == batch[2:]  # the delivered two are not reported as timed out
    await emitter.emit_batch(batch[:2])  # all confirmed: nothing to report
    assert got == batch[2:]


async def test_batch_timeout_without_knowing_which_calls_back_each_event_once() -> None:
    producer = PartlyConfirmingProducer(confirmed=2, tells=False)
    emitter = EventEmitter(producer)
    got: list[EventBase] = []
    emitter.on_timeout(got.append)
    batch = [Note(text=str(i)) for i in range(5)]
    await emitter.emit_batch(batch)
    # The producer cannot say which were confirmed: none is known delivered, so every
    # event is passed on, each once.
    assert got == batch


async def test_batch_timeout_without_callbacks_raises_with_what_was_late() -> None:
    producer = PartlyConfirmingProducer(confirmed=1, tells=True)
    emitter = EventEmitter(producer)
    with pytest.raises(EmitTimeoutError, match="2 not confirmed") as info:
        await emitter.emit_batch([Note(text="a"), Note(text="b"), Note(text="c")])
    assert info.value.undelivered is not None
    assert [m.payload for m in info.value.undelivered] == [m.payload for m in producer.sent[1:]]
