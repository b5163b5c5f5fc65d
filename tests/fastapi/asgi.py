"""Run an ASGI app's lifespan as a server does, and talk to it with httpx's ASGI transport.

httpx's ``ASGITransport`` (from ``httpx2``, the httpx line starlette's TestClient takes
now, or ``httpx``) sends requests only; :func:`serve_asgi` drives the lifespan
protocol around it (``lifespan.startup`` / ``lifespan.shutdown``) and gives each request a
copy of the lifespan state, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

try:  # httpx's current line (what starlette's TestClient wants), else httpx itself
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, *, timeout: float = 30.0) -> AsyncIterator[httpx.AsyncClient]:
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await asyncio.wait_for(from_app.get(), timeout)
    if started["type"] != "lifespan.startup.complete":
        task.cancel()
        raise AssertionError(f"the app's lifespan did not start: {started}")

    async def with_state(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "state": dict(state)}, receive, send)

    try:
        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await asyncio.wait_for(from_app.get(), timeout)
        await asyncio.wait_for(task, timeout)
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
