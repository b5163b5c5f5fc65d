"""Every mapped field kind through Kafka (Tansu) as Protobuf: the content type travels in
a Kafka header, the payload is the message's binary form."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from dispytch import Event, EventDispatcher, EventEmitter

from ..format_kit import until
from .models import Everything, everything

pytestmark = pytest.mark.broker

FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


async def test_every_field_kind_through_kafka(kafka_bootstrap: str) -> None:
    pytest.importorskip("dispytch.kafka", reason="the Kafka round trip needs dispytch-kafka")
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from dispytch.kafka import KafkaEventRoute, KafkaEventSubscription

    topic = f"pb-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await asyncio.wait_for(admin.create_topics([NewTopic(topic, 1, 1)]), 20)
    finally:
        await admin.close()
    url = f"kafka://{kafka_bootstrap}"
    d = EventDispatcher.from_url(url, group_id=f"g-{topic}", stop_timeout=5.0, **FAST_GROUP)
    got: list[Everything] = []
    content_types: list[str] = []

    @d.handler(KafkaEventSubscription(topic=topic))
    async def on(event: Event[Everything]) -> None:
        got.append(event.body)
        content_types.append(event.message.headers["dispytch-content-type"])

    sent = [everything(), everything(maybe=None, maybe_address=None, tags=[])]
    await d.start()
    try:
        async with EventEmitter.from_url(url, serializer="protobuf") as emitter:
            for e in sent:
                await emitter.emit(e, route=KafkaEventRoute(topic=topic))
        await until(lambda: len(got) == 2, "both events through Kafka", timeout=60)
    finally:
        await asyncio.wait_for(d.stop(), 30)
    assert got == sent
    assert content_types == ["application/x-protobuf"] * 2
