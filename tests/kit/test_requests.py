"""Commands and queries through the kit: requests answered by a swapped dispatcher."""

from __future__ import annotations

import pytest
from dispytch import CommandBase, EventBase, EventDispatcher, EventEmitter, QueryBase, Router
from dispytch.testing import memory
from pydantic import BaseModel


class UserView(BaseModel):
    id: int
    name: str


class UserCreated(EventBase):
    __topic__ = "kit.users.events"
    id: int
    name: str


class CreateUser(CommandBase[UserCreated]):
    __topic__ = "kit.users.commands"
    name: str


class GetUser(QueryBase[UserView]):
    __topic__ = "kit.users.queries"
    id: int


class Service:
    def __init__(self) -> None:
        self.users: dict[int, str] = {}
        self.emitter = EventEmitter.from_url("memory://kit-requests")
        self.dispatcher = EventDispatcher.from_url("memory://kit-requests", emitter=self.emitter)
        router = Router()

        @router.command(CreateUser)
        async def create(cmd: CreateUser) -> UserCreated:
            uid = len(self.users) + 1
            self.users[uid] = cmd.name
            return UserCreated(id=uid, name=cmd.name)

        @router.query(GetUser)
        async def get(query: GetUser) -> UserView:
            return UserView(id=query.id, name=self.users[query.id])

        self.dispatcher.add_router(router)


async def test_the_test_sends_commands_and_queries() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher) as kit:
        created = await kit.request(CreateUser(name="ann"))
        assert created == UserCreated(id=1, name="ann")
        assert await kit.request(GetUser(id=1)) == UserView(id=1, name="ann")
        await kit.idle()
        # The event the command returned went out through the service's emitter.
        kit.assert_emitted(UserCreated, id=1, name="ann")
        kit.assert_nothing_else_emitted()


async def test_the_dispatchers_emitter_is_swapped_even_when_not_named() -> None:
    svc = Service()
    async with memory(svc.dispatcher) as kit:
        assert svc.emitter in kit.emitters
        await kit.request(CreateUser(name="cy"))
        await kit.idle()
        kit.assert_emitted(UserCreated, name="cy")


async def test_the_services_own_requests_are_recorded() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher) as kit:
        reply = await svc.emitter.request(CreateUser(name="bob"))
        assert reply.name == "bob"
        kit.assert_emitted(CreateUser, name="bob")
        with pytest.raises(AssertionError, match="GetUser"):
            kit.assert_emitted(GetUser)
