"""The transport conformance suite: every guarantee the README writes, checked the same way
against every transport and both ways a user builds a client.

Running it against your own transport
-------------------------------------
Install the test dependencies with core's ``testing`` extra::

    pip install 'dispytch-core[testing]'     # pytest, pytest-asyncio, hypothesis

Implement :class:`dispytch.testing.TransportHarness` for your transport (how to name and
create a topic, build a producer and a consumer, publish raw bytes with your broker's plain
client, find rejected messages; see its docstring for every method), then subclass
:class:`TransportConformance` in a pytest module and give it a ``harness`` fixture, once
per construction mode::

    import pytest
    from dispytch.testing.conformance import TransportConformance

    class TestMyTransport(TransportConformance):
        @pytest.fixture(params=["client", "url"])
        async def harness(self, request):
            h = MyHarness(mode=request.param)
            yield h
            await h.cleanup()

Run it with pytest-asyncio in auto mode (``asyncio_mode = "auto"`` in your pytest
configuration, or ``pytest -o asyncio_mode=auto``)::

    python -m pytest tests/test_my_conformance.py -q

Cases a transport cannot offer are skipped by what the harness declares
(``harness.capabilities``, ``at_least_once``, ``supports_keys``, ``supports_patterns``) or
by a harness hook it does not provide (``publish_raw``, ``unconfirmed_producer``...), and
each skip names what is missing: nothing is skipped silently. Class attributes below
(``timeout``, ``hostile_examples``, ``manual_bound``...) size the cases for slower brokers.
Cases that need a core feature not in the installed core are reported as expected
failures naming that feature.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from dispytch.context import MiddlewareLike
from dispytch.dispatcher import AckPolicy, EventDispatcher
from dispytch.emitter import EventEmitter
from dispytch.errors import EmitTimeoutError, NotStartedError, RequeueMessage
from dispytch.event import Event, EventBase
from dispytch.middleware import DeadLetter, Retry
from dispytch.testing.events import Address, Cancelled, Placed, placed
from dispytch.testing.harness import Outage, TransportHarness
from dispytch.testing.hostile import RawInput, expected_event, hostile_inputs, named_inputs
from dispytch.testing.probe import ConsumerProbe, probe
from dispytch.transport import (
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_ROUTE,
    Acknowledger,
    Consumer,
    Message,
    OutgoingMessage,
    capabilities_of,
)

__all__ = ["Address", "Cancelled", "Placed", "TransportConformance", "eventually", "placed"]

_Register = Callable[[EventDispatcher, Any], None]


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``check()`` is true, failing with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            pytest.fail(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(0.01)


async def _eventually_async(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str
) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() > end:
            pytest.fail(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(0.05)


class _Failing:
    """A producer whose sends always fail (the dead-letter target is down)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, message: OutgoingMessage) -> None:
        raise ConnectionError("dead-letter broker unreachable")

    async def send_batch(self, messages: Any) -> None:
        raise ConnectionError("dead-letter broker unreachable")


def _dispatcher_takes(argument: str) -> bool:
    return argument in inspect.signature(EventDispatcher).parameters


def _raw_headers(message: OutgoingMessage) -> dict[str, bytes]:
    return {k: v.encode() for k, v in message.headers.items()}


def collect(into: list[int], *, pause: float = 0.0) -> _Register:
    """What to register for a handler of :class:`Placed` events that appends each one's
    ``order_id`` to ``into`` (after sleeping ``pause`` seconds, for a slow handler)."""

    def register(d: EventDispatcher, sub: Any) -> None:
        @d.handler(sub)
        async def on_placed(event: Event[Placed]) -> None:
            if pause:
                await asyncio.sleep(pause)
            into.append(event.body.order_id)

    return register


def failing(
    record: Callable[[Event[Placed]], object],
    error: type[Exception],
    text: str,
    middlewares: Sequence[MiddlewareLike] = (),
) -> _Register:
    """What to register for a handler of :class:`Placed` events that calls
    ``record(event)`` and then raises ``error(text)``, every time, under ``middlewares``."""

    def register(d: EventDispatcher, sub: Any) -> None:
        @d.handler(sub, middlewares=middlewares)
        async def on_placed(event: Event[Placed]) -> None:
            record(event)
            raise error(text)

    return register


def collect_messages(into: list[Message]) -> _Register:
    """What to register for a handler of every message on the subscription, whatever it
    holds, that appends it to ``into`` (dead-letter routes, rejected routes)."""

    def register(d: EventDispatcher, sub: Any) -> None:
        @d.handler(sub)
        async def on_any(message: Message) -> None:
            into.append(message)

    return register


class TransportConformance:
    """Cases every transport must pass. Subclass and provide a ``harness`` fixture.

    Attributes:
        timeout: How long a case waits for something that should happen soon.
        hostile_examples: How many hypothesis-drawn inputs the hostile-input case
            publishes (plus the named ones and the valid events between them).
        large_payload: Size of the named large payload.
        manual_bound: ``max_unsettled`` of the manual-acknowledgement case; it publishes
            three times as many messages and never settles them in its handler.
        restart_events: Events of the stop-and-restart case.
        slow_seconds: How long a "slow" handler takes per event.
        requeue_delay: The delay of the delayed-requeue cases (the direct one waits
            longer than ``harness.lease_seconds`` where there is one).
        stop_margin: How long after its ``timeout`` a ``stop`` may still return (a
            generous bound: the cases check that a stop with a hanging handler ends).
    """

    timeout = 20.0
    hostile_examples = 60
    large_payload = 1_000_000
    manual_bound = 8
    restart_events = 40
    slow_seconds = 0.01
    requeue_delay = 1.0
    stop_margin = 5.0

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def require_redelivery(harness: TransportHarness) -> None:
        """Skip unless the transport redelivers what was not acknowledged."""
        if harness.capabilities.delivery != "at-least-once" or not harness.at_least_once:
            pytest.skip(
                f"{harness.name} declares delivery at-most-once "
                "(capabilities.delivery / at_least_once): nothing is redelivered"
            )

    @staticmethod
    def require(harness: TransportHarness, *capabilities: str) -> None:
        """Skip unless the harness declares every capability named."""
        missing = harness.capabilities.missing(*capabilities)
        if missing:
            pytest.skip(f"{harness.name} does not declare capabilities.{', '.join(missing)}")

    @contextlib.asynccontextmanager
    async def running(
        self,
        harness: TransportHarness,
        name: str | Sequence[str],
        register: _Register,
        *,
        group: str | None = None,
        subscription_name: str | None = None,
        consumer: Consumer | None = None,
        stop_timeout: float = 5,
        **dispatcher_kw: Any,
    ) -> AsyncIterator[EventDispatcher]:
        """A started dispatcher with ``register(dispatcher, subscription)`` called for each
        name in ``name``, over ``consumer`` (from :meth:`probed`, names prepared) or, by
        default, a new consumer of ``group`` after every name was prepared for it."""
        names = [name] if isinstance(name, str) else list(dict.fromkeys(name))
        group = group or f"g-{uuid.uuid4().hex[:8]}"
        if consumer is None:
            for n in names:
                await harness.prepare(n, group=group)
            consumer = harness.consumer(group=group)
        dispatcher = EventDispatcher(consumer, **dispatcher_kw)
        for n in names if subscription_name is None else [subscription_name]:
            register(dispatcher, harness.subscription(n, group=group))
        await dispatcher.start()
        try:
            yield dispatcher
        finally:
            await dispatcher.stop(timeout=stop_timeout)

    async def probed(
        self,
        harness: TransportHarness,
        names: Sequence[str],
        group: str,
        extra: Sequence[str] = (),
    ) -> ConsumerProbe:
        """A new consumer of ``group`` in a counting probe, once every name (and each of
        ``extra``, subscribed on top of what the dispatcher subscribes) was prepared."""
        for n in dict.fromkeys([*names, *extra]):
            await harness.prepare(n, group=group)
        subs = [harness.subscription(n, group=group) for n in extra]
        return probe(harness.consumer(group=group), extra=subs)

    @contextlib.asynccontextmanager
    async def emitter(self, harness: TransportHarness) -> AsyncIterator[EventEmitter]:
        emitter = EventEmitter(harness.producer())
        await emitter.start()
        try:
            yield emitter
        finally:
            await emitter.stop()

    async def stops_within(self, dispatcher: EventDispatcher, timeout: float) -> None:
        """``dispatcher.stop(timeout=timeout)``, failing the case unless it returns within
        ``timeout`` plus :attr:`stop_margin` (the stop deadline is a deadline)."""
        try:
            async with asyncio.timeout(timeout + self.stop_margin):
                await dispatcher.stop(timeout=timeout)
        except TimeoutError:
            pytest.fail(
                f"stop(timeout={timeout}) still running after {timeout + self.stop_margin}s"
            )

    async def publish_raw(self, harness: TransportHarness, name: str, raw: RawInput) -> None:
        """``harness.publish_raw``, skipping the case when the harness has none."""
        try:
            await harness.publish_raw(name, raw.payload, raw.headers)
        except NotImplementedError:
            pytest.skip(f"the {harness.name} harness does not implement publish_raw()")

    async def assert_ended_rejected(
        self, harness: TransportHarness, name: str, group: str, payloads: Sequence[bytes]
    ) -> None:
        """Check that messages the failure policy rejected ended where the transport's
        docs say: in ``harness.rejected(...)``, or, where rejected messages are dropped by
        design, not delivered again to a new consumer of the group.

        Call it once the dispatcher that rejected them has stopped.
        """
        expected = Counter(payloads)
        first = await harness.rejected(name, group=group)
        if first is not None:

            async def arrived() -> bool:
                found = Counter(await harness.rejected(name, group=group) or [])
                return all(found[p] >= n for p, n in expected.items())

            await _eventually_async(
                arrived, self.timeout, f"{len(payloads)} rejected message(s) where rejects go"
            )
            found = Counter(await harness.rejected(name, group=group) or [])
            if harness.may_duplicate:
                assert all(found[p] >= n for p, n in expected.items())
            else:
                assert found == expected, (
                    f"rejected on {name!r}: {sum(found.values())} message(s), expected "
                    f"{sum(expected.values())}"
                )
            return
        # Dropped by design: a new consumer of the group must not get them again. A marker
        # published afterwards shows the new consumer is receiving; then it is watched for
        # the transport's redelivery window.
        seen: list[Message] = []
        async with (
            self.running(harness, name, collect_messages(seen), group=group),
            self.emitter(harness) as em,
        ):
            marker = em.build(placed(999_999, user="marker"), route=harness.route(name))
            await em.producer.send(marker)
            await eventually(
                lambda: any(m.payload == marker.payload for m in seen),
                self.timeout,
                "a marker on the rejected route",
            )
            await asyncio.sleep(harness.redelivery_window)
        again = [m.payload for m in seen if m.payload in expected]
        assert not again, f"{len(again)} rejected message(s) were delivered again"

    async def bad_then_valid(
        self,
        harness: TransportHarness,
        name: str,
        group: str,
        bad: Callable[[EventEmitter], OutgoingMessage],
        counter: str,
        *,
        consumer: Consumer | None = None,
    ) -> tuple[EventDispatcher, OutgoingMessage]:
        """Send the message ``bad(emitter)`` to a dispatcher handling :class:`Placed` on
        ``name``, wait until ``dispatcher.stats[counter]`` counts it, then emit a valid
        event: it must be handled, alone, and the dispatcher still be running. Returns the
        (stopped) dispatcher and the bad message."""
        got: list[int] = []
        async with (
            self.running(harness, name, collect(got), group=group, consumer=consumer) as d,
            self.emitter(harness) as em,
        ):
            message = bad(em)
            await em.producer.send(message)
            await eventually(lambda: d.stats[counter] >= 1, self.timeout, f"{counter} counted")
            await em.emit(placed(7), route=harness.route(name))
            await eventually(lambda: 7 in got, self.timeout, "a valid event after it")
            assert d.running
        assert got == [7]
        return d, message

    @staticmethod
    def assert_logged(
        caplog: pytest.LogCaptureFixture, level: int, route: str, size: int, what: str
    ) -> None:
        """A record at ``level`` or above names ``route`` and the payload size."""
        size_given = re.compile(rf"(?<![\w.]){size}(?![\w.])")
        for record in caplog.records:
            text = record.getMessage()
            named = route in text and size_given.search(text.replace(route, ""))
            if record.levelno >= level and named:
                return
        shown = [f"{r.levelname}: {r.getMessage()[:200]}" for r in caplog.records]
        pytest.fail(
            f"no {logging.getLevelName(level)} record names route {route!r} and its size "
            f"{size} for {what}; records: {shown}"
        )

    # -- round trip and emitting ---------------------------------------------------------
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
        assert [e.attempt for e in got] == [1] * 5

    async def test_batch_emit(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        got: list[int] = []

        async with self.running(harness, name, collect(got)), self.emitter(harness) as em:
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

    async def test_emit_through_a_ready_client_without_start(
        self, harness: TransportHarness
    ) -> None:
        """A producer around a client that is already connected emits without
        ``emitter.start()`` (the seed documents' usage)."""
        name = harness.unique_name()
        got: list[int] = []

        producer = await harness.ready_producer()
        try:
            async with self.running(harness, name, collect(got)):
                emitter = EventEmitter(producer)  # never started
                await emitter.emit(placed(1), route=harness.route(name))
                await emitter.producer.send_batch(
                    [emitter.build(placed(i), route=harness.route(name)) for i in (2, 3)]
                )
                await eventually(lambda: len(got) >= 3, self.timeout, "3 events handled")
        finally:
            await producer.stop()
        assert sorted(got) == [1, 2, 3]

    async def test_closed_producer_raises_not_started(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        emitter = EventEmitter(await harness.closed_producer())
        with pytest.raises(NotStartedError, match=r"(?i)start|closed"):
            await emitter.emit(placed(1), route=harness.route(name))
        with pytest.raises(NotStartedError, match=r"(?i)start|closed"):
            await emitter.producer.send_batch(
                [emitter.build(placed(i), route=harness.route(name)) for i in (2, 3)]
            )
        if harness.mode == "url":
            # An emitter that was started and stopped again owns a closed producer.
            em = EventEmitter(harness.producer(), owns_producer=True)
            await em.start()
            await em.stop()
            with pytest.raises(NotStartedError, match=r"(?i)start|closed"):
                await em.emit(placed(4), route=harness.route(name))

    async def test_unstarted_producer_raises_not_started(self, harness: TransportHarness) -> None:
        producer = await harness.unstarted_producer()
        if producer is None:
            pytest.skip(f"the {harness.name} harness gives no unstarted_producer()")
        emitter = EventEmitter(producer)
        with pytest.raises(NotStartedError, match=r"(?i)start|closed"):
            await emitter.emit(placed(1), route=harness.route(harness.unique_name()))

    async def test_unconfirmed_delivery_is_never_silent(self, harness: TransportHarness) -> None:
        """A delivery the broker does not confirm raises ``EmitTimeoutError``, or reaches
        the ``on_timeout`` callbacks when there are some."""
        producer = await harness.unconfirmed_producer()
        if producer is None:
            pytest.skip(
                f"the {harness.name} harness gives no unconfirmed_producer() "
                "(a producer whose deliveries go unconfirmed)"
            )
        name = harness.unique_name()
        try:
            emitter = EventEmitter(producer)
            with pytest.raises(EmitTimeoutError):
                await asyncio.wait_for(
                    emitter.emit(placed(1), route=harness.route(name)), self.timeout
                )
            timed_out: list[EventBase] = []
            emitter.on_timeout(timed_out.append)
            event = placed(2)
            await asyncio.wait_for(emitter.emit(event, route=harness.route(name)), self.timeout)
            assert timed_out == [event]
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.timeout)

    # -- routing -------------------------------------------------------------------------
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

    async def test_event_type_no_handler_takes_is_skipped(self, harness: TransportHarness) -> None:
        """An event of a type no handler takes, on a route handlers take: counted as
        skipped and acknowledged (not rejected, not delivered again); the loop goes on."""
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        got: list[int] = []
        # The handler takes Placed ("order_placed") only: a Cancelled is of no handler's type.
        async with (
            self.running(harness, name, collect(got), group=group) as dispatcher,
            self.emitter(harness) as em,
        ):
            other = em.build(
                Cancelled(order_id=2, reason="changed mind"), route=harness.route(name)
            )
            await em.producer.send(other)
            await eventually(lambda: dispatcher.stats["skipped"] >= 1, self.timeout, "skipped")
            await em.emit(placed(3), route=harness.route(name))
            await eventually(lambda: 3 in got, self.timeout, "an event after it")
            assert dispatcher.running
        assert got == [3]
        assert dispatcher.stats["skipped"] == 1
        assert dispatcher.stats["rejected"] == 0
        rejected = await harness.rejected(name, group=group)
        assert rejected is None or other.payload not in rejected
        if harness.at_least_once:
            # Acknowledged: the next consumer of the group does not get it again.
            seen: list[Message] = []
            async with self.running(harness, name, collect_messages(seen), group=group):
                await asyncio.sleep(harness.redelivery_window)
            assert other.payload not in [m.payload for m in seen]

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

    async def test_unknown_route_is_logged_and_rejected(
        self, harness: TransportHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A message on a route the consumer receives but no handler takes is logged
        (WARNING, with route and size) and rejected; the loop keeps running."""
        caplog.set_level(logging.WARNING)
        name = harness.unique_name()
        stray = f"{name}.stray"
        group = f"g-{uuid.uuid4().hex[:8]}"
        # The consumer is also subscribed to `stray`, which no handler takes.
        consumer = await self.probed(harness, [name], group, extra=[stray])
        dispatcher, lost = await self.bad_then_valid(
            harness,
            name,
            group,
            lambda em: em.build(placed(1), route=harness.route(stray)),
            "unknown_route",
            consumer=consumer,
        )
        assert dispatcher.stats["unknown_route"] == 1
        self.assert_logged(caplog, logging.WARNING, stray, len(lost.payload), "an unknown route")
        await self.assert_ended_rejected(harness, stray, group, [lost.payload])

    # -- failures ------------------------------------------------------------------------
    async def test_invalid_payload_does_not_stop_the_loop(
        self, harness: TransportHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING)
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"

        def truncated(em: EventEmitter) -> OutgoingMessage:
            bad = em.build(placed(0), route=harness.route(name))
            bad.payload = b'{"order_id": "not a number"'
            return bad

        dispatcher, bad = await self.bad_then_valid(
            harness, name, group, truncated, "invalid_payload"
        )
        assert dispatcher.stats["rejected"] == 1
        self.assert_logged(caplog, logging.ERROR, name, len(bad.payload), "an invalid payload")
        await self.assert_ended_rejected(harness, name, group, [bad.payload])

    async def test_handler_exception_is_not_acknowledged_as_success(
        self, harness: TransportHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING)
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        calls: list[int] = []
        register = failing(lambda e: calls.append(e.body.order_id), RuntimeError, "handler bug")
        async with (
            self.running(harness, name, register, group=group) as dispatcher,
            self.emitter(harness) as em,
        ):
            original = em.build(placed(1), route=harness.route(name))
            await em.producer.send(original)
            await eventually(lambda: dispatcher.stats["rejected"] >= 1, self.timeout, "rejection")
            assert dispatcher.running
        assert dispatcher.stats["handled"] == 0
        assert dispatcher.stats["rejected"] == 1
        assert calls == [1]
        self.assert_logged(caplog, logging.ERROR, name, len(original.payload), "a failure")
        assert any("handler bug" in r.getMessage() for r in caplog.records)
        await self.assert_ended_rejected(harness, name, group, [original.payload])

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
        assert dispatcher.stats["rejected"] == 0

    @contextlib.asynccontextmanager
    async def dead_lettering(
        self,
        harness: TransportHarness,
        name: str,
        handle: Callable[[Event[Placed]], Awaitable[None]],
        *,
        attempts: int,
        group: str | None = None,
    ) -> AsyncIterator[tuple[EventEmitter, EventDispatcher, list[Message]]]:
        """A dispatcher over ``name`` whose handler ``handle`` runs under
        ``DeadLetter(emitter, route=<a fresh dead-letter route>)`` and ``Retry(attempts)``,
        and a watcher of that dead-letter route: yields the emitter, the dispatcher and the
        messages the watcher saw arrive."""
        dlq_name = harness.unique_name("dlq")
        dead: list[Message] = []
        async with self.emitter(harness) as em:

            def register(d: EventDispatcher, sub: Any) -> None:
                dead_letter = DeadLetter(em, route=harness.route(dlq_name))

                @d.handler(sub, middlewares=[dead_letter, Retry(attempts=attempts, delay=0.001)])
                async def on_placed(event: Event[Placed]) -> None:
                    await handle(event)

            async with (
                self.running(harness, dlq_name, collect_messages(dead)),
                self.running(harness, name, register, group=group) as dispatcher,
            ):
                yield em, dispatcher, dead

    async def test_dead_letter(self, harness: TransportHarness) -> None:
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"

        async def fails(event: Event[Placed]) -> None:
            raise ValueError("cannot process order")

        async with self.dead_lettering(harness, name, fails, attempts=2, group=group) as (
            em,
            dispatcher,
            dead,
        ):
            original = em.build(placed(4), route=harness.route(name))
            await em.producer.send(original)
            await eventually(lambda: bool(dead), self.timeout, "dead-lettered copy")
            await eventually(
                lambda: dispatcher.stats["dead_lettered"] >= 1, self.timeout, "counted"
            )
        assert len(dead) == 1
        msg = dead[0]
        assert msg.payload == original.payload
        assert msg.headers["dispytch-event-id"] == original.headers["dispytch-event-id"]
        assert msg.headers[HEADER_ERROR_TYPE] == "builtins.ValueError"
        assert msg.headers[HEADER_ERROR_MESSAGE] == "cannot process order"
        assert msg.headers["dispytch-error-attempts"] == "2"
        assert msg.headers[HEADER_ORIGINAL_ROUTE] == name
        assert dispatcher.stats["rejected"] == 0
        rejected = await harness.rejected(name, group=group)
        if rejected is not None:  # it was acknowledged once dead-lettered, not rejected
            assert original.payload not in rejected

    async def test_invalid_payload_is_dead_lettered(self, harness: TransportHarness) -> None:
        """With a ``DeadLetter`` middleware an invalid payload arrives in the dead-letter
        route, with the error, and is not retried."""
        name = harness.unique_name()
        calls: list[int] = []
        bad_payload = b'{"order_id": "seven"}'

        async def record(event: Event[Placed]) -> None:
            calls.append(event.body.order_id)

        async with self.dead_lettering(harness, name, record, attempts=3) as (
            em,
            dispatcher,
            dead,
        ):
            bad = em.build(placed(5), route=harness.route(name))
            bad.payload = bad_payload
            await em.producer.send(bad)
            await em.emit(placed(6), route=harness.route(name))
            await eventually(lambda: bool(dead), self.timeout, "dead-lettered copy")
            await eventually(lambda: 6 in calls, self.timeout, "the valid event after it")
            assert dispatcher.running
        assert [m.payload for m in dead] == [bad_payload]
        assert "PayloadError" in dead[0].headers[HEADER_ERROR_TYPE]
        assert dead[0].headers["dispytch-error-attempts"] == "1"  # invalid: never retried
        assert dead[0].headers[HEADER_ORIGINAL_ROUTE] == name
        assert calls == [6]

    async def test_dead_letter_publish_failure_keeps_the_original(
        self, harness: TransportHarness
    ) -> None:
        self.require_redelivery(harness)
        name = harness.unique_name()
        seen: list[int] = []
        register = failing(
            lambda e: seen.append(e.attempt), ValueError, "always fails", [DeadLetter(_Failing())]
        )
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
        assert seen[:2] == [1, 2]

    async def test_dead_letter_outage_ends_after_max_deliveries(
        self, harness: TransportHarness
    ) -> None:
        """While the dead-letter target stays down the original is requeued, but only up
        to ``DeadLetter(max_deliveries=...)``: at that delivery it is rejected through the
        transport (ending where rejected messages end), never redelivered for ever."""
        self.require_redelivery(harness)
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        seen: list[int] = []
        dead_letter = DeadLetter(_Failing(), publish_attempts=1, max_deliveries=2)
        register = failing(
            lambda e: seen.append(e.attempt), ValueError, "always fails", [dead_letter]
        )
        async with (
            self.running(harness, name, register, group=group) as dispatcher,
            self.emitter(harness) as em,
        ):
            original = em.build(placed(1), route=harness.route(name))
            await em.producer.send(original)
            await eventually(
                lambda: dispatcher.stats["rejected"] >= 1,
                2 * harness.redelivery_timeout + self.timeout,
                "the original rejected at its last delivery",
            )
            assert dispatcher.running
        assert seen == [1, 2], f"attempts seen: {seen}"
        assert dispatcher.stats["requeued"] == 1
        assert dispatcher.stats["dead_lettered"] == 0
        await self.assert_ended_rejected(harness, name, group, [original.payload])

    # -- redelivery ----------------------------------------------------------------------
    async def test_redelivery_of_unacknowledged(self, harness: TransportHarness) -> None:
        self.require_redelivery(harness)
        name = harness.unique_name()
        deliveries: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                deliveries.append(event.attempt)
                if len(deliveries) == 1:
                    raise RequeueMessage("not yet")

        async with (
            self.running(harness, name, register) as dispatcher,
            self.emitter(harness) as em,
        ):
            await em.emit(placed(1), route=harness.route(name))
            await eventually(
                lambda: dispatcher.stats["handled"] >= 1,
                harness.redelivery_timeout + self.timeout,
                "redelivery",
            )
        assert deliveries == [1, 2], f"attempts seen: {deliveries}"

    async def test_redelivery_runs_every_handler_again(self, harness: TransportHarness) -> None:
        """When one of several handlers asks for redelivery, the ones that succeeded run
        again on the next delivery (the README: write handlers to be idempotent)."""
        self.require_redelivery(harness)
        name = harness.unique_name()
        first: list[int] = []
        second: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def succeeds(event: Event[Placed]) -> None:
                first.append(event.attempt)

            @d.handler(sub)
            async def asks_again(event: Event[Placed]) -> None:
                second.append(event.attempt)
                if event.attempt == 1:
                    raise RequeueMessage("not yet")

        async with (
            self.running(harness, name, register) as dispatcher,
            self.emitter(harness) as em,
        ):
            await em.emit(placed(1), route=harness.route(name))
            await eventually(
                lambda: dispatcher.stats["handled"] >= 1,
                harness.redelivery_timeout + self.timeout,
                "redelivery",
            )
        assert first == [1, 2]
        assert second == [1, 2]

    async def test_unsettled_work_goes_to_the_next_consumer(
        self, harness: TransportHarness
    ) -> None:
        """A consumer stopped while a handler hangs hands the message back; another
        consumer of the same group gets it."""
        self.require_redelivery(harness)
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        started = asyncio.Event()
        second: list[int] = []

        def hang(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                started.set()
                await asyncio.sleep(3600)

        await harness.prepare(name, group=group)
        first = EventDispatcher(harness.consumer(group=group))
        hang(first, harness.subscription(name, group=group))
        await first.start()
        try:
            async with self.emitter(harness) as em:
                await em.emit(placed(9), route=harness.route(name))
            await asyncio.wait_for(started.wait(), self.timeout)
        finally:
            await self.stops_within(first, 0.2)
        async with self.running(harness, name, collect(second), group=group):
            await eventually(
                lambda: 9 in second,
                harness.redelivery_timeout + self.timeout,
                "redelivery to the next consumer",
            )

    @pytest.mark.parametrize("outage", ["killed", "frozen"])
    async def test_stop_is_bounded_with_the_broker_unreachable(
        self, harness: TransportHarness, outage: Outage
    ) -> None:
        """``stop(timeout=T)`` returns within ``T`` + 1 s when the broker connection was
        cut (``outage``: killed, or frozen) under a handler stuck in a long sleep with
        more messages taken (a liveness bound, not a speed figure), and the dispatcher is
        no longer running. Where the consumer read the harness's broker through what was
        cut and the transport redelivers, a new consumer of the group then gets every
        message sent."""
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        await harness.prepare(name, group=group)
        severable = await harness.severable_consumer(group=group, outage=outage)
        if severable is None:
            pytest.skip(
                f"the {harness.name} harness gives no severable_consumer(outage={outage!r}) "
                "(a consumer whose broker connection can be cut)"
            )
        stop_timeout = 3.0
        started = asyncio.Event()
        sent: list[int] = []
        dispatcher = EventDispatcher(severable.consumer, max_in_flight=4)

        @dispatcher.handler(harness.subscription(name, group=group))
        async def stuck(event: Event[Placed]) -> None:
            started.set()
            await asyncio.sleep(3600)

        await dispatcher.start()
        try:
            emitter = EventEmitter(severable.producer or harness.producer())
            await emitter.start()
            try:
                # Until a handler runs (an at-most-once transport drops what was sent
                # before its subscription is live), then a few more to be taken.
                loop = asyncio.get_running_loop()
                end = loop.time() + self.timeout
                while not started.is_set():
                    if loop.time() > end:
                        pytest.fail(f"no handler ran within {self.timeout}s of sending")
                    await emitter.emit(placed(len(sent)), route=harness.route(name))
                    sent.append(len(sent))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(started.wait(), 0.1)
                for _ in range(3):
                    await emitter.emit(placed(len(sent)), route=harness.route(name))
                    sent.append(len(sent))
                await asyncio.sleep(0.2)
            finally:
                await asyncio.wait_for(emitter.stop(), self.timeout)
            await asyncio.wait_for(severable.sever(), self.timeout)
            await asyncio.sleep(0.3)  # the consumer now finds no broker
            try:
                await asyncio.wait_for(dispatcher.stop(timeout=stop_timeout), stop_timeout + 1)
            except TimeoutError:
                pytest.fail(
                    f"stop(timeout={stop_timeout}) with the broker unreachable still "
                    f"running after {stop_timeout + 1}s"
                )
            assert not dispatcher.running
        finally:
            if dispatcher.running:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(dispatcher.stop(timeout=0.1), self.timeout)
            if severable.release is not None:
                await asyncio.wait_for(severable.release(), self.timeout)
            # A close that stop() gave up on (the broker silent) is finished here, now
            # that the connection is gone at the broker's end, so nothing is left open.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(severable.consumer.close(), self.timeout)
        if not severable.shared or not harness.at_least_once:
            return
        if harness.capabilities.delivery != "at-least-once":
            return
        got: list[int] = []
        async with self.running(harness, name, collect(got), group=group):
            await eventually(
                lambda: set(sent) <= set(got),
                harness.redelivery_timeout + self.timeout,
                f"all {len(sent)} message(s) sent, for a new consumer of the group",
            )

    # -- delayed requeue and leases ------------------------------------------------------
    def require_delayed_requeue(self, harness: TransportHarness) -> None:
        """Skip unless the transport redelivers and declares ``delayed_requeue``."""
        self.require_redelivery(harness)
        self.require(harness, "delayed_requeue")

    async def test_delayed_requeue_through_the_dispatcher(self, harness: TransportHarness) -> None:
        """The dispatcher's requeue path (``RequeueMessage`` with ``requeue_delay``) over a
        consumer that declares ``delayed_requeue``: the message comes back no sooner than
        the delay, with a higher attempt, once; and no slot is held meanwhile (with
        ``max_in_flight=1`` another lane's event is handled during the delay)."""
        self.require_delayed_requeue(harness)
        delay = self.requeue_delay
        name = harness.unique_name()
        first, other = await harness.lanes(name, 2)
        seen: list[tuple[int, int, float]] = []  # (order id, attempt, when)

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                seen.append((event.body.order_id, event.attempt, time.monotonic()))
                if event.body.order_id == 1 and event.attempt == 1:
                    raise RequeueMessage("later")

        async with (
            self.running(
                harness,
                [first.name, other.name],
                register,
                max_in_flight=1,
                requeue_delay=delay,
                max_requeue_delay=delay,
            ) as dispatcher,
            self.emitter(harness) as em,
        ):
            await em.emit(placed(1), route=first.route, key=first.key)
            await eventually(lambda: bool(seen), self.timeout, "the first delivery")
            await em.emit(placed(2), route=other.route, key=other.key)
            await eventually(
                lambda: any(i == 1 and a == 2 for i, a, _ in seen),
                delay + harness.redelivery_timeout + self.timeout,
                "the delayed redelivery",
            )
            await asyncio.sleep(harness.redelivery_window)
        ones = [(a, t) for i, a, t in seen if i == 1]
        assert [a for a, _ in ones] == [1, 2], f"attempts of the requeued event: {ones}"
        waited = ones[1][1] - ones[0][1]
        assert waited >= delay, f"redelivered after {waited:.3f}s, sooner than {delay}s"
        twos = [t for i, _, t in seen if i == 2]
        assert len(twos) == 1
        assert twos[0] < ones[1][1], "the requeue delay held the only slot"
        assert dispatcher.stats["requeued"] == 1
        assert dispatcher.stats["handled"] == 2

    async def test_nack_with_delay_redelivers_no_sooner(self, harness: TransportHarness) -> None:
        """``consumer.nack(message, requeue=True, delay=d)`` straight on the consumer: the
        message is yielded again no sooner than ``d`` later, attempt 2, nothing lost. The
        delay is longer than the harness's lease where it has one (a delay the consumer
        must hold across lease periods, not only one the broker counts down)."""
        self.require_delayed_requeue(harness)
        lease = harness.lease_seconds
        delay = max(self.requeue_delay, 1.5 * lease) if lease is not None else self.requeue_delay
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        await harness.prepare(name, group=group)
        consumer = harness.consumer(group=group)
        consumer.subscribe([harness.subscription(name, group=group)])
        await consumer.start()
        messages = consumer.listen()
        try:
            async with self.emitter(harness) as em:
                sent = em.build(placed(1), route=harness.route(name))
                await em.producer.send(sent)
            async with asyncio.timeout(self.timeout):
                message = await anext(messages)
            assert message.payload == sent.payload
            assert message.attempt == 1
            nacked = time.monotonic()
            nack: Callable[..., Awaitable[None]] = consumer.nack
            await nack(message, requeue=True, delay=delay)
            async with asyncio.timeout(delay + harness.redelivery_timeout + self.timeout):
                again = await anext(messages)
            waited = time.monotonic() - nacked
            assert again.payload == sent.payload
            assert again.attempt == 2, f"attempt {again.attempt} on the redelivery"
            assert waited >= delay, f"redelivered after {waited:.3f}s, sooner than {delay}s"
            await consumer.ack(again)
        finally:
            aclose = getattr(messages, "aclose", None)
            if aclose is not None:
                await aclose()
            await consumer.stop()
            await consumer.close()

    async def test_long_handler_keeps_its_lease(self, harness: TransportHarness) -> None:
        """A handler running about three leases long (``harness.lease_seconds``), with
        other consumers of the same group running beside it: handled exactly once, never
        redelivered to another consumer, on a consumer that declares
        ``lease_extension``."""
        self.require_redelivery(harness)
        self.require(harness, "lease_extension")
        if harness.lease_seconds is None:
            pytest.skip(f"the {harness.name} harness has no lease_seconds (no lease to outlive)")
        hold = 3 * harness.lease_seconds
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        calls: list[tuple[str, int]] = []
        done: list[str] = []

        def register_as(tag: str) -> _Register:
            def register(d: EventDispatcher, sub: Any) -> None:
                @d.handler(sub)
                async def on_placed(event: Event[Placed]) -> None:
                    calls.append((tag, event.attempt))
                    await asyncio.sleep(hold)
                    done.append(tag)

            return register

        async with contextlib.AsyncExitStack() as stack:
            # Three members of the group: where a broker hands an expired entry to whoever
            # asks first, the holder itself asking too, more members make a lapse show.
            # One slot each: the holder's reader stops asking for more while its handler
            # runs (what a busy dispatcher does), so the transport must keep the lease
            # itself (Kafka: keep polling within max_poll_interval_ms).
            dispatchers = [
                await stack.enter_async_context(
                    self.running(harness, name, register_as(tag), group=group, max_in_flight=1)
                )
                for tag in "abc"
            ]
            em = await stack.enter_async_context(self.emitter(harness))
            await em.emit(placed(1), route=harness.route(name))
            await eventually(lambda: bool(done), hold + self.timeout, "the long handler")
            # Long enough for an expired lease to be taken over by another consumer.
            await asyncio.sleep(harness.redelivery_window)
            assert all(d.running for d in dispatchers)
        assert len(calls) == 1, f"handled {len(calls)} times (consumer, attempt): {calls}"
        assert calls[0][1] == 1
        assert sum(d.stats["handled"] for d in dispatchers) == 1

    # -- lifecycle -----------------------------------------------------------------------
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
            async with (
                self.running(harness, name, collect(later), group=group),
                self.emitter(harness) as em,
            ):
                await em.emit(placed(6), route=harness.route(name))
                await eventually(lambda: 6 in later, self.timeout, "next event")
            assert later == [6]

    async def test_restart_over_the_same_client_loses_nothing(
        self, harness: TransportHarness
    ) -> None:
        """A dispatcher stopped mid-stream with a short stop timeout (in-flight work
        handed back), then a new dispatcher over ``consumer_again`` (the same client in
        ``"client"`` mode): every event is handled at least once, none is lost."""
        self.require_redelivery(harness)
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        total = self.restart_events
        handled: list[int] = []
        blocked: list[int] = []
        gate = asyncio.Event()  # never set: the first dispatcher's later handlers hang
        phase = [1]

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                await asyncio.sleep(self.slow_seconds)
                if phase[0] == 1 and len(handled) >= total // 4:
                    blocked.append(event.body.order_id)
                    await gate.wait()  # in flight when the first dispatcher stops
                handled.append(event.body.order_id)

        await harness.prepare(name, group=group)
        consumer = harness.consumer(group=group)
        first = EventDispatcher(consumer, max_in_flight=8)
        register(first, harness.subscription(name, group=group))
        await first.start()
        try:
            async with self.emitter(harness) as em:
                for i in range(total):
                    await em.emit(placed(i), route=harness.route(name))
                await eventually(lambda: bool(blocked), self.timeout, "a handler in flight")
        finally:
            await first.stop(timeout=0.1)
        assert len(set(handled)) < total, "the first dispatcher finished everything"
        phase[0] = 2
        again = harness.consumer_again(consumer, group=group)
        second = EventDispatcher(again, max_in_flight=8)
        register(second, harness.subscription(name, group=group))
        await second.start()
        try:
            await eventually(
                lambda: set(handled) >= set(range(total)),
                harness.redelivery_timeout + self.timeout,
                f"all {total} events handled after the restart",
            )
        finally:
            await second.stop(timeout=5)
        missing = sorted(set(range(total)) - set(handled))
        duplicates = sum(n - 1 for n in Counter(handled).values())
        print(f"restart over {harness.name} ({harness.mode}): {duplicates} duplicate(s)")
        assert not missing, f"{len(missing)} of {total} events lost: {missing[:10]}"

    # -- flow control --------------------------------------------------------------------
    async def test_order_per_lane(self, harness: TransportHarness) -> None:
        """Events of one lane are handled in publish order, one at a time."""
        self.require(harness, "ordered_lanes")
        name = harness.unique_name()
        lanes = await harness.lanes(name, 2)
        per_lane = 15
        order: dict[str, list[int]] = {f"lane{i}": [] for i in range(len(lanes))}
        busy: Counter[str] = Counter()
        most: Counter[str] = Counter()

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                lane = event.body.user
                busy[lane] += 1
                most[lane] = max(most[lane], busy[lane])
                # A varying, repeatable pause: handling a lane concurrently would reorder.
                await asyncio.sleep(random.Random(event.body.order_id).random() * 0.005)
                order[lane].append(event.body.order_id)
                busy[lane] -= 1

        async with (
            self.running(harness, [lane.name for lane in lanes], register, max_in_flight=8),
            self.emitter(harness) as em,
        ):
            for i in range(per_lane):
                for li, lane in enumerate(lanes):
                    await em.emit(placed(i, user=f"lane{li}"), route=lane.route, key=lane.key)
            await eventually(
                lambda: all(len(v) >= per_lane for v in order.values()),
                self.timeout,
                "every lane's events handled",
            )
        for lane_name, ids in order.items():
            assert ids == list(range(per_lane)), f"{lane_name} out of order: {ids}"
            assert most[lane_name] == 1, f"{lane_name} ran {most[lane_name]} at once"

    async def test_back_pressure_bounds_what_is_taken(self, harness: TransportHarness) -> None:
        """Never more than ``max_in_flight`` messages taken from the consumer and not yet
        settled, with a slow handler and a backlog several times that."""
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        max_in_flight = 4
        backlog = 6 * max_in_flight
        lanes = await harness.lanes(name, 2)
        got: list[int] = []

        consumer = await self.probed(harness, [lane.name for lane in lanes], group)
        async with (
            self.running(
                harness,
                [lane.name for lane in lanes],
                collect(got, pause=self.slow_seconds * 2),
                group=group,
                consumer=consumer,
                max_in_flight=max_in_flight,
            ) as dispatcher,
            self.emitter(harness) as em,
        ):
            for i in range(backlog):
                lane = lanes[i % len(lanes)]
                await em.emit(placed(i), route=lane.route, key=lane.key)
            await eventually(lambda: len(set(got)) >= backlog, self.timeout, "the backlog")
            assert dispatcher.running
        assert sorted(set(got)) == list(range(backlog))
        assert 1 <= consumer.max_unsettled <= max_in_flight, (
            f"{consumer.max_unsettled} messages taken and unsettled at once "
            f"(max_in_flight={max_in_flight})"
        )

    async def test_slow_lane_does_not_stall_others(self, harness: TransportHarness) -> None:
        """A lane whose handler is stuck, with a backlog of 10x ``max_in_flight``, does
        not keep another lane's events from being handled.

        The slow lane is made slow by holding its handler until the fast lane is done
        (rather than by a sleep and a count of how far it got), so the case asserts an
        outcome, not a speed. It needs ``pause_lanes``: a consumer that cannot stop
        yielding the slow lane can only be read past it by taking more than
        ``max_in_flight``, so the dispatcher waits for that lane instead.
        """
        self.require(harness, "ordered_lanes", "pause_lanes")
        if not _dispatcher_takes("max_in_flight_per_lane"):
            pytest.xfail(
                "this core's EventDispatcher has no max_in_flight_per_lane: "
                "the fair lane scheduler is not in it yet"
            )
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        max_in_flight = 8
        slow_backlog, fast_count = 10 * max_in_flight, 20
        slow_lane, fast_lane = await harness.lanes(name, 2)
        release = asyncio.Event()
        slow_done: list[int] = []
        fast_done: list[int] = []

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                if event.body.user == "slow":
                    await release.wait()
                    slow_done.append(event.body.order_id)
                else:
                    fast_done.append(event.body.order_id)

        consumer = await self.probed(harness, [slow_lane.name, fast_lane.name], group)
        try:
            async with (
                self.running(
                    harness,
                    [slow_lane.name, fast_lane.name],
                    register,
                    group=group,
                    consumer=consumer,
                    max_in_flight=max_in_flight,
                ) as dispatcher,
                self.emitter(harness) as em,
            ):
                for i in range(slow_backlog):
                    await em.emit(placed(i, user="slow"), route=slow_lane.route, key=slow_lane.key)
                for i in range(fast_count):
                    await em.emit(placed(i, user="fast"), route=fast_lane.route, key=fast_lane.key)
                await eventually(
                    lambda: len(fast_done) >= fast_count,
                    self.timeout,
                    f"the fast lane's {fast_count} events while the slow lane is stuck",
                )
                assert slow_done == []
                release.set()
                await eventually(
                    lambda: len(slow_done) >= slow_backlog, self.timeout, "the slow backlog"
                )
                assert dispatcher.running
        finally:
            release.set()
        assert fast_done == list(range(fast_count))
        assert slow_done == list(range(slow_backlog))
        assert consumer.max_unsettled <= max_in_flight

    async def test_manual_acknowledgement_is_bounded(self, harness: TransportHarness) -> None:
        """Under ``AckPolicy.MANUAL``, messages whose handlers do not settle them keep
        counting: once ``max_unsettled`` are held the dispatcher reads no more (what was
        already in flight may still join them: at most ``max_unsettled - 1 +
        max_in_flight`` taken and unsettled), and settling them later lets it go on until
        everything is handled, once."""
        if not _dispatcher_takes("max_unsettled"):
            pytest.xfail(
                "this core's EventDispatcher has no max_unsettled: manual acknowledgement "
                "is not bounded in it yet"
            )
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        bound, max_in_flight = self.manual_bound, 4
        most = bound - 1 + max_in_flight
        total = 3 * bound
        lanes = await harness.lanes(name, 2)
        held: list[Acknowledger] = []
        seen: Counter[int] = Counter()

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed], ack: Acknowledger) -> None:
                seen[event.body.order_id] += 1
                held.append(ack)  # settled later, by the case

        consumer = await self.probed(harness, [lane.name for lane in lanes], group)
        async with (
            self.running(
                harness,
                [lane.name for lane in lanes],
                register,
                group=group,
                consumer=consumer,
                ack_policy=AckPolicy.MANUAL,
                max_in_flight=max_in_flight,
                max_unsettled=bound,
            ) as dispatcher,
            self.emitter(harness) as em,
        ):
            for i in range(total):
                lane = lanes[i % len(lanes)]
                await em.emit(placed(i), route=lane.route, key=lane.key)
            await eventually(
                lambda: len(held) >= bound,
                self.timeout,
                f"{bound} messages handled and left unsettled (max_unsettled)",
            )
            # Give the dispatcher the chance to read on, which it must not take.
            await asyncio.sleep(0.5)
            stalled = len(held)
            assert bound <= stalled <= most, f"{stalled} held unsettled (max_unsettled={bound})"
            assert consumer.unsettled == stalled, "messages taken beyond the bound"
            assert sum(seen.values()) == stalled < total
            loop = asyncio.get_running_loop()
            end = loop.time() + self.timeout
            while sum(seen.values()) < total or held:
                while held:
                    await held.pop().ack()
                if loop.time() > end:
                    pytest.fail(f"settling resumed reading only to {sum(seen.values())}/{total}")
                await asyncio.sleep(0.01)
            assert dispatcher.running
        assert sorted(seen) == list(range(total))
        if not harness.may_duplicate:
            assert set(seen.values()) == {1}
        assert consumer.max_unsettled <= most, (
            f"{consumer.max_unsettled} taken and unsettled at once (max_unsettled={bound}, "
            f"max_in_flight={max_in_flight})"
        )

    # -- hostile input -------------------------------------------------------------------
    async def test_hostile_input_never_stops_the_consumer(
        self, harness: TransportHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Hypothesis-drawn and named hostile messages, published with the broker's plain
        client between valid events: the consume loop never dies, every valid event is
        handled (once), every bad one is logged and ends where the failure policy says."""
        caplog.set_level(logging.WARNING)
        name = harness.unique_name()
        group = f"g-{uuid.uuid4().hex[:8]}"
        inputs = [*named_inputs(self.large_payload), *hostile_inputs(self.hostile_examples)]
        handled: Counter[int] = Counter()
        expected: Counter[int] = Counter()
        bad: list[RawInput] = []

        def judge(raw: RawInput) -> Placed | None:
            return expected_event(raw, Placed, undecodable_headers=harness.undecodable_headers)

        def register(d: EventDispatcher, sub: Any) -> None:
            @d.handler(sub)
            async def on_placed(event: Event[Placed]) -> None:
                handled[event.body.order_id] += 1

        async with (
            self.running(harness, name, register, group=group, max_in_flight=8) as dispatcher,
            self.emitter(harness) as em,
        ):
            for i, raw in enumerate(inputs):
                await self.publish_raw(harness, name, raw)
                event = judge(raw)
                if event is None:
                    bad.append(raw)
                else:
                    expected[event.order_id] += 1
                if i % 2 == 0:  # a valid event between hostile ones, from either side
                    valid = em.build(placed(10_000_000 + i), route=harness.route(name))
                    expected[10_000_000 + i] += 1
                    if i % 4 == 0:
                        await em.producer.send(valid)
                    else:
                        await self.publish_raw(
                            harness, name, RawInput(valid.payload, _raw_headers(valid), "valid")
                        )
                assert dispatcher.running, f"the consumer loop died after {raw!r}"

            def logged() -> int:
                return sum(
                    1
                    for r in caplog.records
                    if r.levelno >= logging.WARNING
                    and r.name.startswith("dispytch")
                    and name in r.getMessage()
                )

            def settled() -> bool:
                assert dispatcher.running, "the consumer loop died"
                valid_done = all(handled[k] >= n for k, n in expected.items())
                return valid_done and logged() >= len(bad)

            try:
                await eventually(
                    settled,
                    self.timeout + len(inputs) * 0.05,
                    f"{sum(expected.values())} valid events handled and {len(bad)} bad logged",
                )
            except pytest.fail.Exception:
                missing = sorted(k for k, n in expected.items() if handled[k] < n)
                lost = [raw for raw in inputs if (e := judge(raw)) and e.order_id in missing]
                pytest.fail(
                    f"{len(missing)} valid event(s) not handled: {missing[:10]} (hostile ones "
                    f"among them: {lost[:5]}); {logged()} of {len(bad)} bad inputs logged; "
                    f"dispatcher stats {dict(dispatcher.stats)}"
                )
            assert dispatcher.running
        unexpected = sorted(set(handled) - set(expected))
        assert not unexpected, f"handled events that were not valid: {unexpected[:10]}"
        if harness.may_duplicate:
            assert all(handled[k] >= n for k, n in expected.items())
        else:
            assert handled == expected, "valid events not handled exactly once"
        # Bad ones end in the dispatcher's failure policy or, where the transport cannot
        # even read them, in the transport's own (logged either way; counted above).
        assert dispatcher.stats["rejected"] <= len(bad)
        await self.assert_ended_rejected(harness, name, group, [raw.payload for raw in bad])

    # -- the harness itself --------------------------------------------------------------
    async def test_harness_declares_what_the_consumer_declares(
        self, harness: TransportHarness
    ) -> None:
        """The harness's ``capabilities`` are what its consumers declare: a harness that
        declared less would skip cases, one that declared more would fail them for the
        wrong reason (an "out of order" that is really an unordered consumer)."""
        group = f"g-{uuid.uuid4().hex[:8]}"
        await harness.prepare(harness.unique_name(), group=group)
        consumer = harness.consumer(group=group)
        if getattr(consumer, "capabilities", None) is None:
            pytest.skip(f"{type(consumer).__name__} declares no capabilities attribute")
        declared = capabilities_of(consumer)
        assert harness.capabilities == declared, (
            f"the {harness.name} harness declares {harness.capabilities.to_dict()}, its "
            f"consumer {declared.to_dict()}"
        )
        assert harness.at_least_once == (declared.delivery == "at-least-once")
