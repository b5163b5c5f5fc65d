"""A poison message whose dead letter can never be published does not block its Kafka
partition: ``Retry`` + ``DeadLetter`` to a Kafka topic, a 10 MB payload among valid
events, the dead-letter publish failing with aiokafka's ``MessageSizeTooLargeError``.

The dead letter goes out truncated (the error and a reference: topic, partition, offset,
size, sha256), the partition's offset moves past the poison, and the valid events behind
it are handled exactly once (issue 11: before, the original was requeued for ever and
earlier records were re-handled hundreds of times).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from dispytch import DeadLetter, Event, EventBase, EventDispatcher, EventEmitter, Retry
from dispytch.backoff import Backoff
from dispytch.kafka import KafkaConsumer, KafkaEventRoute, KafkaEventSubscription, KafkaProducer
from dispytch.middleware.dead_letter import HEADER_ORIGINAL_SHA256, HEADER_TRUNCATED

from .harness import FAST_GROUP
from .helpers import committed, create_topic

pytestmark = pytest.mark.broker

T = 60.0
BIG = 10 * 1024 * 1024
VALID = 3


class Job(EventBase):
    n: int
    blob: str = ""


async def _publish_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Publish with the plain aiokafka client (large enough for the poison)."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=BIG + 1024 * 1024)
    await p.start()
    try:
        for v in values:
            await p.send_and_wait(topic, v, partition=0)
    finally:
        await p.stop()


async def _read_all(bootstrap: str, topic: str, n: int) -> list[object]:
    c = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await c.start()
    got: list[object] = []
    try:
        async with asyncio.timeout(T):
            while len(got) < n:
                batch = await c.getmany(timeout_ms=500)
                for records in batch.values():
                    got.extend(records)
    finally:
        await c.stop()
    return got


async def test_a_poison_whose_dead_letter_is_too_large_does_not_block_its_partition(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"poison-{uuid.uuid4().hex[:10]}"
    dlq = f"{topic}.dlq"
    group = f"g-{uuid.uuid4().hex[:8]}"
    url = f"kafka://{kafka_bootstrap}"
    await create_topic(kafka_bootstrap, topic, 1)
    await create_topic(kafka_bootstrap, dlq, 1)
    poison = Job(n=-1, blob="x" * BIG).model_dump_json().encode()
    await _publish_raw(
        kafka_bootstrap,
        topic,
        [poison, *(Job(n=n).model_dump_json().encode() for n in range(VALID))],
    )

    handled: list[int] = []
    poison_attempts: list[int] = []
    consumer = KafkaConsumer.from_url(
        url,
        group_id=group,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=BIG + 1024 * 1024,
        fetch_max_bytes=BIG + 1024 * 1024,
        commit_interval=0.05,
        **FAST_GROUP,
    )
    dispatcher = EventDispatcher(consumer)
    # The dead-letter emitter keeps aiokafka's default max_request_size (1 MB): the whole
    # poison can never be published there.
    dead_letters = EventEmitter(KafkaProducer.from_url(url))

    @dispatcher.handler(
        KafkaEventSubscription(topic=topic),
        middlewares=[
            DeadLetter(
                dead_letters,
                route=KafkaEventRoute(topic=dlq),
                backoff=Backoff(initial=0.01, cap=0.05),
            ),
            Retry(attempts=3, delay=0.01, jitter=0),
        ],
    )
    async def work(event: Event[Job]) -> None:
        if event.body.blob:
            poison_attempts.append(event.attempt)
            raise ValueError("poison: cannot handle this job")
        handled.append(event.body.n)

    with caplog.at_level(logging.ERROR, logger="dispytch"):
        async with dead_letters, dispatcher:
            async with asyncio.timeout(T):
                while len(handled) < VALID or dispatcher.stats["dead_lettered"] < 1:
                    await asyncio.sleep(0.05)
    # Stopped: every settled offset is committed. The partition moved past all four.
    assert await committed(kafka_bootstrap, group, topic) == [VALID + 1]
    assert handled == list(range(VALID))  # each exactly once, in order
    assert poison_attempts == [1, 1, 1]  # Retry's three attempts, one delivery
    assert dispatcher.stats["dead_lettered"] == 1
    assert dispatcher.stats["requeued"] == 0 and dispatcher.stats["rejected"] == 0

    (record,) = await _read_all(kafka_bootstrap, dlq, 1)
    headers = {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]
    digest = hashlib.sha256(poison).hexdigest()
    assert headers[HEADER_TRUNCATED] == "1" and headers[HEADER_ORIGINAL_SHA256] == digest
    body = json.loads(record.value)  # type: ignore[attr-defined]
    assert body["original"]["route"] == topic
    assert body["original"]["size"] == len(poison)
    assert body["original"]["sha256"] == digest
    assert body["original"]["metadata"]["partition"] == 0
    assert body["original"]["metadata"]["offset"] == 0
    assert "MessageSizeTooLargeError" in body["dead_letter_error"]["message"]
    lines = [r.getMessage() for r in caplog.records if "the payload went to" in r.getMessage()]
    assert len(lines) == 1
    assert f"({len(poison)} bytes" in lines[0] and "ValueError: poison" in lines[0]
    assert "MessageSizeTooLargeError" in lines[0]
    assert f"a truncated dead letter to {dlq!r}" in lines[0]
