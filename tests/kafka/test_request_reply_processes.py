"""Request/reply across processes: the caller here, the handlers in a child process
(``tests/request_reply_child.py``), over Kafka (Tansu): the reply comes back on this
process's partition of the reply topic."""

from __future__ import annotations

import uuid

import pytest
from dispytch import EventEmitter
from dispytch.cqrs import NoRouteError
from dispytch.kafka import KafkaEventRoute, KafkaProducer

from tests.request_reply_child import Lookup, check_round_trips, responder, with_options

from .helpers import create_topic

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_caller_and_handler_in_two_processes(kafka_bootstrap: str) -> None:
    topic = f"rr-proc-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_bootstrap, topic, 1)
    url = with_options(
        f"kafka://{kafka_bootstrap}",
        group_id=f"g-{topic}",
        ordered=False,  # one partition's requests run side by side
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    route = KafkaEventRoute(topic=topic)
    producer = KafkaProducer.from_url(f"kafka://{kafka_bootstrap}")
    async with (
        responder(
            url, "dispytch.kafka:KafkaEventSubscription", f"topic={topic}", ready_timeout=60
        ) as proc,
        EventEmitter(producer) as emitter,
    ):
        # One reply partition for all of them.
        await check_round_trips(
            emitter, route, proc.pid, lambda: producer._replies and producer._replies.address
        )
        address = producer._replies.address if producer._replies is not None else None
        assert address is not None and address.startswith("dispytch.replies:")

        with pytest.raises(NoRouteError):
            await emitter.request(
                Lookup(n=1), route=KafkaEventRoute(topic=f"{topic}-none"), timeout=60
            )
