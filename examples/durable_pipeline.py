"""Durable functions on the embedded default: the memory transport and a SQLite journal.

    python examples/durable_pipeline.py

A pipeline of three steps and a fan-out/fan-in with ``gather``, as in dispatch-py's
README, with no server: each awaited durable function is a step journalled in
``.dispytch/journal.sqlite3`` (set ``DISPYTCH_DURABLE_STORE`` to put it elsewhere), so a
run that is retried never redoes a finished step. For workers in other processes set
``DISPYTCH_DURABLE_TRANSPORT=redis+streams://127.0.0.1:6379`` in every process and run
``dispytch run durable_pipeline:worker --app-dir examples`` (functions carry explicit
names, so a script and its workers agree on them whatever ``__name__`` is).
"""

from __future__ import annotations

import dispytch.durable as durable
from dispytch.durable import gather

attempts = {"transform2": 0}


@durable.function(name="example.transform1")
async def transform1(msg: str) -> str:
    return msg.strip()


@durable.function(name="example.transform2")
async def transform2(msg: str) -> str:
    attempts["transform2"] += 1
    if attempts["transform2"] == 1:
        # A transient error (timeout, connection, OS errors): the run is retried with
        # backoff; transform1's result comes from the journal, it does not run again.
        raise ConnectionError("the upstream is restarting")
    return msg.upper()


@durable.function(name="example.publish")
def publish(msg: str) -> str:  # a sync function runs in a worker thread
    return f"published {msg!r}"


@durable.function(name="example.pipeline")
async def pipeline(msg: str) -> str:
    msg = await transform1(msg)
    msg = await transform2(msg)
    return await publish(msg)


@durable.function(name="example.transform")
async def transform(n: int) -> int:
    return n * n


@durable.function(name="example.process")
async def process(numbers: list[int]) -> list[int]:
    # Each call is a run of its own; the parent waits without polling and gets the
    # results in input order, typed by transform's annotation.
    return await gather(*[transform(n) for n in numbers])


worker = durable.default()  # what `dispytch run durable_pipeline:worker` runs


def main() -> None:
    durable.default().settings.backoff.initial = 0.1  # a quick retry for the demo
    print(durable.run(pipeline("  hello durable  ")))
    print(durable.run(process([1, 2, 3, 4, 5])))


if __name__ == "__main__":
    main()
