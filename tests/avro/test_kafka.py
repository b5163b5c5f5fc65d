"""A representative event through Kafka (Tansu) in both Avro framings, and an old
consumer reading a newer producer's events: the schema reference travels in the payload,
the content type in a Kafka header."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal

import pytest
from dispytch import Event, EventBase, EventDispatcher, EventEmitter
from pydantic import Field

from ..format_kit import until
from .models import Everything, everything

pytestmark = pytest.mark.broker

FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


class Shipped(EventBase):
    __avro_name__ = "Shipped"
    __event_type__ = "shipped"
    order_id: int
    weight: Decimal = Field(Decimal("0.00"), max_digits=8, decimal_places=2)


class ShippedV2(EventBase):
    __avro_name__ = "Shipped"
    __event_type__ = "shipped"
    order_id: int
    carrier: str = "post"
    at: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def create_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await asyncio.wait_for(admin.create_topics([NewTopic(topic, 1, 1)]), 20)
    finally:
        await admin.close()


@pytest.mark.parametrize("framing", ["avro", "avro-confluent"])
async def test_every_field_kind_through_kafka(kafka_bootstrap: str, framing: str) -> None:
    from dispytch.kafka import KafkaEventRoute, KafkaEventSubscription

    topic = f"avro-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_bootstrap, topic)
    url = f"kafka://{kafka_bootstrap}"
    d = EventDispatcher.from_url(url, group_id=f"g-{topic}", stop_timeout=5.0, **FAST_GROUP)
    got: list[object] = []
    received_headers: list[dict[str, str]] = []

    @d.handler(KafkaEventSubscription(topic=topic))
    async def on(event: Event[Everything]) -> None:
        got.append(event.body)
        received_headers.append(dict(event.message.headers))

    sent = [everything(), everything(maybe=None, either=-1, tags=[])]
    await d.start()
    try:
        async with EventEmitter.from_url(url, serializer=framing) as emitter:
            for e in sent:
                await emitter.emit(e, route=KafkaEventRoute(topic=topic))
        await until(lambda: len(got) == 2, "both events through Kafka", timeout=60)
    finally:
        await asyncio.wait_for(d.stop(), 30)
    assert got == sent
    expected = {"avro": "application/avro", "avro-confluent": "application/vnd.confluent.avro"}
    assert received_headers[0]["dispytch-content-type"] == expected[framing]


async def test_an_old_consumer_reads_a_new_producers_events_through_kafka(
    kafka_bootstrap: str,
) -> None:
    from dispytch.kafka import KafkaEventRoute, KafkaEventSubscription

    topic = f"avro-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_bootstrap, topic)
    url = f"kafka://{kafka_bootstrap}"
    d = EventDispatcher.from_url(url, group_id=f"g-{topic}", stop_timeout=5.0, **FAST_GROUP)
    got: list[Shipped] = []

    @d.handler(KafkaEventSubscription(topic=topic))
    async def on(event: Event[Shipped]) -> None:
        got.append(event.body)

    await d.start()
    try:
        async with EventEmitter.from_url(url, serializer="avro") as emitter:
            await emitter.emit(
                ShippedV2(order_id=1, carrier="dhl"), route=KafkaEventRoute(topic=topic)
            )
            await emitter.emit(Shipped(order_id=2), route=KafkaEventRoute(topic=topic))
        await until(lambda: len(got) == 2, "both events through Kafka", timeout=60)
    finally:
        await asyncio.wait_for(d.stop(), 30)
    assert got == [Shipped(order_id=1), Shipped(order_id=2)]
