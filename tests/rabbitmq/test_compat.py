"""Every private access of dispytch.rabbitmq._compat, checked against the installed
aio-pika, aiormq and pamqp: an upgrade that removes or changes one fails here, loudly.
The poison-input cases publish properties that are not valid UTF-8 over a raw socket."""

from __future__ import annotations

import asyncio
import struct

import aio_pika
import pamqp.decode
import pamqp.frame
import pytest
from dispytch import Event, EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.rabbitmq import (
    RabbitMQConsumer,
    RabbitMQEventRoute,
    RabbitMQEventSubscription,
    RabbitMQProducer,
    _compat,
)
from dispytch.transport import Message
from pamqp import commands, header

from .conftest import AMQP_URL, Names, ready_count, wait_until
from .rawamqp import RawPublisher

BAD = b"bad-\xff\xfe-value"  # not UTF-8


# --------------------------------------------------------------- the pamqp decode hook
def test_the_decode_hook_is_installed_in_pamqps_tables() -> None:
    """pamqp still looks decoders up in METHODS/TABLE_MAPPING, and ours are there."""
    assert pamqp.decode.METHODS["shortstr"] is _compat.tolerant_short_str
    assert pamqp.decode.METHODS["table"] is _compat.tolerant_field_table
    assert pamqp.decode.TABLE_MAPPING[b"F"] is _compat.tolerant_field_table
    _compat.install_tolerant_decoding()  # idempotent


def _header_frame(bad_property: bytes | None, bad_key: bytes | None) -> bytes:
    props = {"message_id": "m" * len(bad_property)} if bad_property else {}
    headers = {"k" * len(bad_key): "v", "nested": {"k" * len(bad_key): 1}} if bad_key else None
    wire = pamqp.frame.marshal(
        header.ContentHeader(0, 3, commands.Basic.Properties(headers=headers, **props)), 1
    )
    if bad_property:
        wire = wire.replace(b"m" * len(bad_property), bad_property)
    if bad_key:
        wire = wire.replace(b"k" * len(bad_key), bad_key)
    return wire


def test_pamqp_unmarshals_invalid_utf8_properties_and_keys_with_replacement() -> None:
    """Through pamqp's public unmarshal: what aiormq's frame reader calls."""
    _, _, value = pamqp.frame.unmarshal(_header_frame(BAD, None))
    assert isinstance(value, header.ContentHeader)
    assert value.properties.message_id == BAD.decode("utf-8", "replace")
    _, _, value = pamqp.frame.unmarshal(_header_frame(None, BAD))
    assert isinstance(value, header.ContentHeader)
    replaced = BAD.decode("utf-8", "replace")
    assert value.properties.headers == {replaced: "v", "nested": {replaced: 1}}


def test_the_strict_decoders_still_reject_invalid_utf8() -> None:
    """The hook wraps pamqp's own decoders: if pamqp starts replacing by itself, this
    fails and the hook can go."""
    raw = bytes([len(BAD)]) + BAD
    with pytest.raises(UnicodeDecodeError):
        _compat._strict_short_str(raw)
    table = bytes([len(BAD)]) + BAD + b"t\x01"
    with pytest.raises(UnicodeDecodeError):
        _compat._strict_field_table(struct.pack(">I", len(table)) + table)
    assert _compat.tolerant_short_str(b"\x02ok") == (3, "ok")


# --------------------------------------------------------------- aio-pika accesses
pytestmark_broker = pytest.mark.broker


@pytest.mark.broker
async def test_channel_accesses() -> None:
    robust = await aio_pika.connect_robust(AMQP_URL)
    plain = await aio_pika.connect(AMQP_URL)
    try:
        rch = await robust.channel()
        pch = await plain.channel()
        assert _compat.is_robust(rch) and not _compat.is_robust(pch)
        assert _compat.prefetch_of(rch) == 0
        await rch.set_qos(prefetch_count=7)
        assert _compat.prefetch_of(rch) == 7
        assert _compat.prefetch_of(pch) is None
        assert _compat.connection_of(rch) is robust
        assert _compat.connection_of(pch) is plain
        assert _compat.connection_is_up(robust) and _compat.connection_is_up(plain)
        raw = await _compat.underlay(rch)
        assert hasattr(raw, "on_consumer_cancel_callbacks")
        assert not _compat.closed_for_good(rch)
        throwaway = await _compat.raw_channel(robust)
        await throwaway.close()
        await rch.close()
        assert _compat.closed_for_good(rch)  # closed by its user: nothing reopens it
        await pch.close()
        assert _compat.closed_for_good(pch)
        other = await robust.channel()
    finally:
        await plain.close()
        await robust.close()
    assert _compat.closed_for_good(other)  # its robust connection was closed by its user
    assert not _compat.connection_is_up(robust) and not _compat.connection_is_up(plain)


async def test_publish_nowait_queues_without_draining_and_returns_the_confirm(
    names: Names,
) -> None:
    """aiormq's concrete ``Channel.basic_publish`` takes ``wait`` (not in its ABC): with
    ``wait=False`` no drain future is made, and the confirm still comes back."""
    import inspect

    import aiormq

    assert "wait" in inspect.signature(aiormq.Channel.basic_publish).parameters
    conn = await aio_pika.connect(AMQP_URL)
    try:
        q = names.queue("nowait")
        ch = await conn.channel()
        await ch.declare_queue(q, durable=True)
        raw = await _compat.raw_channel(conn, publisher_confirms=True)
        results = await asyncio.gather(
            *(
                _compat.publish_nowait(
                    raw, b"x", exchange="", routing_key=q, properties=None, mandatory=True
                )
                for _ in range(50)
            )
        )
        assert all(isinstance(r, commands.Basic.Ack) for r in results)
        assert await ready_count(conn, q) == 50  # type: ignore[arg-type]
        await raw.close()
    finally:
        await conn.close()


# --------------------------------------------------------------- poison input, for real
class Item(EventBase):
    __event_type__ = "item"
    i: int


@pytest.mark.broker
@pytest.mark.parametrize(
    "bad",
    [
        {"properties": {"content_type": BAD}},
        {"properties": {"message_id": BAD}},
        {"properties": {"message_type": BAD}},
        {"properties": {"app_id": BAD}},
        {"properties": {"correlation_id": BAD}},
        {"properties": {"reply_to": BAD}},
        {"headers": {BAD: b"value"}},
        {"headers": {"dispytch-key": BAD, "x-delivery-count": b"not a number"}},
    ],
    ids=lambda b: next(iter(next(iter(b.values())))) if isinstance(b, dict) else str(b),
)
async def test_non_utf8_properties_do_not_stop_the_consumer(
    names: Names, bad: dict[str, dict[object, object]], caplog: pytest.LogCaptureFixture
) -> None:
    """One hostile message, then 19 valid ones: every valid one is handled, the hostile
    one is logged and ends where the policy says (handled or rejected), the consumer
    never reconnects, and nothing stays in the queue."""
    q_name = names.queue("poison")
    conn = await aio_pika.connect_robust(AMQP_URL)
    try:
        ch = await conn.channel()
        queue = await ch.declare_queue(q_name, durable=True)
        async with RawPublisher(AMQP_URL) as raw:
            await raw.publish(q_name, b'{"i": -1}', **bad)  # type: ignore[arg-type]
        route = RabbitMQEventRoute(routing_key=q_name)
        async with EventEmitter(RabbitMQProducer([ch.default_exchange])) as emitter:
            for i in range(19):
                await emitter.emit(Item(i=i), route=route)
        seen: list[int] = []
        others: list[Message] = []
        dispatcher = EventDispatcher(RabbitMQConsumer(queue), max_in_flight=4)

        @dispatcher.handler(RabbitMQEventSubscription(queue=q_name))
        async def on_item(event: Event[Item]) -> None:
            seen.append(event.body.i)

        async with dispatcher:
            await wait_until(lambda: set(range(19)) <= set(seen), timeout=20)
            assert dispatcher.running
            await wait_until(
                lambda: dispatcher.stats["handled"] + dispatcher.stats["rejected"] >= 20,
                timeout=20,
            )
        assert not others
        assert await ready_count(conn, q_name) == 0
        assert "Cancelling cause reader exited abnormally" not in caplog.text
        assert "not valid UTF-8" in caplog.text or "dispytch-key" in str(bad)
    finally:
        await conn.close()


@pytest.mark.broker
async def test_raw_publisher_reaches_the_queue(names: Names) -> None:
    """The helper itself: what it publishes arrives byte for byte."""
    q_name = names.queue("raw")
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(q_name, durable=True)
        async with RawPublisher(AMQP_URL) as raw:
            await raw.publish(q_name, b"hello", properties={"message_id": "m-1"})
        msg = await asyncio.wait_for(q.get(), 10)
        assert msg is not None and msg.body == b"hello" and msg.message_id == "m-1"
        await msg.ack()
    finally:
        await conn.close()
