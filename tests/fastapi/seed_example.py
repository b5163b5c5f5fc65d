"""dispatch-py's FastAPI example (seeds/004, "Integration with FastAPI") with Dispytch
names, as far as events go: ``Dispytch(app, emitter)`` installs the lifespan like
``Dispatch(app)``; the GET handler emits an event instead of ``publish.dispatch(...)``;
``publish`` is a handler run by a dispatcher (here in the web process, asked for; in
production in ``dispytch run seed_example:dispatcher`` workers). ``requests`` is not used:
the handler records the call so the test needs no network.
"""

from __future__ import annotations

from typing import Any

from dispytch import Event, EventBase, EventDispatcher, EventEmitter, TopicRoute, TopicSubscription
from dispytch.fastapi import Dispytch, Emitter
from fastapi import FastAPI

emitter = EventEmitter.from_url("memory://seed-example")
dispatcher = EventDispatcher.from_url("memory://seed-example")
published: list[tuple[str, dict[str, Any]]] = []


class Publish(EventBase):
    __route__ = TopicRoute(topic="publish")
    url: str
    payload: dict[str, Any]


@dispatcher.handler(TopicSubscription(topic="publish"))
async def publish(event: Event[Publish]) -> None:
    # dispatch-py: requests.post(url, data=payload); r.raise_for_status()
    published.append((event.body.url, event.body.payload))


app = FastAPI()
dispytch = Dispytch(app, emitter, dispatchers=[dispatcher])


@app.get("/")
async def root(emitter: Emitter) -> dict[str, int]:
    await emitter.emit(Publish(url="https://httpstat.us/200", payload={"hello": "world"}))
    return {"answer": 42}
