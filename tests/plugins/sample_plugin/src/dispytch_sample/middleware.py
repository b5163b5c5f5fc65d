"""``sample-audit``: append one line per handling to a file (route, handler, outcome)."""

from __future__ import annotations

import os
from typing import Any

from dispytch.middleware import CallNext, HandlerContext


class Audit:
    """Write ``<outcome>\\t<route>\\t<handler>\\t<attempt>`` for every handling.

    Runs only where a stack names it (``middlewares=[("sample-audit", {"path": ...})]``).

    Args:
        path: The audit file; lines are appended.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def _write(self, outcome: str, ctx: HandlerContext) -> None:
        line = f"{outcome}\t{ctx.route}\t{ctx.handler.name}\t{ctx.message.attempt}\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    async def __call__(self, ctx: HandlerContext, call_next: CallNext) -> Any:
        try:
            result = await call_next(ctx)
        except Exception as exc:
            self._write(f"error:{type(exc).__name__}", ctx)
            raise
        self._write("ok", ctx)
        return result
