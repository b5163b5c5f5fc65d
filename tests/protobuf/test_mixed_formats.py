"""Content type negotiation: one topic carries JSON, msgpack, Avro (both framings) and
Protobuf events; one handler gets every one, each decoded by the serializer its
``dispytch-content-type`` header names. A content type nobody serves is logged and
rejected (an invalid payload) with that reason; the dispatcher goes on."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import pytest
from dispytch import Event

from .conftest import Kit
from .models import Order

pytest.importorskip("msgpack", reason="the mixed-formats test needs dispytch-core[msgpack]")
pytest.importorskip("dispytch.avro", reason="the mixed-formats test needs dispytch-avro")

FORMATS = {
    "json": "application/json",
    "msgpack": "application/msgpack",
    "avro": "application/avro",
    "avro-confluent": "application/vnd.confluent.avro",
    "protobuf": "application/x-protobuf",
}


def order(n: int) -> Order:
    return Order(
        order_id=n,
        customer=f"c{n}",
        total=Decimal("12.34"),
        placed_at=dt.datetime(2026, 12, 4, 12, n, tzinfo=dt.UTC),
        items=["x"] * n,
        note=None if n % 2 else "even",
    )


async def test_each_format_on_one_topic_is_decoded_by_its_serializer(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dispytch")
    d = kit.dispatcher()
    got: list[tuple[str, Order]] = []

    @d.handler(topic="orders")
    async def on(event: Event[Order]) -> None:
        got.append((event.message.headers["dispytch-content-type"], event.body))

    await d.start()
    sent = []
    for n, name in enumerate(FORMATS, start=1):
        emitter = await kit.emitter(name)
        await emitter.emit(order(n))
        sent.append((FORMATS[name], order(n)))
    # Twice round, interleaved: decoders are cached per content type, not per topic.
    for n, name in enumerate(FORMATS, start=10):
        await kit.emitters[n - 10].emit(order(n))
        sent.append((FORMATS[name], order(n)))
    # A content type no installed plugin serves.
    kit.broker.publish("orders", b"\xa1", {"dispytch-content-type": "application/cbor"}, None)
    await kit.until(lambda: len(got) == len(sent) and kit.broker.rejected, "all settled")
    assert sorted(got, key=lambda g: g[1].order_id) == sent
    (rejected,) = kit.broker.rejected
    assert rejected.headers["dispytch-content-type"] == "application/cbor"
    assert d.running
    # The reason is in the log: the content type, and the ones that are served.
    assert "content type 'application/cbor'" in caplog.text
    assert "application/x-protobuf" in caplog.text
    assert d.stats["invalid_payload"] == 1
