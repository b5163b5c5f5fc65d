"""``Filter``: skip events that a predicate rejects."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from dispytch.event import Event
from dispytch.middleware.base import CallNext, HandlerContext, Outcome


class Filter:
    """Only let events through for which the predicate is true.

    A filtered message counts as done (acknowledged) with outcome ``filtered``.

    Example::

        Filter(lambda event: event.body.amount > 100)
        Filter(headers=lambda h: h.get("tenant") == "acme")

    Args:
        predicate: A function (sync or async) of the :class:`~dispytch.Event`.
        headers: A function (sync or async) of the message headers, checked first,
            without decoding the payload.
    """

    def __init__(
        self,
        predicate: Callable[[Event[Any]], Any] | None = None,
        *,
        headers: Callable[[Mapping[str, str]], Any] | None = None,
    ) -> None:
        if predicate is None and headers is None:
            raise ValueError("Filter needs a predicate, a headers= predicate, or both.")
        self.predicate = predicate
        self.headers = headers

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any:
        if self.headers is not None:
            verdict = self.headers(ctx.message.headers)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                ctx.outcome = Outcome.FILTERED
                return None
        if self.predicate is not None:
            verdict = self.predicate(ctx.event)  # type: ignore[arg-type]
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                ctx.outcome = Outcome.FILTERED
                return None
        return await call_next(ctx)
