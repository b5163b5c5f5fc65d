"""The virtual clock: timers fire without waiting, in order, and time never goes back."""

from __future__ import annotations

import asyncio
import selectors
import time

import pytest
from dispytch.testing import VirtualClock
from dispytch.testing._compat import loop_selector


async def test_compat_loop_selector_is_there() -> None:
    # Fails loudly if a Python release renames the selector of the selector event loop.
    selector = loop_selector(asyncio.get_running_loop())
    assert isinstance(selector, selectors.BaseSelector)


async def test_long_sleep_returns_without_waiting() -> None:
    real = time.monotonic()
    async with VirtualClock() as clock:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(3600)
        assert loop.time() - before >= 3600
        assert clock.jumped >= 3600 - 1
    assert time.monotonic() - real < 3600  # nobody waited an hour


async def test_timers_fire_in_order() -> None:
    order: list[int] = []

    async def after(seconds: float, tag: int) -> None:
        await asyncio.sleep(seconds)
        order.append(tag)

    async with VirtualClock():
        await asyncio.gather(after(30, 3), after(10, 1), after(20, 2), after(20.5, 4))
    assert order == [1, 2, 4, 3]


async def test_asyncio_timeout_fires_in_virtual_time() -> None:
    async with VirtualClock():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(120):
                await asyncio.Event().wait()


async def test_time_does_not_go_back_after_uninstall() -> None:
    loop = asyncio.get_running_loop()
    async with VirtualClock():
        await asyncio.sleep(100)
        inside = loop.time()
    assert loop.time() >= inside
    async with VirtualClock() as second:  # a second clock on the same loop continues
        assert second.time() >= inside


async def test_without_autojump_time_moves_only_by_advance() -> None:
    async with VirtualClock(autojump=False) as clock:
        done = asyncio.ensure_future(asyncio.sleep(50))
        await asyncio.sleep(0)
        assert not done.done()
        clock.advance(50)
        await asyncio.wait_for(done, timeout=60)
        with pytest.raises(ValueError, match="forward"):
            clock.advance(-1)


async def test_one_clock_per_loop() -> None:
    async with VirtualClock() as clock:
        with pytest.raises(RuntimeError, match="installed already"):
            clock.install()
        with pytest.raises(RuntimeError, match="Another VirtualClock"):
            VirtualClock().install()


async def test_real_io_is_still_seen() -> None:
    # A socket that becomes readable is handled: the clock checks I/O before jumping.
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.readline())
        await w.drain()
        w.close()
        await w.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    async with server, VirtualClock():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"ping\n")
        await writer.drain()
        assert await reader.readline() == b"ping\n"
        writer.close()
        await writer.wait_closed()
