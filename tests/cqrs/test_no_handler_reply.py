"""A request no handler takes is answered at once ("no-handler" -> NoHandlerError), under
every acknowledgement policy, whether its route has handlers for other types or none at
all; a fire-and-forget command of such a type is skipped as before, with no reply."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from dispytch import AckPolicy, EventDispatcher, EventEmitter
from dispytch.cqrs import NoHandlerError, NoRouteError
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryEventRoute, MemoryProducer
from dispytch.routes import EventSubscription, TopicSubscription

from tests.cqrs.models import CountUsers, GetUser, RenameUser, User

#: A request timeout no case should come near: only an answer ends them soon.
LONG = 60.0


class AlsoReading(MemoryConsumer):
    """A consumer also subscribed to a topic no handler of its dispatcher takes."""

    def __init__(self, broker: MemoryBroker, *, group: str, extra: str) -> None:
        super().__init__(broker, group=group)
        self.extra = extra

    def subscribe(self, subscriptions: Sequence[EventSubscription]) -> None:
        super().subscribe([*subscriptions, TopicSubscription(topic=self.extra)])


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    yield MemoryBroker(uuid.uuid4().hex)


async def settled(broker: MemoryBroker) -> None:
    async with asyncio.timeout(5):
        while broker.pending("svc"):
            await asyncio.sleep(0.002)


def serve_get_user(dispatcher: EventDispatcher) -> None:
    @dispatcher.query(GetUser)
    async def get(query: GetUser) -> User:
        return User(id=query.id, name="ann")


@pytest.mark.parametrize("policy", list(AckPolicy))
async def test_a_type_no_handler_takes_on_a_served_topic(
    broker: MemoryBroker, policy: AckPolicy
) -> None:
    # CountUsers travels on GetUser's topic, which this dispatcher serves for GetUser only.
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"), ack_policy=policy)
    serve_get_user(dispatcher)
    async with dispatcher, EventEmitter(MemoryProducer(broker)) as caller:
        async with asyncio.timeout(LONG / 2):
            with pytest.raises(NoHandlerError, match=r"'CountUsers'(?s:.*)\(CountUsers\)") as info:
                await caller.request(CountUsers(), timeout=LONG)
        assert isinstance(info.value, NoRouteError) and isinstance(info.value, LookupError)
        # Acknowledged (under MANUAL too: no handler could): answered requests are not
        # redelivered.
        await settled(broker)
        assert (await caller.request(GetUser(id=1), timeout=LONG)).name == "ann"
        assert dispatcher.stats["requests_unhandled"] == 1
        assert dispatcher.stats["skipped"] == 1
    assert broker.rejected == []


@pytest.mark.parametrize("policy", list(AckPolicy))
async def test_a_route_no_handler_takes(broker: MemoryBroker, policy: AckPolicy) -> None:
    consumer = AlsoReading(broker, group="svc", extra="cqrs.nobody")
    dispatcher = EventDispatcher(consumer, ack_policy=policy)
    serve_get_user(dispatcher)
    async with dispatcher, EventEmitter(MemoryProducer(broker)) as caller:
        with pytest.raises(NoHandlerError, match="cqrs.nobody"):
            await caller.request(GetUser(id=1), route=_topic("cqrs.nobody"), timeout=LONG)
        # Answered, so acknowledged instead of rejected (it would be in the dead letters).
        await settled(broker)
        assert dispatcher.stats["unknown_route"] == 1
        assert dispatcher.stats["requests_unhandled"] == 1
    assert broker.rejected == []


async def test_a_fire_and_forget_command_no_handler_takes_is_skipped(
    broker: MemoryBroker,
) -> None:
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"))
    serve_get_user(dispatcher)
    async with dispatcher, EventEmitter(MemoryProducer(broker)) as caller:
        await caller.emit(RenameUser(id=1, name="x"), route=_topic(GetUser.__topic__))
        async with asyncio.timeout(5):
            while dispatcher.stats["skipped"] < 1:
                await asyncio.sleep(0.002)
        assert dispatcher.stats["requests_unhandled"] == 0
    assert broker.rejected == []


def _topic(name: str) -> MemoryEventRoute:
    return MemoryEventRoute(topic=name)
