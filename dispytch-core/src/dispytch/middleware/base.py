"""The middleware contract, re-exported from :mod:`dispytch.context`, where it lives.

Write a middleware as ``async def mw(ctx: HandlerContext, call_next) -> Any``; import
these names from ``dispytch`` or from here, as before. Names in a stack (``"retry"``) are
resolved by :func:`dispytch.router.resolve_middleware`.
"""

from __future__ import annotations

from dispytch.context import (
    CallNext,
    HandlerContext,
    HandlerInfo,
    MessageState,
    Middleware,
    MiddlewareLike,
    Outcome,
    compose,
)

__all__ = [
    "CallNext",
    "HandlerContext",
    "HandlerInfo",
    "MessageState",
    "Middleware",
    "MiddlewareLike",
    "Outcome",
    "compose",
]
