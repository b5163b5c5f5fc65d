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
from datetime import datetime
from typing import Annotated, Any

import aio_pika
import pytest
from dispytch import Dependency, Event, EventBase, EventEmitter, HandlerGroup
from dispytch.dispatcher import EventDispatcher
from dispytch.rabbitmq import RabbitMQConsumer, RabbitMQEventRoute, RabbitMQProducer
from pydantic import BaseModel

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


# --------------------------------------------------------------- seed 000, as written
class User(BaseModel):
    id: str
    email: str
    name: str


class UserCreatedEvent(BaseModel):
    user: User
    timestamp: int


class UserService:
    def __init__(self) -> None:
        self.users: list[User] = []

    async def do_smth_with_the_user(self, user: User) -> None:
        self.users.append(user)


SERVICE = UserService()


def get_user_service() -> UserService:
    return SERVICE


user_events = HandlerGroup()


@user_events.handler(topic="user_events", event="user_registered")
async def handle_user_registered(
    event: Event[UserCreatedEvent],
    user_service: Annotated[UserService, Dependency(get_user_service)],
) -> None:
    user = event.body.user
    timestamp = event.body.timestamp

    print(f"[User Registered] {user.id} - {user.email} at {timestamp}")

    await user_service.do_smth_with_the_user(event.body.user)


class UserEventBase(EventBase):
    __topic__ = "user_events"


class UserRegistered(UserEventBase):
    __event_type__ = "user_registered"

    user: User
    timestamp: int


async def example_emit(emitter: EventEmitter) -> None:
    await emitter.emit(
        UserRegistered(
            user=User(
                id=str(uuid.uuid4()),
                email="example@mail.com",
                name="John Doe",
            ),
            timestamp=int(datetime.now().timestamp()),
        )
    )


async def test_seed_000_handler_and_emitter_examples(names: Names) -> None:
    """The handler group over ``RabbitMQConsumer(queue)`` and the emitter example over
    ``RabbitMQProducer([exchange])``, both on the user's own connection; topics go to
    ``amq.topic`` (the transport-neutral route)."""
    conn = await aio_pika.connect(AMQP_URL)
    try:
        channel = await conn.channel()
        topic = await channel.get_exchange("amq.topic")
        queue = await channel.declare_queue(names.queue("seed000"), durable=True)
        await queue.bind(topic, routing_key="user_events")
        before = len(SERVICE.users)
        dispatcher = EventDispatcher(RabbitMQConsumer(queue))
        dispatcher.add_router(user_events)
        async with dispatcher:
            await example_emit(EventEmitter(RabbitMQProducer([topic])))
            await wait_until(lambda: len(SERVICE.users) > before, timeout=10)
        assert SERVICE.users[-1].email == "example@mail.com"
        assert dispatcher.stats["handled"] == 1
    finally:
        await conn.close()
