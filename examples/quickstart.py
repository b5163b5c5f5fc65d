"""Dispytch quickstart: a small service on the embedded in-memory transport.

    python examples/quickstart.py

No broker needed. It shows typed handlers with dependency injection, a router with a
dynamic topic (``user.{user_id}.events``) whose segment is injected as ``user_id: int``,
several event types on one topic, a retry that succeeds, and a message that fails for
good and lands on a dead-letter topic. It exits by itself when the work is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from dispytch import (
    DeadLetter,
    Dependency,
    Event,
    EventBase,
    EventDispatcher,
    EventEmitter,
    HandlerContext,
    Message,
    Retry,
    Router,
    TopicRoute,
    TopicSubscription,
)
from pydantic import BaseModel

URL = "memory://quickstart"


# -- events ---------------------------------------------------------------------------
class User(BaseModel):
    id: int
    email: str
    name: str


class UserRegistered(EventBase):
    __route__ = TopicRoute(topic="user.{user_id}.events", key="user_id")
    __event_type__ = "user_registered"

    user_id: int
    user: User


class EmailChanged(EventBase):
    __route__ = TopicRoute(topic="user.{user_id}.events", key="user_id")
    __event_type__ = "email_changed"

    user_id: int
    new_email: str


# -- dependencies ---------------------------------------------------------------------
class Mailer:
    """Pretends to send mail; fails once for the flaky address to show a retry."""

    def __init__(self) -> None:
        self.failed_once: set[str] = set()

    async def send_welcome(self, user: User) -> None:
        if user.email.startswith("flaky") and user.email not in self.failed_once:
            self.failed_once.add(user.email)
            raise ConnectionError("SMTP server hiccup")
        if user.email.endswith("@invalid"):
            raise ValueError(f"cannot deliver to {user.email}")
        print(f"  mail    -> welcome sent to {user.email}")


MAILER = Mailer()


async def get_mailer() -> Mailer:
    return MAILER


async def audit_log() -> AsyncIterator[list[str]]:
    """A generator dependency: set up before the handler, torn down after it."""
    entries: list[str] = []
    yield entries
    for line in entries:
        print(f"  audit   -> {line}")


# -- handlers -------------------------------------------------------------------------
users = Router()
emitter = EventEmitter.from_url(URL)


@users.handler(
    TopicSubscription(topic="user.{user_id}.events"),
    middlewares=[
        DeadLetter(emitter, route=TopicRoute(topic="user.dead-letters")),
        Retry(attempts=3, delay=0.05),
    ],
)
async def on_registered(
    event: Event[UserRegistered],
    user_id: int,
    mailer: Annotated[Mailer, Dependency(get_mailer)],
    audit: Annotated[list[str], Dependency(audit_log)],
    ctx: HandlerContext,
) -> None:
    print(f"handled user_registered for user {user_id}: {event.body.user.name} (try {ctx.attempt})")
    await mailer.send_welcome(event.body.user)
    audit.append(f"user {user_id} registered")


@users.handler(TopicSubscription(topic="user.{user_id}.events"))
async def on_email_changed(event: Event[EmailChanged], user_id: int) -> None:
    print(f"handled email_changed for user {user_id}: now {event.body.new_email}")


dead: list[Message] = []


@users.handler(TopicSubscription(topic="user.dead-letters"))
async def on_dead_letter(message: Message) -> None:
    dead.append(message)
    print(
        f"  dead-letter <- {message.headers['dispytch-original-route']}: "
        f"{message.headers['dispytch-error-type']}: "
        f"{message.headers['dispytch-error-message']}"
    )


async def main() -> None:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    dispatcher = EventDispatcher.from_url(URL)
    dispatcher.add_router(users)

    async with emitter, dispatcher:
        people = [
            User(id=1, email="ada@example.com", name="Ada"),
            User(id=2, email="flaky@example.com", name="Grace"),
            User(id=3, email="nobody@invalid", name="Nobody"),
        ]
        for person in people:
            await emitter.emit(UserRegistered(user_id=person.id, user=person))
        await emitter.emit(EmailChanged(user_id=1, new_email="ada@lovelace.dev"))

        # The service exits by itself once all five messages (and the dead letter) are done.
        for _ in range(500):
            done = sum(dispatcher.stats[k] for k in ("handled", "dead_lettered", "rejected"))
            if done >= 5 and dead:
                break
            await asyncio.sleep(0.01)

    stats = {k: v for k, v in sorted(dispatcher.stats.items())}
    print(f"done: {stats}")


if __name__ == "__main__":
    asyncio.run(main())
