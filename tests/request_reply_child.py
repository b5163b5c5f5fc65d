"""The responder process of the two-process request/reply tests, for every transport, and
the checks its launchers run against it (not a test module).

Run as a script by the transports' launchers (``tests/*/test_*request_reply_processes.py``)::

    python tests/request_reply_child.py URL SUBSCRIPTION [FIELD=VALUE ...]

It serves the query :class:`Lookup` and the command :class:`Forbid` over
``EventDispatcher.from_url(URL)`` (consumer options in the URL's query string, e.g.
``?group_id=g&ordered=false``), from the subscription ``SUBSCRIPTION`` (``module:Class``
of the transport's subscription type) built with the ``FIELD=VALUE`` keyword arguments.
Prints ``ready`` once its dispatcher started; stops on SIGTERM.

It imports only core and the transport the URL and ``SUBSCRIPTION`` name, so it runs in a
session where only that transport is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode

import pytest
from dispytch import CommandBase, EventEmitter, QueryBase, RemoteError
from dispytch.cqrs import NoHandlerError
from dispytch.dispatcher import EventDispatcher
from dispytch.routes import EventRoute, EventSubscription
from pydantic import BaseModel

#: The script, for ``asyncio.create_subprocess_exec(sys.executable, str(CHILD), ...)``.
CHILD = Path(__file__)


class Answer(BaseModel):
    n: int
    square: int
    pid: int
    peak: int  # the most lookups this process ran at once, so far


class Lookup(QueryBase[Answer]):
    n: int
    delay: float = 0.0


class Forbid(CommandBase[None]):
    what: str


class Unserved(QueryBase[int]):
    """A query the responder has no handler for (sent where it serves the others)."""

    n: int


def with_options(url: str, **options: object) -> str:
    """``url`` with ``options`` added to its query string (``True`` -> ``"true"``)."""
    text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
    return f"{url}{'&' if '?' in url else '?'}{urlencode(text)}"


def subscription(spec: str, fields: Sequence[str]) -> EventSubscription:
    """The subscription ``module:Class`` built from ``FIELD=VALUE`` arguments."""
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    sub = cls(**dict(field.split("=", 1) for field in fields))
    assert isinstance(sub, EventSubscription), f"{spec} is not an EventSubscription"
    return sub


async def serve(url: str, sub: EventSubscription) -> None:
    """Serve :class:`Lookup` and :class:`Forbid` from ``sub`` until SIGTERM."""
    dispatcher = EventDispatcher.from_url(url, max_in_flight=128)
    running = peak = 0

    @dispatcher.query(Lookup, subscription=sub)
    async def lookup(query: Lookup) -> Answer:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(query.delay)
        finally:
            running -= 1
        return Answer(n=query.n, square=query.n * query.n, pid=os.getpid(), peak=peak)

    @dispatcher.command(Forbid, subscription=sub)
    async def forbid(cmd: Forbid) -> None:
        raise PermissionError(f"not allowed: {cmd.what}")

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with dispatcher:
        print("ready", flush=True)
        await stop.wait()


@contextlib.asynccontextmanager
async def responder(
    url: str, sub: str, *fields: str, ready_timeout: float = 30.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """This script started in a child process; yields once it printed ``ready``, and
    stops it (SIGTERM, then kill) on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), url, sub, *fields, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), ready_timeout)
        assert line.strip() == b"ready", f"the responder did not start: {line!r}"
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def check_round_trips(
    emitter: EventEmitter,
    route: EventRoute,
    responder_pid: int,
    reply_address: Callable[[], object],
) -> None:
    """What every two-process test checks through ``emitter`` against a :func:`responder`
    serving ``route``: a typed reply from the other process; a handler's error as
    ``RemoteError`` and, registered, as itself; a type the responder has no handler for
    as ``NoHandlerError`` at once; 100 concurrent requests to a 0.2 s handler handled side
    by side, all over the one reply address ``reply_address()`` gives after the first."""
    answer = await emitter.request(Lookup(n=7), route=route, timeout=60)
    address = reply_address()
    assert address is not None
    assert isinstance(answer, Answer)
    assert (answer.n, answer.square) == (7, 49)
    assert answer.pid == responder_pid != os.getpid()

    with pytest.raises(RemoteError) as info:
        await emitter.request(Forbid(what="x"), route=route, timeout=60)
    assert (info.value.type, info.value.message) == ("PermissionError", "not allowed: x")
    emitter.register_error(PermissionError)
    with pytest.raises(PermissionError, match="not allowed: y"):
        await emitter.request(Forbid(what="y"), route=route, timeout=60)
    # With a 60 s timeout, only the responder's "no-handler" answer ends this soon.
    with pytest.raises(NoHandlerError, match="Unserved"):
        await emitter.request(Unserved(n=1), route=route, timeout=60)

    answers = await asyncio.gather(
        *(emitter.request(Lookup(n=i, delay=0.2), route=route, timeout=60) for i in range(100))
    )
    assert [a.square for a in answers] == [i * i for i in range(100)]
    # Handled side by side in the other process, over one reply address here.
    assert max(a.peak for a in answers) > 50
    assert reply_address() == address


if __name__ == "__main__":
    # Run as a script, this file's folder leads sys.path, and its transport folders
    # (tests/redis, tests/kafka...) would shadow the client libraries of those names.
    here = CHILD.parent.resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    asyncio.run(serve(sys.argv[1], subscription(sys.argv[2], sys.argv[3:])))
