"""Conformance cases for request/reply (commands and queries over a transport).

Subclass :class:`RequestReplyConformance` in a pytest module with a ``harness`` fixture
returning a :class:`~dispytch.testing.TransportHarness` whose transport declares
``Capabilities(request_reply=True)``; a transport without it has every case skipped,
naming the capability. Needs ``pytest`` and ``pytest-asyncio``.

What is checked: a typed round trip; a handler's error reaches the caller as an error
reply, well before the timeout, and the request is not delivered again; a request whose
deadline passed while it waited is not run, is counted and is answered ``expired``; a
request nothing can receive fails at once; a request of a type no handler takes, sent
where a responder listens, is answered at once and raises ``NoHandlerError``; 100
concurrent requests to a slow handler are handled side by side over the one reply
address, not one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import BaseModel

from dispytch.cqrs import (
    CommandBase,
    NoHandlerError,
    NoRouteError,
    QueryBase,
    RemoteError,
    RequestExpiredError,
    RequestTimeoutError,
)
from dispytch.dispatcher import EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.testing.conformance import eventually as _eventually
from dispytch.testing.harness import TransportHarness


class Quote(BaseModel):
    """A typed reply."""

    sku: str
    cents: int
    tags: list[str]


class GetQuote(QueryBase[Quote]):
    """A query used by the cases."""

    __topic__ = "conformance.quotes"
    sku: str
    delay: float = 0.0


class Reserve(CommandBase[int]):
    """A command used by the cases."""

    __topic__ = "conformance.reserve"
    sku: str
    fail: str = ""


class GetStock(QueryBase[int]):
    """A query no handler of the cases takes (sent where ``GetQuote`` is served)."""

    __topic__ = "conformance.stock"
    sku: str


class OutOfStock(Exception):
    """An error type a caller registers."""


#: Deadlines of the slow cases: long, since a broken transport would otherwise
#: show up as a wait for the whole timeout (never asserted as a duration).
LONG = 60.0


class RequestReplyConformance:
    """Request/reply cases every transport with ``request_reply`` must pass."""

    timeout = 20.0

    @pytest.fixture(autouse=True)
    def _needs_request_reply(self, harness: TransportHarness) -> None:
        if harness.capabilities.missing("request_reply"):
            pytest.skip(f"{harness.name} lacks the request_reply capability")

    @contextlib.asynccontextmanager
    async def serving(
        self,
        harness: TransportHarness,
        name: str,
        register: Callable[[EventDispatcher, Any], None],
        **dispatcher_kw: Any,
    ) -> AsyncIterator[EventDispatcher]:
        group = f"g-{uuid.uuid4().hex[:8]}"
        await harness.prepare(name, group=group)
        dispatcher = EventDispatcher(harness.consumer(group=group), **dispatcher_kw)
        register(dispatcher, harness.subscription(name, group=group))
        await dispatcher.start()
        try:
            yield dispatcher
        finally:
            await dispatcher.stop(timeout=5)

    @contextlib.asynccontextmanager
    async def requester(self, harness: TransportHarness) -> AsyncIterator[EventEmitter]:
        emitter = EventEmitter(harness.producer())
        await emitter.start()
        try:
            yield emitter
        finally:
            await emitter.stop()

    async def test_typed_round_trip(self, harness: TransportHarness) -> None:
        name = harness.unique_name("rr")

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.query(GetQuote, subscription=sub)
            async def quote(query: GetQuote) -> Quote:
                return Quote(sku=query.sku, cents=1999, tags=["a", "ü"])

        async with self.serving(harness, name, register), self.requester(harness) as em:
            reply = await em.request(GetQuote(sku="x-1"), route=harness.route(name), timeout=LONG)
            again = await em.request(GetQuote(sku="x-2"), route=harness.route(name), timeout=LONG)
        assert isinstance(reply, Quote)
        assert reply == Quote(sku="x-1", cents=1999, tags=["a", "ü"])
        assert again.sku == "x-2"

    async def test_scalar_reply_and_handler_error(self, harness: TransportHarness) -> None:
        name = harness.unique_name("rr")
        calls: list[str] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.command(Reserve, subscription=sub)
            async def reserve(cmd: Reserve) -> int:
                calls.append(cmd.sku)
                if cmd.fail == "value":
                    raise ValueError(f"no such sku {cmd.sku}")
                if cmd.fail == "stock":
                    raise OutOfStock(cmd.sku)
                return len(cmd.sku)

        route = harness.route(name)
        async with self.serving(harness, name, register) as d, self.requester(harness) as em:
            assert await em.request(Reserve(sku="abc"), route=route, timeout=LONG) == 3
            # An error arrives as an error reply: with a 60 s timeout, a transport that
            # dropped it would raise RequestTimeoutError instead, a minute later.
            with pytest.raises(RemoteError) as info:
                await em.request(Reserve(sku="zz", fail="value"), route=route, timeout=LONG)
            with pytest.raises(OutOfStock, match="q9"):
                await em.request(
                    Reserve(sku="q9", fail="stock"), route=route, timeout=LONG, errors=[OutOfStock]
                )
            # Answered requests are acknowledged, failed ones too: none comes back (watched
            # for as long as this transport would take to hand an unsettled one back).
            await asyncio.sleep(harness.redelivery_window)
            failed = d.stats["requests_failed"]
        assert info.value.type == "ValueError"
        assert info.value.message == "no such sku zz"
        assert info.value.retryable is False
        assert calls == ["abc", "zz", "q9"]
        assert failed == 2

    async def test_expired_request_is_not_run(self, harness: TransportHarness) -> None:
        name = harness.unique_name("rr")
        gate = asyncio.Event()
        started: list[str] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.query(GetQuote, subscription=sub)
            async def quote(query: GetQuote) -> Quote:
                started.append(query.sku)
                if query.sku == "first":
                    await gate.wait()
                return Quote(sku=query.sku, cents=1, tags=[])

        route = harness.route(name)
        async with (
            self.serving(harness, name, register, max_in_flight=1) as d,
            self.requester(harness) as em,
        ):
            first = asyncio.ensure_future(
                em.request(GetQuote(sku="first"), route=route, timeout=LONG)
            )
            await _eventually(lambda: started == ["first"], self.timeout, "first request running")
            # The second waits behind the first (one at a time) until its deadline passes.
            with pytest.raises(RequestTimeoutError):
                await em.request(GetQuote(sku="late"), route=route, timeout=0.3)
            gate.set()
            assert (await first).sku == "first"
            await _eventually(
                lambda: d.stats["requests_expired"] == 1, self.timeout, "the expiry counted"
            )
            # The next request is served normally.
            assert (await em.request(GetQuote(sku="next"), route=route, timeout=LONG)).sku == (
                "next"
            )
        assert started == ["first", "next"]  # "late" never ran

    async def test_expired_reply_reaches_a_waiting_caller(self, harness: TransportHarness) -> None:
        name = harness.unique_name("rr")
        gate = asyncio.Event()

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.query(GetQuote, subscription=sub)
            async def quote(query: GetQuote) -> Quote:
                await gate.wait()
                return Quote(sku=query.sku, cents=1, tags=[])

        route = harness.route(name)
        async with (
            self.serving(harness, name, register, max_in_flight=1) as d,
            self.requester(harness) as em,
        ):
            blocker = asyncio.ensure_future(
                em.request(GetQuote(sku="b"), route=route, timeout=LONG)
            )
            # Sent with a deadline a second behind it, as a forwarded deadline may be
            # (clocks are the same host here): the responder answers "expired", not run.
            late = asyncio.ensure_future(
                em.request(
                    GetQuote(sku="x"),
                    route=route,
                    timeout=LONG,
                    headers={"dispytch-deadline": f"{time.time() - 1:.6f}"},
                )
            )
            await asyncio.sleep(0.05)
            gate.set()
            await blocker
            with pytest.raises(RequestExpiredError):
                await late
            assert d.stats["requests_expired"] == 1

    async def test_cancelling_the_caller_is_local(self, harness: TransportHarness) -> None:
        name = harness.unique_name("rr")
        gate = asyncio.Event()
        finished: list[str] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.query(GetQuote, subscription=sub)
            async def quote(query: GetQuote) -> Quote:
                if query.sku == "slow":
                    await gate.wait()
                finished.append(query.sku)
                return Quote(sku=query.sku, cents=0, tags=[])

        route = harness.route(name)
        async with self.serving(harness, name, register), self.requester(harness) as em:
            call = asyncio.ensure_future(
                em.request(GetQuote(sku="slow"), route=route, timeout=LONG)
            )
            await _eventually(
                lambda: em._requester is not None and em._requester.pending == 1, 5, "sent"
            )
            requester = em._requester
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert requester is not None and requester.pending == 0
            gate.set()  # the handler was not cancelled: it finishes; its reply is dropped
            await _eventually(lambda: finished == ["slow"], self.timeout, "the handler to finish")
            assert (await em.request(GetQuote(sku="after"), route=route, timeout=LONG)).sku == (
                "after"
            )

    async def test_nothing_routable_fails_fast(self, harness: TransportHarness) -> None:
        nowhere = harness.unique_name("rr-nowhere")
        async with self.requester(harness) as em:
            # With a 60 s timeout, only a fast failure makes this case end soon.
            with pytest.raises(NoRouteError):
                await em.request(GetQuote(sku="x"), route=harness.route(nowhere), timeout=LONG)
            assert em._requester is not None and em._requester.pending == 0

    async def test_request_no_handler_takes_fails_fast(self, harness: TransportHarness) -> None:
        """A request whose type no handler takes, on a topic a responder serves: answered
        ``no-handler`` at once (the caller raises ``NoHandlerError``, a ``NoRouteError``,
        as ``Bus.ask`` does in process), counted, and the responder serves on."""
        name = harness.unique_name("rr")

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.query(GetQuote, subscription=sub)
            async def quote(query: GetQuote) -> Quote:
                return Quote(sku=query.sku, cents=5, tags=[])

        route = harness.route(name)
        async with self.serving(harness, name, register) as d, self.requester(harness) as em:
            # With a 60 s timeout, only the responder's answer makes this end soon.
            with pytest.raises(NoHandlerError, match=r"'GetStock'(?s:.*)\(GetStock\)"):
                await em.request(GetStock(sku="x"), route=route, timeout=LONG)
            assert em._requester is not None and em._requester.pending == 0
            assert (await em.request(GetQuote(sku="y"), route=route, timeout=LONG)).sku == "y"
            assert d.running
        # Read once the dispatcher stopped: a reply may reach the caller before the
        # responder counted it.
        assert d.stats["requests_unhandled"] == 1
        assert d.stats["requests_answered"] == 1

    async def test_concurrent_requests_overlap(self, harness: TransportHarness) -> None:
        name = harness.unique_name("rr")
        running = 0
        peak = 0

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.query(GetQuote, subscription=sub)
            async def quote(query: GetQuote) -> Quote:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                try:
                    await asyncio.sleep(query.delay)
                finally:
                    running -= 1
                return Quote(sku=query.sku, cents=int(query.sku), tags=[])

        route = harness.route(name)
        async with (
            self.serving(harness, name, register, max_in_flight=128),
            self.requester(harness) as em,
        ):
            replies = await asyncio.gather(
                *(
                    em.request(GetQuote(sku=str(i), delay=0.2), route=route, timeout=LONG)
                    for i in range(100)
                )
            )
        assert [r.cents for r in replies] == list(range(100))
        assert peak > 50, f"at most {peak} of 100 requests were handled at once"
