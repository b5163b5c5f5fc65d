"""Commands and queries: the same handlers in process (``Bus``) and behind a broker.

    python examples/cqrs.py                                   # in memory, no broker
    python examples/cqrs.py amqp://guest:guest@localhost:5672/  # over RabbitMQ

One router holds a command handler (a class whose constructor takes a dependency), a
query handler and an event handler. First a ``Bus`` runs it in process: replies come
back typed, the event the command returned is published after it succeeded, the query
of an unknown user raises ``KeyError`` as itself. Then an ``EventDispatcher`` serves the
same router over the transport the URL names and ``EventEmitter.request`` asks it: the
reply is typed again, and the handler's error comes back at once as a ``RemoteError``.
It exits by itself when the work is done.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from typing import Any

from dispytch import (
    Bus,
    CommandBase,
    Dependency,
    Event,
    EventBase,
    EventDispatcher,
    EventEmitter,
    QueryBase,
    RemoteError,
    Router,
)
from pydantic import BaseModel

RUN = uuid.uuid4().hex[:8]  # unique names: several runs may share a broker


# -- messages -------------------------------------------------------------------------
class UserView(BaseModel):
    id: int
    name: str


class UserCreated(EventBase):
    __topic__ = f"example.{RUN}.users.events"
    id: int
    name: str


class CreateUser(CommandBase[UserCreated]):
    __topic__ = f"example.{RUN}.users.commands"
    name: str


class GetUser(QueryBase[UserView]):
    __topic__ = f"example.{RUN}.users.queries"
    id: int


# -- the service ----------------------------------------------------------------------
class Repo:
    def __init__(self) -> None:
        self.users: dict[int, str] = {}


REPO = Repo()


def get_repo() -> Repo:
    return REPO


users = Router()


@users.command(CreateUser)
class CreateUserHandler:
    """A class handler: a new instance per command, its constructor's parameters are
    dependencies."""

    def __init__(self, repo: Repo = Dependency(get_repo)) -> None:
        self.repo = repo

    async def handle(self, cmd: CreateUser) -> UserCreated:
        uid = len(self.repo.users) + 1
        self.repo.users[uid] = cmd.name
        return UserCreated(id=uid, name=cmd.name)  # the reply, and an event once it succeeded


@users.query(GetUser)
async def get_user(query: GetUser, repo: Repo = Dependency(get_repo)) -> UserView:
    return UserView(id=query.id, name=repo.users[query.id])  # KeyError for an unknown id


@users.handler(topic=UserCreated.__topic__)
async def welcome(event: Event[UserCreated]) -> None:
    print(f"  event: welcome, {event.body.name} (user {event.body.id})")


# -- in process -----------------------------------------------------------------------
async def in_process() -> None:
    print("In process (Bus):")
    bus = Bus()
    bus.add_router(users)
    async with bus:
        created = await bus.send(CreateUser(name="ann"))
        view = await bus.ask(GetUser(id=created.id))
        print(f"  reply: {view!r}")
        try:
            await bus.ask(GetUser(id=99))
        except KeyError as exc:
            print(f"  error, as itself: KeyError {exc}")
        await bus.join()  # the background event


# -- over a transport -----------------------------------------------------------------
def consumer_options(url: str) -> dict[str, Any]:
    if url.startswith("amqp"):
        # One queue bound to every topic served; the broker deletes it a minute after use.
        return {"queue": f"example.{RUN}.users", "queue_arguments": {"x-expires": 60_000}}
    return {}


async def over(url: str) -> None:
    print(f"Over {url.split('://')[0]}:// (EventDispatcher + EventEmitter.request):")
    events = EventEmitter.from_url(url)  # where the command's event goes
    service = EventDispatcher.from_url(url, emitter=events, **consumer_options(url))
    service.add_router(users)
    caller = EventEmitter.from_url(url)  # in production: another process
    async with events, service, caller:
        created = await caller.request(CreateUser(name="bo"), timeout=10)
        view = await caller.request(GetUser(id=created.id), timeout=10)
        print(f"  reply: {view!r}")
        try:
            await caller.request(GetUser(id=99), timeout=10)
        except RemoteError as exc:
            print(f"  error, at once: RemoteError {exc.type}: {exc.message}")
        await asyncio.sleep(0.2)  # let the welcome event arrive before stopping
    print(f"  stats: {dict(service.stats)}")


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    url = sys.argv[1] if len(sys.argv) > 1 else "memory://cqrs-example"
    await in_process()
    await over(url)


if __name__ == "__main__":
    asyncio.run(main())
