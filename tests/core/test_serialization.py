"""Serializers and the Event wrapper."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from dispytch import Event, EventBase, Message
from dispytch.serialization import JsonSerializer, MsgpackSerializer

if TYPE_CHECKING:
    from tests.core.conftest import Kit


class Point(EventBase):
    __topic__ = "points"
    x: int
    y: int


@pytest.mark.parametrize("serializer", [JsonSerializer(), MsgpackSerializer()])
def test_round_trip_into_models_and_plain_types(serializer: Any) -> None:
    raw = serializer.encode(Point(x=1, y=2))
    assert serializer.decoder(Point)(raw) == Point(x=1, y=2)
    assert serializer.decoder(dict[str, int])(raw) == {"x": 1, "y": 2}


def test_missing_msgpack_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ImportError, match=r"pip install 'dispytch-core\[msgpack\]'"):
        MsgpackSerializer()


async def test_handlers_may_take_plain_types(kit: Kit) -> None:
    d = kit.dispatcher()
    got: list[dict[str, int]] = []

    @d.handler(topic="points")
    async def h(event: Event[dict[str, int]]) -> None:
        got.append(event.body)

    async with d:
        await kit.emitter.emit(Point(x=3, y=4))
        await kit.until(lambda: got, "the handler")
    assert got == [{"x": 3, "y": 4}]


def test_event_wrapper_without_dispytch_headers() -> None:
    msg = Message(b"{}", route="r", metadata={"offset": 7}, attempt=3)
    before = datetime.now(tz=UTC)
    ev = Event({"a": 1}, msg, {"p": "v"})
    assert ev.id == "" and ev.type is None
    assert ev.attempt == 3 and ev.metadata == {"offset": 7} and ev.params == {"p": "v"}
    assert ev.timestamp >= before  # not emitted by Dispytch: when it was received
    bad: Event[dict[str, int]] = Event(
        {}, Message(b"{}", route="r", headers={"dispytch-timestamp": "soon"})
    )
    assert bad.timestamp.tzinfo is UTC
    assert ev.message is msg
