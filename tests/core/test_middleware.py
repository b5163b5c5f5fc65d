"""Middleware (issue 4): Retry, DeadLetter, AsyncLock, Timeout, Filter, Observe, named
stacks, and the outcome every message ends with."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from dispytch import (
    AsyncLock,
    DeadLetter,
    Dependency,
    EmitError,
    Event,
    EventBase,
    Filter,
    HandlerContext,
    Message,
    Observe,
    Outcome,
    OutgoingMessage,
    Retry,
    Timeout,
)
from dispytch.errors import PluginError, RequeueMessage
from dispytch.memory import MemoryEventRoute, MemoryProducer
from dispytch.middleware import HandlerTimeoutError
from dispytch.router import resolve_middleware
from dispytch.transport import (
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_ATTEMPTS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_EVENT_TYPE,
    HEADER_ORIGINAL_ROUTE,
)

if TYPE_CHECKING:
    from tests.core.conftest import Kit


class Job(EventBase):
    __topic__ = "jobs"
    __event_type__ = "job"
    n: int
    user: str = "ann"


class FakeClock:
    """An injected ``sleep`` that records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Flaky:
    """A handler body failing the first ``fails`` calls with ``exc``."""

    def __init__(self, fails: int, exc: type[Exception] = ConnectionError) -> None:
        self.fails = fails
        self.exc = exc
        self.calls: list[int] = []

    def __call__(self, attempt: int) -> None:
        self.calls.append(attempt)
        if len(self.calls) <= self.fails:
            raise self.exc(f"failure {len(self.calls)}")


async def settle(kit: Kit, d: Any, n: int = 1) -> None:
    keys = ("handled", "filtered", "dead_lettered", "rejected", "requeued")
    await kit.until(lambda: sum(d.stats[k] for k in keys) >= n, f"{n} settled message(s)")


# -- Retry -------------------------------------------------------------------------------


async def test_retry_until_success_with_exponential_backoff(kit: Kit) -> None:
    clock = FakeClock()
    flaky = Flaky(fails=3)
    d = kit.dispatcher()

    @d.handler(
        topic="jobs",
        middlewares=[Retry(attempts=5, delay=1.0, factor=2.0, jitter=0, sleep=clock)],
    )
    async def work(event: Event[Job], ctx: HandlerContext) -> None:
        flaky(ctx.attempt)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await settle(kit, d)
    assert flaky.calls == [1, 2, 3, 4]
    assert clock.delays == [1.0, 2.0, 4.0]
    assert d.stats["handled"] == 1 and kit.broker.rejected == []


async def test_retry_gives_up_after_attempts(kit: Kit) -> None:
    clock = FakeClock()
    flaky = Flaky(fails=99)
    d = kit.dispatcher()

    @d.handler(topic="jobs", middlewares=[Retry(attempts=3, delay=0.5, jitter=0, sleep=clock)])
    async def work(ctx: HandlerContext) -> None:
        flaky(ctx.attempt)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await settle(kit, d)
    assert flaky.calls == [1, 2, 3]
    assert clock.delays == [0.5, 1.0]
    assert d.stats["rejected"] == 1 and len(kit.broker.rejected) == 1


def test_backoff_is_capped_and_jitter_stays_in_bounds() -> None:
    r = Retry(attempts=20, delay=0.1, factor=3.0, max_delay=2.0, jitter=0)
    exact = [r.backoff(i) for i in range(1, 8)]
    assert exact[:3] == pytest.approx([0.1, 0.3, 0.9])
    assert exact[3:] == [2.0, 2.0, 2.0, 2.0]  # capped
    jittery = Retry(attempts=20, delay=0.1, factor=3.0, max_delay=2.0, jitter=0.5)
    for attempt in range(1, 8):
        samples = [jittery.backoff(attempt) for _ in range(200)]
        assert all(exact[attempt - 1] * 0.5 <= s <= exact[attempt - 1] for s in samples)
        assert len(set(samples)) > 1  # really random
    full = Retry(delay=1.0, jitter=1.0)
    assert all(0.0 <= full.backoff(1) <= 1.0 for _ in range(200))


async def test_jittered_delays_grow_and_stay_under_max_delay(kit: Kit) -> None:
    clock = FakeClock()
    d = kit.dispatcher()

    @d.handler(
        topic="jobs",
        middlewares=[Retry(attempts=8, delay=0.1, factor=2.0, max_delay=1.0, sleep=clock)],
    )
    async def work() -> None:
        raise ConnectionError("down")

    async with d:
        await kit.emitter.emit(Job(n=1))
        await settle(kit, d)
    assert len(clock.delays) == 7
    bases = [min(1.0, 0.1 * 2**i) for i in range(7)]
    for got, base in zip(clock.delays, bases, strict=True):
        assert base * 0.5 <= got <= base <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "exc", "calls"),
    [
        ({"retry_on": ConnectionError}, ConnectionError, 3),
        ({"retry_on": ConnectionError}, ValueError, 1),
        ({"retry_on": (ConnectionError, ValueError)}, ValueError, 3),
        ({"give_up_on": ValueError}, ValueError, 1),
        ({"give_up_on": (KeyError, ValueError)}, KeyError, 1),
        ({"retry_on": Exception, "give_up_on": ValueError}, ConnectionError, 3),
    ],
)
async def test_retry_on_and_give_up_on(
    kit: Kit, kwargs: dict[str, Any], exc: type[Exception], calls: int
) -> None:
    flaky = Flaky(fails=99, exc=exc)
    d = kit.dispatcher()

    @d.handler(topic="jobs", middlewares=[Retry(attempts=3, sleep=FakeClock(), **kwargs)])
    async def work(ctx: HandlerContext) -> None:
        flaky(ctx.attempt)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await settle(kit, d)
    assert len(flaky.calls) == calls
    assert d.stats["rejected"] == 1


async def test_invalid_payload_is_never_retried(kit: Kit) -> None:
    clock = FakeClock()
    d = kit.dispatcher()

    @d.handler(topic="jobs", middlewares=[Retry(attempts=5, sleep=clock)])
    async def work(event: Event[Job]) -> None:
        raise AssertionError("never reached")

    async with d:
        kit.broker.publish("jobs", b'{"n": "x"}', {HEADER_EVENT_TYPE: "job"}, None)
        await settle(kit, d)
    assert clock.delays == []
    assert d.stats["invalid_payload"] == 1 and d.stats["rejected"] == 1


TEARDOWNS: list[str] = []


def session() -> Iterator[str]:
    TEARDOWNS.append("open")
    try:
        yield "session"
    finally:
        TEARDOWNS.append("close")


async def test_each_retry_gets_fresh_dependencies(kit: Kit) -> None:
    TEARDOWNS.clear()
    flaky = Flaky(fails=2)
    d = kit.dispatcher()

    @d.handler(topic="jobs", middlewares=[Retry(attempts=3, sleep=FakeClock())])
    async def work(s: Annotated[str, Dependency(session)], ctx: HandlerContext) -> None:
        flaky(ctx.attempt)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await settle(kit, d)
    assert TEARDOWNS == ["open", "close"] * 3


def test_retry_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="attempts=.*at least 1"):
        Retry(attempts=0)
    with pytest.raises(ValueError, match="jitter=.*between 0 and 1"):
        Retry(jitter=1.5)


# -- DeadLetter --------------------------------------------------------------------------


DLQ = MemoryEventRoute(topic="jobs.dlq")


async def _collect_dlq(kit: Kit) -> tuple[Any, list[Message]]:
    dlq = kit.dispatcher(group="dlq-reader")
    got: list[Message] = []

    @dlq.handler(topic="jobs.dlq")
    async def read(message: Message) -> None:
        got.append(message)

    await dlq.start()
    return dlq, got


async def test_dead_letter_after_the_last_retry(kit: Kit) -> None:
    dlq, got = await _collect_dlq(kit)
    d = kit.dispatcher()
    flaky = Flaky(fails=99, exc=ValueError)

    @d.handler(
        topic="jobs",
        middlewares=[DeadLetter(kit.emitter, route=DLQ), Retry(attempts=3, sleep=FakeClock())],
    )
    async def work(event: Event[Job], ctx: HandlerContext) -> None:
        flaky(ctx.attempt)

    before = time.time()
    async with d:
        await kit.emitter.emit(Job(n=7), headers={"x-trace": "t-1"})
        await kit.until(lambda: got, "the dead letter")
    original = kit.emitter.build(Job(n=7)).payload
    dead = got[0]
    assert dead.payload == original
    assert dead.route == "jobs.dlq"
    h = dead.headers
    assert h["x-trace"] == "t-1" and h[HEADER_EVENT_TYPE] == "job"  # original headers kept
    assert h[HEADER_ERROR_TYPE] == "builtins.ValueError"
    assert h[HEADER_ERROR_MESSAGE] == "failure 3"
    assert h[HEADER_ERROR_ATTEMPTS] == "3"
    assert h[HEADER_ORIGINAL_ROUTE] == "jobs"
    assert before <= float(h[HEADER_DEAD_LETTERED_AT]) <= time.time()
    # The original is acknowledged: not rejected, not pending, counted as dead-lettered.
    assert d.stats["dead_lettered"] == 1
    assert kit.broker.rejected == [] and kit.unacked() == 0 and kit.queued() == 0
    assert flaky.calls == [1, 2, 3]


async def test_dead_letter_default_route_and_message_limit(kit: Kit) -> None:
    dlq, got = await _collect_dlq(kit)
    d = kit.dispatcher()

    @d.handler(topic="jobs", middlewares=[DeadLetter(kit.producer, error_message_limit=5)])
    async def work() -> None:
        raise KeyError("a very long explanation")

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: got, "the dead letter")
    assert got[0].route == "jobs.dlq"
    assert got[0].headers[HEADER_ERROR_MESSAGE] == "'a ve"
    assert got[0].headers[HEADER_ERROR_ATTEMPTS] == "1"


class FailingOnce(MemoryProducer):
    """A producer whose first send fails, as a broker outage would."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.failures = 1

    async def send(self, message: OutgoingMessage) -> None:
        if self.failures:
            self.failures -= 1
            raise EmitError("dead-letter broker unreachable")
        await super().send(message)

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        for m in messages:
            await self.send(m)


async def test_dead_letter_publish_failure_keeps_the_original(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    dlq, got = await _collect_dlq(kit)
    producer = FailingOnce(kit.broker)
    await producer.start()
    d = kit.dispatcher()
    attempts: list[int] = []

    @d.handler(topic="jobs", middlewares=[DeadLetter(producer, route=DLQ, publish_attempts=1)])
    async def work(event: Event[Job]) -> None:
        attempts.append(event.attempt)
        raise ValueError("bad job")

    with caplog.at_level(logging.ERROR, logger="dispytch.dead_letter"):
        async with d:
            await kit.emitter.emit(Job(n=1))
            await kit.until(lambda: got, "the dead letter on the second delivery")
    # First delivery: publishing failed, the original went back to the broker;
    # second delivery: dead-lettered.
    assert attempts == [1, 2]
    assert d.stats["requeued"] == 1 and d.stats["dead_lettered"] == 1
    assert kit.broker.rejected == []
    assert "Could not dead-letter" in caplog.text and "unreachable" in caplog.text


def test_dead_letter_needs_something_to_publish_with() -> None:
    with pytest.raises(TypeError, match="needs an EventEmitter or a Producer"):
        DeadLetter(object())


async def test_requeue_message_from_middleware_redelivers(kit: Kit) -> None:
    d = kit.dispatcher()
    seen: list[int] = []

    async def not_yet(ctx: HandlerContext, call_next: Any) -> Any:
        if ctx.message.attempt == 1:
            raise RequeueMessage("dependency not ready")
        return await call_next(ctx)

    @d.handler(topic="jobs", middlewares=[not_yet])
    async def work(event: Event[Job]) -> None:
        seen.append(event.attempt)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: seen, "the redelivery")
    assert seen == [2] and d.stats["requeued"] == 1 and kit.broker.rejected == []


# -- AsyncLock ---------------------------------------------------------------------------


async def test_lock_per_key_lets_other_keys_proceed(kit: Kit) -> None:
    lock = AsyncLock(key=lambda e: e.body.user)
    d = kit.dispatcher(max_in_flight=8)
    gate = asyncio.Event()
    started: list[tuple[str, int]] = []
    finished: list[tuple[str, int]] = []

    @d.handler(topic="jobs", middlewares=[lock])
    async def work(event: Event[Job]) -> None:
        started.append((event.body.user, event.body.n))
        if event.body.user == "ann":
            await asyncio.wait_for(gate.wait(), 5)
        finished.append((event.body.user, event.body.n))

    async with d:
        await kit.emitter.emit(Job(n=1, user="ann"))
        await kit.until(lambda: started, "ann's first job")
        await kit.emitter.emit(Job(n=2, user="ann"))
        await kit.emitter.emit(Job(n=3, user="bob"))
        await kit.until(lambda: ("bob", 3) in finished, "bob, while ann's lock is held")
        assert lock.held("ann") and not lock.held("bob")
        assert started == [("ann", 1), ("bob", 3)]  # ann's second job waits
        gate.set()
        await kit.until(lambda: len(finished) == 3, "every job")
    assert finished == [("bob", 3), ("ann", 1), ("ann", 2)]
    assert lock._locks == {}  # nothing kept once nobody holds or waits


async def test_global_lock_serialises(kit: Kit) -> None:
    d = kit.dispatcher(max_in_flight=8)
    active = [0, 0]

    @d.handler(topic="jobs", middlewares=[AsyncLock()])
    async def work(event: Event[Job]) -> None:
        active[0] += 1
        active[1] = max(active)
        for _ in range(5):
            await asyncio.sleep(0)
        active[0] -= 1

    async with d:
        for i in range(6):
            await kit.emitter.emit(Job(n=i, user=f"u{i}"))
        await settle(kit, d, 6)
    assert active[1] == 1 and d.stats["handled"] == 6


# -- Timeout -----------------------------------------------------------------------------


async def test_timeout_expiry_is_a_failure(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    d = kit.dispatcher()

    @d.handler(topic="jobs", middlewares=[Timeout(0.01)], name="sleepy")
    async def work() -> None:
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="dispytch.dispatcher"):
        async with d:
            await kit.emitter.emit(Job(n=1))
            await settle(kit, d)
    assert d.stats["rejected"] == 1 and len(kit.broker.rejected) == 1
    assert "HandlerTimeoutError: Handler 'sleepy' ran past its 0.01s timeout on 'jobs'" in (
        caplog.text
    )


async def test_timeout_composes_with_retry(kit: Kit) -> None:
    clock = FakeClock()
    d = kit.dispatcher()
    calls: list[int] = []

    @d.handler(topic="jobs", middlewares=[Retry(attempts=3, sleep=clock), Timeout(0.01)])
    async def work(ctx: HandlerContext) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            await asyncio.Event().wait()

    async with d:
        await kit.emitter.emit(Job(n=1))
        await settle(kit, d)
    assert calls == [1, 2, 3] and len(clock.delays) == 2
    assert d.stats["handled"] == 1


async def test_timeout_passes_fast_handlers_and_is_checked() -> None:
    assert issubclass(HandlerTimeoutError, TimeoutError)
    with pytest.raises(ValueError, match="must be positive"):
        Timeout(0)


# -- Filter ------------------------------------------------------------------------------


async def is_even_async(event: Event[Job]) -> bool:
    await asyncio.sleep(0)
    return event.body.n % 2 == 0


async def headers_even_async(headers: Mapping[str, str]) -> bool:
    await asyncio.sleep(0)
    return headers.get("x-parity") == "even"


@pytest.mark.parametrize(
    "flt",
    [
        Filter(lambda e: e.body.n % 2 == 0),
        Filter(is_even_async),
        Filter(headers=lambda h: h.get("x-parity") == "even"),
        Filter(headers=headers_even_async),
    ],
    ids=["event", "async", "headers", "async-headers"],
)
async def test_filter(kit: Kit, flt: Filter) -> None:
    d = kit.dispatcher()
    got: list[int] = []

    @d.handler(topic="jobs", middlewares=[flt])
    async def work(event: Event[Job]) -> None:
        got.append(event.body.n)

    async with d:
        for i in range(4):
            await kit.emitter.emit(Job(n=i), headers={"x-parity": "odd" if i % 2 else "even"})
        await settle(kit, d, 4)
    assert sorted(got) == [0, 2]
    assert d.stats["filtered"] == 2 and d.stats["handled"] == 2
    # Filtered messages are acknowledged, not rejected or left pending.
    assert kit.broker.rejected == [] and kit.unacked() == 0 and kit.queued() == 0


def test_filter_needs_a_predicate() -> None:
    with pytest.raises(ValueError, match="needs a predicate"):
        Filter()


# -- Observe -----------------------------------------------------------------------------


async def test_observe_sees_every_outcome(kit: Kit) -> None:
    seen: list[tuple[str, str, float]] = []

    def hook(ctx: HandlerContext, outcome: Outcome, seconds: float) -> None:
        seen.append((ctx.message.headers["case"], outcome.value, seconds))

    d = kit.dispatcher(middlewares=[Observe(hook)])
    dlq_producer = MemoryProducer(kit.broker)
    await dlq_producer.start()

    @d.handler(
        topic="jobs",
        middlewares=[
            DeadLetter(dlq_producer, route=DLQ),
            Filter(headers=lambda h: h["case"] != "filtered"),
        ],
    )
    async def work(event: Event[Job]) -> None:
        if event.headers["case"] == "dead_lettered":
            raise ValueError("to the DLQ")

    @d.handler(topic="other")
    async def plain(message: Message) -> None:
        raise ValueError("nowhere to go")

    class Other(EventBase):
        __topic__ = "other"

    async with d:
        for case in ("handled", "filtered", "dead_lettered"):
            await kit.emitter.emit(Job(n=1), headers={"case": case})
        await kit.emitter.emit(Other(), headers={"case": "rejected"})
        await settle(kit, d, 4)
    assert sorted(case for case, _, _ in seen) == sorted(outcome for _, outcome, _ in seen)
    assert {o for _, o, _ in seen} == {"handled", "filtered", "dead_lettered", "rejected"}
    assert all(s >= 0 for _, _, s in seen)


async def test_async_observe_hook_is_awaited(kit: Kit) -> None:
    seen: list[str] = []

    async def hook(ctx: HandlerContext, outcome: Outcome, seconds: float) -> None:
        await asyncio.sleep(0)
        seen.append(outcome.value)

    d = kit.dispatcher(middlewares=[Observe(hook)])

    @d.handler(topic="jobs")
    async def work() -> None: ...

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: seen, "the hook")
    assert seen == ["handled"]


async def test_a_failing_observe_hook_does_not_fail_the_handling(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(ctx: HandlerContext, outcome: Outcome, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    d = kit.dispatcher(middlewares=[Observe(hook)])

    @d.handler(topic="jobs")
    async def work() -> None: ...

    with caplog.at_level(logging.ERROR, logger="dispytch.observe"):
        async with d:
            await kit.emitter.emit(Job(n=1))
            await settle(kit, d)
    assert d.stats["handled"] == 1 and kit.broker.rejected == []
    assert "metrics backend down" in caplog.text


async def test_observe_logs_each_handling(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    d = kit.dispatcher(middlewares=[Observe(level=logging.INFO)])

    @d.handler(topic="jobs", name="work")
    async def work() -> None: ...

    with caplog.at_level(logging.INFO, logger="dispytch.observe"):
        async with d:
            await kit.emitter.emit(Job(n=1))
            await settle(kit, d)
    assert "work on 'jobs': handled in" in caplog.text


# -- named middleware --------------------------------------------------------------------


async def test_named_middlewares_in_stacks(kit: Kit) -> None:
    d = kit.dispatcher(middlewares=["retry", ("retry", {"attempts": 5, "jitter": 0})])
    first, second = d.middlewares
    assert isinstance(first, Retry) and first.attempts == 3
    assert isinstance(second, Retry) and second.attempts == 5 and second.jitter == 0
    assert isinstance(resolve_middleware(("timeout", {"seconds": 2})), Timeout)
    assert isinstance(resolve_middleware(("filter", {"headers": lambda h: True})), Filter)
    assert isinstance(resolve_middleware("lock"), AsyncLock)
    assert isinstance(resolve_middleware("observe"), Observe)
    assert isinstance(resolve_middleware(("dead-letter", {"target": kit.emitter})), DeadLetter)


async def test_named_middleware_runs(kit: Kit) -> None:
    flaky = Flaky(fails=1)
    d = kit.dispatcher()

    @d.handler(topic="jobs", middlewares=[("retry", {"attempts": 2, "delay": 0.001})])
    async def work(ctx: HandlerContext) -> None:
        flaky(ctx.attempt)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await settle(kit, d)
    assert flaky.calls == [1, 2] and d.stats["handled"] == 1


def test_unknown_or_malformed_named_middleware() -> None:
    with pytest.raises(
        PluginError, match=r"No middleware is registered as 'retyr'\. Did you mean 'retry'"
    ):
        resolve_middleware("retyr")
    with pytest.raises(PluginError, match=r"write \(\"name\", \{options\}\)"):
        resolve_middleware(("retry", 5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is not a middleware"):
        resolve_middleware(42)  # type: ignore[arg-type]


def test_a_module_level_lock_serves_several_event_loops() -> None:
    lock = AsyncLock()
    keyed = AsyncLock(key=lambda e: "same")
    order: list[str] = []

    class Ctx:
        event = object()

    async def contend(tag: str) -> None:
        async def nxt(ctx: Any) -> None:
            order.append(tag)
            await asyncio.sleep(0)

        ctx: Any = Ctx()
        await asyncio.gather(*(mw(ctx, nxt) for mw in (lock, lock, keyed, keyed)))

    # Contended in one loop, then in the next one (as a test suite or a restarted
    # service would): asyncio locks belong to one loop, the middleware must not.
    asyncio.run(contend("first"))
    asyncio.run(contend("second"))
    assert order == ["first"] * 4 + ["second"] * 4
