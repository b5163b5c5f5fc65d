"""Durable functions: background jobs and workflows that survive crashes.

``@durable.function`` on a sync or async function; ``await fn.dispatch(...)`` runs it in
the background on a worker (``dispytch run module:durable``); every awaited durable
function inside an async one is a step, journalled and never redone once finished. The
work travels over your own at-least-once transport, the journal lives in your own store
(SQLite built in). See ``docs/durable.md``.

The module-level :func:`function` and :func:`run` use a default :class:`Durable`, configured
from ``DISPYTCH_DURABLE_TRANSPORT`` and ``DISPYTCH_DURABLE_STORE`` (default: the in-process
memory broker and ``.dispytch/journal.sqlite3``), so a script runs with no server::

    import dispytch.durable as durable

    @durable.function
    def greet(msg: str) -> str:
        return f"Hello, {msg}!"

    print(durable.run(greet("World")))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from dispytch.durable.codec import FunctionCodec
from dispytch.durable.engine import (
    Call,
    Durable,
    DurableFunction,
    RunHandle,
    any_success,
    default_transient,
    gather,
    race,
    sleep,
)
from dispytch.durable.errors import (
    AnyFailedError,
    DurableError,
    IdempotencyConflictError,
    LeaseLostError,
    NonDeterminismError,
    RunCancelledError,
    RunFailedError,
    UnencodableError,
)
from dispytch.durable.store import (
    FINAL_STATUSES,
    RETRYABLE_STATUSES,
    STATUSES,
    ChildOutcome,
    CompletionFeed,
    Journal,
    JournalStore,
    NewRun,
    RunRecord,
    SQLiteJournalStore,
    StepRecord,
)
from dispytch.durable.stores import journal_store_for_url

any = any_success  # dispatch-py's name; shadows the builtin only here

__all__ = [
    "FINAL_STATUSES",
    "RETRYABLE_STATUSES",
    "STATUSES",
    "AnyFailedError",
    "Call",
    "ChildOutcome",
    "CompletionFeed",
    "Durable",
    "DurableError",
    "DurableFunction",
    "FunctionCodec",
    "IdempotencyConflictError",
    "Journal",
    "JournalStore",
    "LeaseLostError",
    "NewRun",
    "NonDeterminismError",
    "RunCancelledError",
    "RunFailedError",
    "RunHandle",
    "RunRecord",
    "SQLiteJournalStore",
    "StepRecord",
    "UnencodableError",
    "default",
    "default_transient",
    "function",
    "any",
    "any_success",
    "gather",
    "journal_store_for_url",
    "race",
    "run",
    "sleep",
]

P = ParamSpec("P")
R = TypeVar("R")

_default: Durable | None = None


def default() -> Durable:
    """The module-level Durable (built from the environment on first use)."""
    global _default
    if _default is None:
        _default = Durable()
    return _default


@overload
def function(func: Callable[P, Coroutine[Any, Any, R]]) -> DurableFunction[P, R]: ...


@overload
def function(func: Callable[P, R]) -> DurableFunction[P, R]: ...


@overload
def function(
    *, name: str | None = None, max_attempts: int | None = None, concurrency: int | None = None
) -> Callable[[Callable[..., Any]], DurableFunction[..., Any]]: ...


def function(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    max_attempts: int | None = None,
    concurrency: int | None = None,
) -> Any:
    """Register a function on the default Durable (see :meth:`Durable.function`)."""
    register = default().function(name=name, max_attempts=max_attempts, concurrency=concurrency)
    return register if func is None else register(func)


def run(call: Call[R], *, timeout: float | None = None) -> R:
    """Run ``call`` on the default Durable until done, from sync code (``asyncio.run``).

    A worker runs in this process meanwhile. In async code use ``await
    dispytch.durable.default().run(call)``.
    """
    return asyncio.run(default().run(call, timeout=timeout))
