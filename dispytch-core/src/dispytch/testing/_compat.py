"""The one place the testing kit reaches into asyncio's private parts.

The virtual clock needs the selector a running selector event loop waits on (asyncio
exposes it only to the loop's constructor). Each access has a test in
``tests/kit/test_compat.py`` that fails loudly if a Python release removes it.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


def loop_selector(loop: asyncio.AbstractEventLoop) -> Any:
    """The selector ``loop`` blocks on between callbacks.

    Raises:
        RuntimeError: The loop is not a selector event loop (uvloop, the Windows proactor).
    """
    selector = getattr(loop, "_selector", None)
    if not isinstance(selector, selectors.BaseSelector) and not hasattr(selector, "select"):
        raise RuntimeError(
            f"The virtual clock needs asyncio's selector event loop; this loop is a "
            f"{type(loop).__module__}.{type(loop).__qualname__}.\n"
            "Run the test on the default asyncio loop, or pass clock=False to the kit."
        )
    return selector


def set_loop_selector(loop: asyncio.AbstractEventLoop, selector: Any) -> None:
    """Put ``selector`` where ``loop`` looks for its selector."""
    loop._selector = selector  # type: ignore[attr-defined]
