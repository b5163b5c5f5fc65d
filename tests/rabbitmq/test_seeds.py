"""The seed documents' RabbitMQ examples, run as written but for the broker address.

``shared/seeds/002_…`` (EventEmitter, RabbitMQ): ``aio_pika.connect``, ``declare_exchange``,
``RabbitMQProducer([exchange])``, ``EventEmitter``, ``emit`` without ``emitter.start()``.
Dispytch publishes ``mandatory`` by default (a message no queue receives is an error, not
a silent drop: see the README's migration notes), so this test binds a queue to the
exchange *before* running the example code unmodified, and checks the event arrived.

``shared/seeds/000_…`` (handler example): a ``HandlerGroup`` handler for
``topic='user_events', event='user_registered'`` and the emitter example
``example_emit(emitter)``, over the user's own aio-pika objects.
"""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import pytest
from dispytch import EventBase, EventEmitter
from dispytch.dispatcher import EventDispatcher
from dispytch.rabbitmq import RabbitMQConsumer, RabbitMQEventRoute, RabbitMQProducer

from tests.seed_readme import SERVICE, example_emit, printed, user_events

from .conftest import AMQP_URL, Names, wait_until

pytestmark = pytest.mark.broker

# The seeds write 'amqp://guest:guest@localhost:5672'; the address is the only change.
SEED_URL = AMQP_URL


# --------------------------------------------------------------- seed 002, as written
class UserEvent(EventBase):
    __route__ = RabbitMQEventRoute(
        exchange="user.events",
        routing_key="user.email-changed",
    )

    user_id: str
    email: str


async def main() -> None:
    connection = await aio_pika.connect(SEED_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange("user.events", aio_pika.ExchangeType.DIRECT)

    producer = RabbitMQProducer([exchange])
    emitter = EventEmitter(producer)

    await emitter.emit(UserEvent(user_id="abc123", email="user@example.com"))
    print("Event sent!")


# --------------------------------------------------------------- the test around it
async def test_seed_002_rabbitmq_emitter_example(
    names: Names, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example never closes its connection; remember it to close it afterwards.
    opened: list[aio_pika.abc.AbstractConnection] = []
    connect = aio_pika.connect

    async def remembering_connect(*args: Any, **kwargs: Any) -> Any:
        opened.append(await connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(aio_pika, "connect", remembering_connect)
    conn = await connect(AMQP_URL)
    try:
        ch = await conn.channel()
        # The example's exchange is a fixed name shared with other runs: declare it the
        # way the example does, and give this test its own queue on it.
        ex = await ch.declare_exchange("user.events", aio_pika.ExchangeType.DIRECT)
        q = await ch.declare_queue(names.queue("seed002"), auto_delete=False)
        await q.bind(ex, routing_key="user.email-changed")
        await main()
        assert capsys.readouterr().out == "Event sent!\n"
        msg = await q.get(timeout=10)
        assert msg is not None
        await msg.ack()
        assert b'"user_id":"abc123"' in msg.body
        assert msg.type == "UserEvent"
    finally:
        for c in opened:
            await c.close()
        await conn.close()


# ------------------------------- seed 000, as written (tests/seed_readme.py)
async def test_seed_000_handler_and_emitter_examples(
    names: Names, capsys: pytest.CaptureFixture[str]
) -> None:
    """The handler group over ``RabbitMQConsumer(queue)`` and the emitter example over
    ``RabbitMQProducer([exchange])``, both on the user's own connection; topics go to
    ``amq.topic`` (the transport-neutral route)."""
    conn = await aio_pika.connect(AMQP_URL)
    try:
        channel = await conn.channel()
        topic = await channel.get_exchange("amq.topic")
        queue = await channel.declare_queue(names.queue("seed000"), durable=True)
        await queue.bind(topic, routing_key="user_events")
        user_id = str(uuid.uuid4())
        dispatcher = EventDispatcher(RabbitMQConsumer(queue))
        dispatcher.add_router(user_events)
        async with dispatcher:
            await example_emit(EventEmitter(RabbitMQProducer([topic])), user_id)
            await wait_until(lambda: user_id in SERVICE.done, timeout=10)
        assert printed(user_id) in capsys.readouterr().out
        assert dispatcher.stats["handled"] == 1
    finally:
        await conn.close()
