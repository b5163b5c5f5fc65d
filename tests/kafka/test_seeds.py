"""The seed documents' Kafka examples, unmodified but for the broker address (Tansu).

Seed 002 (EventEmitter docs): the Kafka emitter example runs as a script of its own, its
text as the document has it (``localhost:19092`` replaced by the test broker), and the
event it emits is read back with a plain aiokafka consumer. Seed 000 (README): the handler
example (``HandlerGroup``, ``handler(topic=, event=)``, ``Event[T]``, ``Dependency``) and the
emitter example (``__topic__``/``__event_type__``) over the user's own aiokafka clients,
started by hand as seed 001 says ("you must manually start your KafkaConsumer instance").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import TopicAlreadyExistsError
from dispytch import EventBase, EventDispatcher, EventEmitter
from dispytch.kafka import KafkaConsumer, KafkaEventRoute, KafkaProducer

from tests.seed_readme import SERVICE, TOPIC, example_emit, printed, user_events

from .harness import FAST_GROUP
from .helpers import create_topic

pytestmark = pytest.mark.broker

# -- seed 002: "Example: Setting Up Event Emitter" (verbatim) ------------------------------
SEED_002_EMITTER = """
from aiokafka import AIOKafkaProducer
from dispytch import EventEmitter, EventBase
from dispytch.kafka import KafkaProducer, KafkaEventRoute


class UserEvent(EventBase):
    __route__ = KafkaEventRoute(
        topic="user_events",
    )

    user_id: str
    timestamp: str


async def main():
    raw_kafka_producer = AIOKafkaProducer(bootstrap_servers="localhost:19092")
    await raw_kafka_producer.start()  # REMEMBER TO START THE PRODUCER!

    producer = KafkaProducer(raw_kafka_producer)
    emitter = EventEmitter(producer)

    await emitter.emit(
        UserEvent(user_id="abc123",
                  timestamp="2025-07-07T12:00:00Z")
    )
    print("Event emitted!")
"""


async def _read_one(bootstrap: str, topic: str) -> tuple[dict[str, bytes], bytes]:
    c = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await c.start()
    try:
        async with asyncio.timeout(30):
            while True:
                for recs in (await c.getmany(timeout_ms=200)).values():
                    return dict(recs[0].headers), recs[0].value
    finally:
        await c.stop()


async def test_seed_002_kafka_emitter_example(kafka_bootstrap: str, tmp_path: Path) -> None:
    await create_topic(kafka_bootstrap, "user_events", 1)  # as an operator would
    script = tmp_path / "seed_002_emitter.py"
    code = SEED_002_EMITTER.replace("localhost:19092", kafka_bootstrap)
    script.write_text(code + "\n\nimport asyncio\nasyncio.run(main())\n")
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-W", "ignore::ResourceWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Event emitted!"
    headers, value = await _read_one(kafka_bootstrap, "user_events")
    assert json.loads(value) == {"user_id": "abc123", "timestamp": "2025-07-07T12:00:00Z"}
    assert headers["dispytch-event-type"] == b"UserEvent"


# -- seed 000: the README's handler and emitter examples (tests/seed_readme.py) -------------
# On the seed's topic, user_events, which seed 002's example also writes to (a UserEvent:
# a type the seed 000 handler does not take, so it is skipped).


async def test_seed_000_handler_and_emitter_over_the_users_kafka_clients(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with contextlib.suppress(TopicAlreadyExistsError):  # seed 002's case may have made it
        await create_topic(kafka_bootstrap, TOPIC, 1)
    user_id = str(uuid.uuid4())
    raw_consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"users-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    await raw_consumer.start()  # seed 001: "you must manually start" it
    raw_producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw_producer.start()  # seed 002: "REMEMBER TO START THE PRODUCER!"
    try:
        dispatcher = EventDispatcher(KafkaConsumer(raw_consumer))
        dispatcher.add_router(user_events)
        emitter = EventEmitter(KafkaProducer(raw_producer))
        async with dispatcher:
            await example_emit(emitter, user_id)
            async with asyncio.timeout(30):
                while user_id not in SERVICE.done:
                    await asyncio.sleep(0.02)
    finally:
        await raw_producer.stop()
        await raw_consumer.stop()
    assert SERVICE.done.count(user_id) == 1
    assert printed(user_id) in capsys.readouterr().out


# -- seed 002: the route example with KafkaEventRoute (verbatim) ---------------------------


class MyEvent(EventBase):
    __route__ = KafkaEventRoute(
        topic="my_topic",
    )

    user_id: str
    value: int


async def test_seed_002_route_example(kafka_bootstrap: str) -> None:
    await create_topic(kafka_bootstrap, "my_topic", 1)
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw.start()
    try:
        await EventEmitter(KafkaProducer(raw)).emit(MyEvent(user_id="abc123", value=1))
    finally:
        await raw.stop()
    _, value = await _read_one(kafka_bootstrap, "my_topic")
    assert MyEvent.model_validate_json(value) == MyEvent(user_id="abc123", value=1)
