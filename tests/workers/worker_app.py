"""The service ``dispytch run worker_app:make --workers 3`` runs in the worker tests.

Configured by the environment (the test sets it): ``WORKERS_URL`` (the consumer's URL,
group included), ``WORKERS_TOPIC``, ``WORKERS_OUT`` (a directory: each worker appends the
job numbers it handled to ``<pid>.log``, one line each, flushed, after handling and before
the acknowledgement). ``WORKERS_SLEEP`` (default 0.003 s) is how long a handler takes;
``WORKERS_TIMES=1`` adds a ``time.monotonic()`` stamp to each line (the benchmark's).
"""

from __future__ import annotations

import asyncio
import os
import time

from dispytch import Event, EventBase, EventDispatcher, TopicSubscription


class Job(EventBase):
    __event_type__ = "job"
    n: int


async def make() -> EventDispatcher:
    url = os.environ["WORKERS_URL"]
    out = open(  # noqa: SIM115 - kept open for the process's life
        os.path.join(os.environ["WORKERS_OUT"], f"{os.getpid()}.log"), "a", buffering=1
    )
    dispatcher = EventDispatcher.from_url(url, max_in_flight=16, stop_timeout=5.0)
    pause = float(os.environ.get("WORKERS_SLEEP", "0.003"))
    stamp = os.environ.get("WORKERS_TIMES") == "1"

    @dispatcher.handler(TopicSubscription(topic=os.environ["WORKERS_TOPIC"]))
    async def handle(event: Event[Job]) -> None:
        if pause:
            await asyncio.sleep(pause)
        out.write(f"{event.body.n} {time.monotonic():.6f}\n" if stamp else f"{event.body.n}\n")

    return dispatcher
