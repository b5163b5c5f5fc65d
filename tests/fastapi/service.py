"""A small web service: POST /signups emits UserSignedUp; a handler welcomes the user.

As a user writes it: the emitter and dispatcher from URLs, the handler registered on the
dispatcher, the lifespan given only the emitter (handlers run in workers).
"""

from __future__ import annotations

from dispytch import Event, EventBase, EventDispatcher, EventEmitter, TopicRoute, TopicSubscription
from dispytch.fastapi import Emitter, IdempotencyKey, RequiredIdempotencyKey, lifespan
from fastapi import FastAPI
from pydantic import BaseModel


class UserSignedUp(EventBase):
    __route__ = TopicRoute(topic="signups")
    __event_type__ = "user_signed_up"
    email: str
    request_key: str | None = None


class SignUp(BaseModel):
    email: str


emitter = EventEmitter.from_url("memory://web-service")
dispatcher = EventDispatcher.from_url("memory://web-service")
welcomed: list[str] = []


@dispatcher.handler(TopicSubscription(topic="signups"))
async def welcome(event: Event[UserSignedUp]) -> None:
    welcomed.append(event.body.email)


def make_app(*, run_dispatcher: bool = False) -> FastAPI:
    app = FastAPI(lifespan=lifespan(emitter, dispatchers=[dispatcher] if run_dispatcher else []))

    @app.post("/signups", status_code=202)
    async def sign_up(body: SignUp, emitter: Emitter, key: IdempotencyKey) -> dict[str, object]:
        await emitter.emit(UserSignedUp(email=body.email, request_key=key))
        return {"accepted": body.email, "key": key}

    @app.put("/orders/{order_id}")
    async def put_order(order_id: int, key: RequiredIdempotencyKey) -> dict[str, object]:
        return {"order": order_id, "run_id": key}

    return app
