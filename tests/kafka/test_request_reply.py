"""Request/reply conformance against Kafka (Tansu on loopback), in both construction modes:
replies on one partition of ``dispytch.replies`` per requester, read without a group."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from dispytch import EventEmitter, QueryBase
from dispytch.cqrs import NoRouteError
from dispytch.dispatcher import EventDispatcher
from dispytch.kafka import (
    KafkaConsumer,
    KafkaEventRoute,
    KafkaEventSubscription,
    KafkaProducer,
    replies,
)
from dispytch.testing.conformance import eventually
from dispytch.testing.harness import Mode
from dispytch.testing.request_reply import RequestReplyConformance

from .harness import FAST_GROUP, KafkaHarness
from .helpers import create_topic

pytestmark = pytest.mark.broker


class TestKafkaRequestReply(RequestReplyConformance):
    timeout = 30.0

    @pytest.fixture(params=["url", "client"])
    async def harness(
        self, kafka_bootstrap: str, request: pytest.FixtureRequest
    ) -> AsyncIterator[KafkaHarness]:
        mode: Mode = request.param
        # Requests on one partition are independent: the responder runs them side by side
        # (ordered=False), as a service answering queries would; with ordered=True one
        # partition's requests run one after another, in offset order.
        h = KafkaHarness(kafka_bootstrap, mode=mode, ordered=False)
        await h.setup()
        try:
            yield h
        finally:
            await h.cleanup()


class Ping(QueryBase[int]):
    n: int


async def test_idle_reader_pauses_and_wakes_for_the_next_request(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reply reader stops fetching once no reply can come, and a later request still
    # gets its reply (the partition's position was kept while paused).
    monkeypatch.setattr(replies, "REPLY_MIN_AWAKE", 0.2)
    monkeypatch.setattr(replies, "REPLY_GRACE", 0.0)
    topic = f"rr-idle-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_bootstrap, topic, 1)
    url = f"kafka://{kafka_bootstrap}"
    service = EventDispatcher(KafkaConsumer.from_url(url, group_id=f"g-{topic}", **FAST_GROUP))

    @service.query(Ping, subscription=KafkaEventSubscription(topic=topic))
    async def ping(query: Ping) -> int:
        return query.n + 1

    producer = KafkaProducer.from_url(url)
    route = KafkaEventRoute(topic=topic)
    async with service, EventEmitter(producer) as caller:
        assert await caller.request(Ping(n=1), route=route, timeout=1.0) == 2
        reader = producer._replies
        assert reader is not None and reader._consumer is not None
        consumer = reader._consumer
        await eventually(lambda: bool(consumer.paused()), 20, "the idle reader to pause")
        assert await caller.request(Ping(n=41), route=route, timeout=30) == 42
        assert not consumer.paused()


async def test_a_request_to_a_missing_topic_creates_nothing(kafka_bootstrap: str) -> None:
    topic = f"rr-missing-{uuid.uuid4().hex[:10]}"
    async with EventEmitter(KafkaProducer.from_url(f"kafka://{kafka_bootstrap}")) as caller:
        with pytest.raises(NoRouteError, match=topic):
            await caller.request(Ping(n=1), route=KafkaEventRoute(topic=topic), timeout=60)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        names = await admin.list_topics()
    finally:
        await admin.close()
    assert topic not in names and "dispytch.replies" in names
