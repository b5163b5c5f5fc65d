"""The command/query bus in a FastAPI app: lifespan(bus=...) and the CommandBus dependency."""

from __future__ import annotations

import asyncio

import pytest
from dispytch import Bus, CommandBase, NotStartedError, QueryBase, Router
from dispytch.fastapi import CommandBus, lifespan
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel


class User(BaseModel):
    id: int
    name: str


class CreateUser(CommandBase[User]):
    name: str


class GetUser(QueryBase[User]):
    id: int


class NewUser(BaseModel):
    name: str


def make_app() -> tuple[FastAPI, Bus]:
    users: dict[int, str] = {}
    router = Router()

    @router.command(CreateUser)
    async def create(cmd: CreateUser) -> User:
        uid = len(users) + 1
        users[uid] = cmd.name
        return User(id=uid, name=cmd.name)

    @router.query(GetUser)
    async def get(query: GetUser) -> User:
        return User(id=query.id, name=users[query.id])

    bus = Bus()
    bus.add_router(router)
    app = FastAPI(lifespan=lifespan(bus=bus))

    @app.post("/users")
    async def post_user(body: NewUser, bus: CommandBus) -> User:
        return await bus.send(CreateUser(name=body.name))

    @app.get("/users/{uid}")
    async def get_user(uid: int, bus: CommandBus) -> User:
        return await bus.ask(GetUser(id=uid))

    return app, bus


def test_endpoints_send_commands_and_ask_queries() -> None:
    app, bus = make_app()
    with TestClient(app) as client:
        assert client.post("/users", json={"name": "ann"}).json() == {"id": 1, "name": "ann"}
        assert client.get("/users/1").json() == {"id": 1, "name": "ann"}
    # stopped with the app: a call now is refused
    with pytest.raises(NotStartedError):
        asyncio.run(bus.send(CreateUser(name="late")))


def test_bus_argument_is_checked() -> None:
    with pytest.raises(TypeError, match="dispytch.Bus"):
        lifespan(bus=object())  # type: ignore[arg-type]
