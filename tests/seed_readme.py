"""Seed 000 (the README): its handler example and its emitter example, as the document has
them, for every transport's ``test_seeds.py`` to run over its own broker (not a test
module; core and pydantic only, so it imports wherever one transport is installed).

Two changes to the seed text, each marked: ``from service import UserService,
get_user_service`` is the small service below (the seed does not show that module), and
``example_emit`` takes an optional ``user_id`` (the seed writes ``str(uuid.uuid4())``,
which stays the default) so a test on a shared broker can find its own event.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from dispytch import Dependency, Event, EventBase, EventEmitter, HandlerGroup
from pydantic import BaseModel

#: The seed's topic.
TOPIC = "user_events"


# -- "from service import UserService, get_user_service" -----------------------------------


class UserService:
    """Records which users the seed handler saw (by id), so tests can check it ran."""

    def __init__(self) -> None:
        self.done: list[str] = []

    async def do_smth_with_the_user(self, user: User) -> None:
        self.done.append(user.id)


SERVICE = UserService()


def get_user_service() -> UserService:
    return SERVICE


# -- seed 000: handler example (verbatim but for the service module) -----------------------


class User(BaseModel):
    id: str
    email: str
    name: str


class UserCreatedEvent(BaseModel):
    user: User
    timestamp: int


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


# -- seed 000: emitter example (verbatim but for user_id) -----------------------------------


class UserEvent(EventBase):
    __topic__ = "user_events"


class UserRegistered(UserEvent):
    __event_type__ = "user_registered"

    user: User
    timestamp: int


async def example_emit(emitter: EventEmitter, user_id: str | None = None) -> None:
    await emitter.emit(
        UserRegistered(
            user=User(
                id=user_id or str(uuid.uuid4()),  # seed: str(uuid.uuid4())
                email="example@mail.com",
                name="John Doe",
            ),
            timestamp=int(datetime.now().timestamp()),
        )
    )


def printed(user_id: str) -> str:
    """The start of the line the seed handler prints for ``user_id``."""
    return f"[User Registered] {user_id} - example@mail.com at "
