"""Middleware: the onion around handlers, and the built-in layers."""

from __future__ import annotations

from dispytch.middleware.base import (
    CallNext,
    HandlerContext,
    Middleware,
    MiddlewareLike,
    Outcome,
    compose,
)
from dispytch.middleware.dead_letter import DeadLetter
from dispytch.middleware.filter import Filter
from dispytch.middleware.lock import AsyncLock
from dispytch.middleware.observe import Observe
from dispytch.middleware.retry import Retry
from dispytch.middleware.timeout import HandlerTimeoutError, Timeout

__all__ = [
    "AsyncLock",
    "CallNext",
    "DeadLetter",
    "Filter",
    "HandlerContext",
    "HandlerTimeoutError",
    "Middleware",
    "MiddlewareLike",
    "Observe",
    "Outcome",
    "Retry",
    "Timeout",
    "compose",
]
