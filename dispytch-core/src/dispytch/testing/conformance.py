"""The transport conformance suite: the same cases against every transport.

Use it from a pytest module (needs ``pytest-asyncio`` in auto mode)::

    import pytest
    from dispytch.testing.conformance import TransportConformance

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        async def harness(self):
            h = MyHarness()
            yield h
            await h.cleanup()

Cases that need redelivery are skipped when ``harness.at_least_once`` is false, key cases
when ``supports_keys`` is false, pattern cases when ``supports_patterns`` is false.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from dispytch.dispatcher import EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.errors import RequeueMessage
from dispytch.event import Event, EventBase
from dispytch.middleware import DeadLetter, Retry
from dispytch.testing.harness import TransportHarness
from dispytch.transport import (
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_ROUTE,
    Message,
    OutgoingMessage,
)


class Address(BaseModel):
    street: str
    city: str


class Placed(EventBase):
    """An event type used by the cases."""

    __event_type__ = "order_placed"
    order_id: int
    user: str
    amount: float
    address: Address
    tags: list[str]
    at: datetime


class Cancelled(EventBase):
    """A second event type sharing a route with :class:`Placed`."""

    __event_type__ = "order_cancelled"
    order_id: int
    reason: str


def placed(i: int, user: str = "ann") -> Placed:
    """A valid :class:`Placed` event."""
    return Placed(
        order_id=i,
        user=user,
        amount=12.5 + i,
        address=Address(street=f"{i} Main St", city="Springfield"),
        tags=["web", f"t{i % 3}"],
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``check()`` is true, failing with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            pytest.fail(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(0.01)


class _Failing:
    """A producer whose sends always fail (the dead-letter target is down)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, message: OutgoingMessage) -> None:
        raise ConnectionError("dead-letter broker unreachable")

    async def send_batch(self, messages: Any) -> None:
        raise ConnectionError("dead-letter broker unreachable")


class TransportConformance:
    """Cases every transport must pass. Subclass and provide a ``harness`` fixture."""

    timeout = 20.0

    # -- helpers ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(
        self,
        harness: TransportHarness,
        name: str,
        register: Callable[[EventDispatcher, Any], None],
        *,
        group: str | None = None,
        subscription_name: str | None = None,
        **dispatcher_kw: Any,
    ) -> AsyncIterator[EventDispatcher]:
        group = group or f"g-{uuid.uuid4().hex[:8]}"
        await harness.prepare(name, group=group)
        dispatcher = EventDispatcher(harness.consumer(group=group), **dispatcher_kw)
        register(dispatcher, harness.subscription(subscription_name or name, group=group))
        await dispatcher.start()
        try:
            yield dispatcher
        finally:
            await dispatcher.stop(timeout=5)

    @contextlib.asynccontextmanager
    async def emitter(self, harness: TransportHarness) -> AsyncIterator[EventEmitter]:
        emitter = EventEmitter(harness.producer())
        await emitter.start()
        try:
            yield emitter
        finally:
            await emitter.stop()

    # -- cases --------------------------------------------------------------------------
    async def test_round_trip(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        got: list[Event[Placed]] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                got.append(event)

        async with self.running(harness, name, register), self.emitter(harness) as em:
            for i in range(5):
                await em.emit(placed(i), route=harness.route(name))
            await eventually(lambda: len(got) >= 5, self.timeout, "5 events handled")
        assert sorted(e.body.order_id for e in got) == list(range(5))
        first = next(e for e in got if e.body.order_id == 0)
        assert first.body == placed(0)
        assert first.type == "order_placed"
        assert first.route == name
        assert len(first.id) == 32
        assert first.attempt >= 1

    async def test_batch_emit(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        got: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                got.append(event.body.order_id)

        async with self.running(harness, name, register), self.emitter(harness) as em:
            await em.producer.send_batch(
                [em.build(placed(i), route=harness.route(name)) for i in range(50)]
            )
            await eventually(lambda: len(set(got)) >= 50, self.timeout, "50 events handled")
        assert sorted(set(got)) == list(range(50))

    async def test_headers_and_key_preserved(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        got: list[Message] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed], message: Message) -> None:
                got.append(message)

        async with self.running(harness, name, register), self.emitter(harness) as em:
            await em.emit(
                placed(1),
                route=harness.route(name),
                headers={"tenant": "acme", "trace.id": "abc-123"},
                key="user-7",
            )
            await eventually(lambda: bool(got), self.timeout, "event handled")
        msg = got[0]
        assert msg.headers["tenant"] == "acme"
        assert msg.headers["trace.id"] == "abc-123"
        assert msg.headers["dispytch-event-type"] == "order_placed"
        assert msg.headers["dispytch-content-type"] == "application/json"
        if harness.supports_keys:
            assert msg.key == b"user-7"

    async def test_event_type_dispatch(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        placed_ids: list[int] = []
        cancelled_ids: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                placed_ids.append(event.body.order_id)

            @d.handler(sub)
            async def on_cancelled(event: Event[Cancelled]) -> None:
                cancelled_ids.append(event.body.order_id)

        async with self.running(harness, name, register), self.emitter(harness) as em:
            route = harness.route(name)
            await em.emit(placed(1), route=route)
            await em.emit(Cancelled(order_id=2, reason="changed mind"), route=route)
            await em.emit(placed(3), route=route)
            await eventually(
                lambda: len(placed_ids) + len(cancelled_ids) >= 3, self.timeout, "3 events"
            )
        assert sorted(placed_ids) == [1, 3]
        assert cancelled_ids == [2]

    async def test_invalid_payload_does_not_stop_the_loop(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        got: list[int] = []
        dlq_seen: list[Message] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                got.append(event.body.order_id)

        async with self.running(harness, name, register) as dispatcher:
            async with self.emitter(harness) as em:
                route = harness.route(name)
                bad = em.build(placed(0), route=route)
                bad.payload = b'{"order_id": "not a number"'
                await em.producer.send(bad)
                await em.emit(placed(7), route=route)
                await eventually(lambda: 7 in got, self.timeout, "valid event after bad one")
                await eventually(
                    lambda: dispatcher.stats["invalid_payload"] >= 1,
                    self.timeout,
                    "invalid payload counted",
                )
            assert dispatcher.running
        assert got == [7]
        assert not dlq_seen

    async def test_handler_exception_is_not_acknowledged_as_success(
        self, harness: TransportHarness
    ) -> None:
        name = harness.unique_name()
        calls: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                calls.append(event.body.order_id)
                raise RuntimeError("handler bug")

        async with self.running(harness, name, register) as dispatcher:
            async with self.emitter(harness) as em:
                await em.emit(placed(1), route=harness.route(name))
                await eventually(
                    lambda: dispatcher.stats["rejected"] >= 1, self.timeout, "rejection"
                )
            assert dispatcher.stats["handled"] == 0
            assert dispatcher.running

    async def test_retry_then_success(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        attempts: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub, middlewares=[Retry(attempts=3, delay=0.001, jitter=0)])
            async def on_placed(event: Event[Placed]) -> None:
                attempts.append(1)
                if len(attempts) < 3:
                    raise ConnectionError("flaky")

        async with (
            self.running(harness, name, register) as dispatcher,
            self.emitter(harness) as em,
        ):
            await em.emit(placed(1), route=harness.route(name))
            await eventually(lambda: dispatcher.stats["handled"] >= 1, self.timeout, "handled")
        assert len(attempts) == 3

    async def test_redelivery_of_unacknowledged(self, harness: TransportHarness) -> None:
        if not harness.at_least_once:
            pytest.skip(f"{harness.name} is at-most-once: nothing is redelivered")
        name = harness.unique_name()
        deliveries: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                deliveries.append(event.attempt)
                if len(deliveries) == 1:
                    raise RequeueMessage("not yet")

        async with self.running(harness, name, register), self.emitter(harness) as em:
            await em.emit(placed(1), route=harness.route(name))
            await eventually(
                lambda: len(deliveries) >= 2,
                harness.redelivery_timeout + self.timeout,
                "redelivery",
            )
        assert len(deliveries) >= 2

    async def test_unsettled_work_goes_to_the_next_consumer(
        self, harness: TransportHarness
    ) -> None:
        """A consumer stopped while a handler hangs hands the message back; another
        consumer of the same group gets it."""
        if not harness.at_least_once:
            pytest.skip(f"{harness.name} is at-most-once: nothing is redelivered")
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        started = asyncio.Event()
        second: list[int] = []

        def hang(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                started.set()
                await asyncio.sleep(3600)

        def finish(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                second.append(event.body.order_id)

        await harness.prepare(name, group=group)
        first = EventDispatcher(harness.consumer(group=group))
        hang(first, harness.subscription(name, group=group))
        await first.start()
        try:
            async with self.emitter(harness) as em:
                await em.emit(placed(9), route=harness.route(name))
            await asyncio.wait_for(started.wait(), self.timeout)
        finally:
            await first.stop(timeout=0.2)
        async with self.running(harness, name, finish, group=group):
            await eventually(
                lambda: 9 in second,
                harness.redelivery_timeout + self.timeout,
                "redelivery to the next consumer",
            )

    async def test_graceful_stop_finishes_in_flight_work(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        started = asyncio.Event()
        finished: list[int] = []
        later: list[int] = []

        def slow(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                started.set()
                await asyncio.sleep(0.3)
                finished.append(event.body.order_id)

        await harness.prepare(name, group=group)
        dispatcher = EventDispatcher(harness.consumer(group=group))
        slow(dispatcher, harness.subscription(name, group=group))
        await dispatcher.start()
        async with self.emitter(harness) as em:
            await em.emit(placed(5), route=harness.route(name))
            await asyncio.wait_for(started.wait(), self.timeout)
            await dispatcher.stop(timeout=10)
        assert finished == [5]
        assert dispatcher.stats["handled"] == 1
        if harness.at_least_once:
            # It was acknowledged: the next consumer of the group does not get it again.
            def again(d: EventDispatcher, sub: Any) -> None:
                @d.handler(sub)
                async def on_placed(event: Event[Placed]) -> None:
                    later.append(event.body.order_id)

            async with self.running(harness, name, again, group=group), self.emitter(harness) as em:
                await em.emit(placed(6), route=harness.route(name))
                await eventually(lambda: 6 in later, self.timeout, "next event")
            assert later == [6]

    async def test_dead_letter(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        dlq_name = harness.unique_name("dlq")
        dead: list[Message] = []

        async with self.emitter(harness) as em:

            def register(d: EventDispatcher, sub: Any) -> None:
                @d.handler(
                    sub,
                    middlewares=[
                        DeadLetter(em, route=harness.route(dlq_name)),
                        Retry(attempts=2, delay=0.001),
                    ],
                )
                async def on_placed(event: Event[Placed]) -> None:
                    raise ValueError("cannot process order")

            def watch(d: EventDispatcher, sub: Any) -> None:
                @d.handler(sub)
                async def on_dead(message: Message) -> None:
                    dead.append(message)

            async with (
                self.running(harness, dlq_name, watch),
                self.running(harness, name, register) as dispatcher,
            ):
                original = em.build(placed(4), route=harness.route(name))
                await em.producer.send(original)
                await eventually(lambda: bool(dead), self.timeout, "dead-lettered copy")
                await eventually(
                    lambda: dispatcher.stats["dead_lettered"] >= 1, self.timeout, "counted"
                )
        msg = dead[0]
        assert msg.payload == original.payload
        assert msg.headers["dispytch-event-id"] == original.headers["dispytch-event-id"]
        assert msg.headers[HEADER_ERROR_TYPE] == "builtins.ValueError"
        assert msg.headers[HEADER_ERROR_MESSAGE] == "cannot process order"
        assert msg.headers["dispytch-error-attempts"] == "2"
        assert msg.headers[HEADER_ORIGINAL_ROUTE] == name

    async def test_dead_letter_publish_failure_keeps_the_original(
        self, harness: TransportHarness
    ) -> None:
        if not harness.at_least_once:
            pytest.skip(f"{harness.name} is at-most-once: nothing is redelivered")
        name = harness.unique_name()
        seen: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub, middlewares=[DeadLetter(_Failing())])
            async def on_placed(event: Event[Placed]) -> None:
                seen.append(event.attempt)
                raise ValueError("always fails")

        async with self.running(harness, name, register) as dispatcher:
            async with self.emitter(harness) as em:
                await em.emit(placed(1), route=harness.route(name))
                await eventually(
                    lambda: len(seen) >= 2,
                    harness.redelivery_timeout + self.timeout,
                    "the original delivered again",
                )
            assert dispatcher.stats["dead_lettered"] == 0
            assert dispatcher.stats["requeued"] >= 1

    async def test_route_params_from_pattern(self, harness: TransportHarness) -> None:
        if not harness.supports_patterns:
            pytest.skip(f"{harness.name} does not support subscription patterns")
        name = harness.unique_name()
        got: list[tuple[int, int]] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed], user_id: int) -> None:
                got.append((user_id, event.body.order_id))

        async with (
            self.running(harness, f"{name}.42", register, subscription_name=f"{name}.{{user_id}}"),
            self.emitter(harness) as em,
        ):
            await harness.prepare(f"{name}.42", group="unused")
            await em.emit(placed(1), route=harness.route(f"{name}.42"))
            await eventually(lambda: bool(got), self.timeout, "pattern-routed event")
        assert got == [(42, 1)]
