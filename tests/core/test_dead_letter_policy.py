"""The dead-letter failure policy always ends: a dead letter that cannot be published is
retried while the failure looks transient, truncated when it is permanent, and otherwise
rejected through the transport with one ERROR line; and ``Retry`` never retries what
cannot succeed.

All on the memory transport, with ordered lanes (one lane per topic), so that "the lane
moves on" is what the valid events behind the poison show.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest
from dispytch import (
    DeadLetter,
    EmitError,
    Event,
    EventBase,
    HandlerContext,
    Message,
    OutgoingMessage,
    Retry,
)
from dispytch.backoff import Backoff
from dispytch.errors import (
    DeadLetterError,
    DeadLetterFailedError,
    DispytchError,
    EmitRejectedError,
    RequeueMessage,
)
from dispytch.memory import MemoryEventRoute, MemoryProducer
from dispytch.middleware.dead_letter import (
    HEADER_ORIGINAL_SHA256,
    HEADER_ORIGINAL_SIZE,
    HEADER_TRUNCATED,
    TRUNCATED_CONTENT_TYPE,
)
from dispytch.transport import (
    HEADER_CONTENT_TYPE,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_ROUTE,
)

if TYPE_CHECKING:
    from tests.core.conftest import Kit

DLQ = MemoryEventRoute(topic="jobs.dlq")
FAST = Backoff(initial=0.001, factor=2.0, cap=0.005)
POISON = "x" * 100_000  # 100 kB: far above what the size-limited target takes
VALID = 3


class Job(EventBase):
    __topic__ = "jobs"
    __event_type__ = "job"
    n: int
    blob: str = ""


class Target(MemoryProducer):
    """A dead-letter target on the test's broker that records what it was asked to send
    and fails as ``failure(message, call_number)`` says (``None``: send it)."""

    def __init__(self, kit: Kit, failure: Any) -> None:
        super().__init__(kit.broker)
        self.failure = failure
        self.sends: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> None:
        self.sends.append(message)
        exc = self.failure(message, len(self.sends))
        if exc is not None:
            raise exc
        await super().send(message)

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> None:
        for m in messages:
            await self.send(m)


async def target(kit: Kit, failure: Any) -> Target:
    t = Target(kit, failure)
    await t.start()
    return t


async def dlq_reader(kit: Kit) -> list[Message]:
    reader = kit.dispatcher(group="dlq-reader")
    got: list[Message] = []

    @reader.handler(topic="jobs.dlq")
    async def read(message: Message) -> None:
        got.append(message)

    await reader.start()
    return got


def settled(d: Any) -> int:
    keys = ("handled", "dead_lettered", "rejected")
    return sum(d.stats[k] for k in keys)


async def run_poison_then_valid(
    kit: Kit, dead_letter: DeadLetter, *, attempts: int = 3
) -> tuple[Any, list[int], list[tuple[int, int]]]:
    """A poison job first, then ``VALID`` valid ones, all on one ordered lane; the handler
    (under ``Retry``) fails on the poison only. Returns the dispatcher, the valid jobs
    handled and the handler's calls for the poison: (delivery attempt, Retry attempt)."""
    d = kit.dispatcher(ordered=True)
    d.requeue_delay = 0.001  # the dispatcher's own redelivery backoff, kept short
    handled: list[int] = []
    poison_calls: list[tuple[int, int]] = []

    @d.handler(
        topic="jobs",
        middlewares=[dead_letter, Retry(attempts=attempts, delay=0.001, jitter=0)],
    )
    async def work(event: Event[Job], ctx: HandlerContext) -> None:
        if event.body.blob:
            poison_calls.append((event.attempt, ctx.attempt))
            raise ValueError("poison: cannot handle this job")
        handled.append(event.body.n)

    async with d:
        await kit.emitter.emit(Job(n=-1, blob=POISON))
        for n in range(VALID):
            await kit.emitter.emit(Job(n=n))
        await kit.until(lambda: settled(d) == VALID + 1, "every message settled")
    return d, handled, poison_calls


def poison_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The ERROR lines saying where a payload that could not be dead-lettered went."""
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and "the payload went to" in r.getMessage()
    ]


# -- transient failures ----------------------------------------------------------------------


async def test_a_transient_failure_is_retried_with_backoff_and_the_dead_letter_arrives(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    got = await dlq_reader(kit)
    flaky = await target(kit, lambda m, n: EmitError("broker hiccup") if n <= 2 else None)
    with caplog.at_level(logging.WARNING, logger="dispytch"):
        d, handled, poison_calls = await run_poison_then_valid(
            kit, DeadLetter(flaky, route=DLQ, publish_attempts=3, backoff=FAST)
        )
        await kit.until(lambda: got, "the dead letter")
    assert len(flaky.sends) == 3  # two failures, then published, within one delivery
    assert got[0].payload == kit.emitter.build(Job(n=-1, blob=POISON)).payload  # whole
    assert HEADER_TRUNCATED not in got[0].headers
    assert handled == list(range(VALID))  # exactly once each, in order
    assert poison_calls == [(1, 1), (1, 2), (1, 3)]  # Retry's attempts, one delivery
    assert d.stats["dead_lettered"] == 1 and d.stats["requeued"] == 0
    assert kit.broker.rejected == [] and kit.unacked() == 0
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len([m for m in retries if "Dead-lettering" in m]) == 2
    assert poison_errors(caplog) == []


async def test_an_outage_requeues_the_original_until_max_deliveries_then_rejects_it(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    down = await target(kit, lambda m, n: ConnectionError("dead-letter broker is down"))
    with caplog.at_level(logging.ERROR, logger="dispytch"):
        d, handled, poison_calls = await run_poison_then_valid(
            kit,
            DeadLetter(down, route=DLQ, publish_attempts=2, max_deliveries=3, backoff=FAST),
            attempts=1,
        )
    # Deliveries 1 and 2: two publish attempts each, then handed back. Delivery 3: two
    # attempts, then the truncated dead letter (fails too), then the reject path.
    assert poison_calls == [(1, 1), (2, 1), (3, 1)]
    assert len(down.sends) == 2 + 2 + 3
    assert d.stats["requeued"] == 2 and d.stats["rejected"] == 1
    assert handled == list(range(VALID))
    (rejected,) = kit.broker.rejected
    assert rejected.route == "jobs" and rejected.attempt == 3
    assert len(rejected.payload) > len(POISON)  # the original, whole
    redeliveries = [
        r.getMessage()
        for r in caplog.records
        if "will be delivered again" in r.getMessage() and r.name == "dispytch.dead_letter"
    ]
    assert len(redeliveries) == 2
    assert "delivery 1 of at most 3" in redeliveries[0]
    (final,) = poison_errors(caplog)
    text = final.getMessage()
    assert "DeadLetterFailedError" in text
    assert "from 'jobs'" in text and f"({len(rejected.payload)} bytes" in text
    assert "ValueError: poison: cannot handle this job" in text  # the handler's error
    assert "ConnectionError: dead-letter broker is down" in text  # the dead-letter error
    assert "rejected to the broker's reject path" in text  # where the payload went


# -- permanent failures ----------------------------------------------------------------------


async def test_a_target_that_always_rejects_ends_in_the_reject_path_at_once(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    refused = await target(kit, lambda m, n: EmitRejectedError("refused by policy"))
    with caplog.at_level(logging.ERROR, logger="dispytch"):
        d, handled, poison_calls = await run_poison_then_valid(
            kit, DeadLetter(refused, route=DLQ, publish_attempts=5, backoff=FAST)
        )
    assert [len(m.payload) > len(POISON) for m in refused.sends] == [
        True,
        False,
    ]  # whole, truncated
    assert refused.sends[1].headers[HEADER_TRUNCATED] == "1"
    assert poison_calls == [(1, 1), (1, 2), (1, 3)]  # never handed back: one delivery
    assert d.stats["rejected"] == 1 and d.stats["requeued"] == 0
    assert handled == list(range(VALID))
    (rejected,) = kit.broker.rejected
    size = len(rejected.payload)
    # One ERROR line for the poison, with everything needed to find it again.
    (final,) = poison_errors(caplog)
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    text = final.getMessage()
    assert f"from 'jobs' ({size} bytes" in text
    assert "ValueError: poison: cannot handle this job" in text
    assert "dead letter to 'jobs.dlq' failed with EmitRejectedError: refused by policy" in text
    assert (
        "the payload went to nowhere: the truncated dead letter to 'jobs.dlq' failed too "
        "(EmitRejectedError: refused by policy); rejected to the broker's reject path"
    ) in text


async def test_a_too_large_dead_letter_becomes_a_truncated_one_with_a_reference(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    got = await dlq_reader(kit)

    def size_limit(message: OutgoingMessage, n: int) -> Exception | None:
        if len(message.payload) > 10_000:
            return EmitRejectedError(f"message of {len(message.payload)} bytes is too large")
        return None

    limited = await target(kit, size_limit)
    with caplog.at_level(logging.ERROR, logger="dispytch"):
        d, handled, poison_calls = await run_poison_then_valid(
            kit, DeadLetter(limited, route=DLQ, backoff=FAST)
        )
        await kit.until(lambda: got, "the truncated dead letter")
    original = kit.emitter.build(Job(n=-1, blob=POISON))
    assert handled == list(range(VALID)) and poison_calls == [(1, 1), (1, 2), (1, 3)]
    assert d.stats["dead_lettered"] == 1 and d.stats["rejected"] == 0
    assert kit.broker.rejected == [] and kit.unacked() == 0
    (dead,) = got
    digest = hashlib.sha256(original.payload).hexdigest()
    h = dead.headers
    assert h[HEADER_TRUNCATED] == "1"
    assert h[HEADER_CONTENT_TYPE] == TRUNCATED_CONTENT_TYPE
    assert h[HEADER_ORIGINAL_SIZE] == str(len(original.payload))
    assert h[HEADER_ORIGINAL_SHA256] == digest
    assert h[HEADER_ORIGINAL_ROUTE] == "jobs"
    assert h[HEADER_ERROR_TYPE] == "builtins.ValueError"
    assert h["dispytch-event-type"] == "job"  # the original headers travel too
    record = json.loads(dead.payload)
    assert record["error"] == {
        "type": "builtins.ValueError",
        "message": "poison: cannot handle this job",
        "attempts": 3,
    }
    assert record["dead_letter_error"]["type"] == "dispytch.errors.EmitRejectedError"
    assert "is too large" in record["dead_letter_error"]["message"]
    ref = record["original"]
    assert ref["route"] == "jobs" and ref["size"] == len(original.payload)
    assert ref["sha256"] == digest
    assert ref["headers"]["dispytch-event-type"] == "job"
    assert ref["metadata"] == {"group": "g"}  # the memory transport's metadata
    assert ref["delivery_attempt"] == 1
    (line,) = poison_errors(caplog)
    text = line.getMessage()
    assert f"({len(original.payload)} bytes" in text
    assert "ValueError: poison: cannot handle this job" in text
    assert "EmitRejectedError: message of" in text
    assert "a truncated dead letter to 'jobs.dlq'" in text and digest in text


async def test_max_payload_bytes_sends_the_truncated_dead_letter_without_trying_the_whole(
    kit: Kit,
) -> None:
    got = await dlq_reader(kit)
    fine = await target(kit, lambda m, n: None)
    d, handled, _ = await run_poison_then_valid(
        kit, DeadLetter(fine, route=DLQ, max_payload_bytes=50_000)
    )
    await kit.until(lambda: got, "the truncated dead letter")
    assert len(fine.sends) == 1 and fine.sends[0].headers[HEADER_TRUNCATED] == "1"
    record = json.loads(got[0].payload)
    assert record["dead_letter_error"]["type"].endswith("PayloadTooLargeError")
    assert "above max_payload_bytes=50000" in record["dead_letter_error"]["message"]
    assert handled == list(range(VALID)) and d.stats["dead_lettered"] == 1


async def test_a_serialisation_error_is_permanent(kit: Kit) -> None:
    got = await dlq_reader(kit)

    def unserialisable(message: OutgoingMessage, n: int) -> Exception | None:
        return TypeError("cannot encode header") if n == 1 else None

    t = await target(kit, unserialisable)
    d, handled, _ = await run_poison_then_valid(kit, DeadLetter(t, route=DLQ, backoff=FAST))
    await kit.until(lambda: got, "the truncated dead letter")
    assert len(t.sends) == 2 and got[0].headers[HEADER_TRUNCATED] == "1"
    assert handled == list(range(VALID))


async def test_an_error_caused_by_a_declared_permanent_one_is_permanent(kit: Kit) -> None:
    class QuotaExceeded(Exception):
        pass

    def quota(message: OutgoingMessage, n: int) -> Exception | None:
        if n > 1:
            return None
        try:
            raise QuotaExceeded("over quota")
        except QuotaExceeded as exc:
            err = EmitError("the broker said no")
            err.__cause__ = exc
            return err

    got = await dlq_reader(kit)
    t = await target(kit, quota)
    dl = DeadLetter(t, route=DLQ, permanent=QuotaExceeded, backoff=FAST)
    d, handled, _ = await run_poison_then_valid(kit, dl)
    await kit.until(lambda: got, "the truncated dead letter")
    assert len(t.sends) == 2 and got[0].headers[HEADER_TRUNCATED] == "1"
    assert dl.is_permanent(EmitError("plain outage")) is False
    predicate = DeadLetter(t, permanent=lambda e: "quota" in str(e))
    assert predicate.is_permanent(EmitError("over quota")) is True
    assert predicate.is_permanent(EmitError("timeout")) is False


async def test_a_dead_letter_route_that_cannot_be_computed_rejects_with_one_error(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    fine = await target(kit, lambda m, n: None)

    def route(ctx: HandlerContext) -> MemoryEventRoute:
        raise KeyError("tenant")

    with caplog.at_level(logging.ERROR, logger="dispytch"):
        d, handled, _ = await run_poison_then_valid(kit, DeadLetter(fine, route=route))
    assert fine.sends == [] and d.stats["rejected"] == 1
    assert handled == list(range(VALID))
    (line,) = poison_errors(caplog)
    assert "dead letter failed with KeyError: 'tenant'" in line.getMessage()
    assert "its dead-letter route could not be computed" in line.getMessage()


def test_which_dead_letter_failures_are_permanent() -> None:
    dl = DeadLetter(MemoryProducer())
    for transient in (
        EmitError("outage"),
        ConnectionError("refused"),
        TimeoutError("slow"),
        OSError("network unreachable"),
    ):
        assert dl.is_permanent(transient) is False, transient
    rejected_cause = EmitError("wrapped")
    rejected_cause.__cause__ = EmitRejectedError("too large")
    for permanent in (
        EmitRejectedError("too large"),
        rejected_cause,
        TypeError("not serialisable"),
        ValueError("bad value"),
        RuntimeError("unknown kind"),
    ):
        assert dl.is_permanent(permanent) is True, permanent
    # The handler's exception is every publish error's implicit context: it must not count.
    try:
        try:
            raise ValueError("the handler's error")
        except ValueError:
            raise EmitError("outage") from None
    except EmitError as outage:
        assert dl.is_permanent(outage) is False


def test_the_new_errors_say_how_the_dispatcher_treats_them() -> None:
    assert issubclass(DeadLetterError, RequeueMessage)  # handed back for redelivery
    assert issubclass(DeadLetterFailedError, DispytchError)
    assert not issubclass(DeadLetterFailedError, RequeueMessage)  # failed for good


def test_dead_letter_arguments_are_checked() -> None:
    p = MemoryProducer()
    with pytest.raises(ValueError, match=r"publish_attempts=\.\.\.\) must be at least 1"):
        DeadLetter(p, publish_attempts=0)
    with pytest.raises(ValueError, match=r"max_deliveries=\.\.\.\) must be at least 1, or None"):
        DeadLetter(p, max_deliveries=0)
    with pytest.raises(ValueError, match=r"max_payload_bytes=\.\.\.\) must not be negative"):
        DeadLetter(p, max_payload_bytes=-1)


# -- Retry never retries what cannot succeed ---------------------------------------------------


async def _retry_once_on(kit: Kit, caplog: pytest.LogCaptureFixture, emit: Any) -> Any:
    d = kit.dispatcher()
    calls: list[int] = []

    @d.handler(topic="jobs", middlewares=[Retry(attempts=5, delay=0.001, jitter=0)])
    async def work(event: Event[Job]) -> None:
        calls.append(event.attempt)

    with caplog.at_level(logging.WARNING, logger="dispytch"):
        async with d:
            await emit()
            await kit.until(lambda: d.stats["rejected"] == 1, "the rejection")
    assert calls == []
    assert [r for r in caplog.records if "retrying in" in r.getMessage()] == []
    assert d.stats["invalid_payload"] == 1 or d.stats["failed_handlers"] == 1
    return d


async def test_retry_does_not_retry_an_invalid_payload(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    async def emit() -> None:
        await kit.producer.send(
            OutgoingMessage(MemoryEventRoute(topic="jobs"), b'{"n": "not a number"}', {})
        )

    d = await _retry_once_on(kit, caplog, emit)
    assert d.stats["invalid_payload"] == 1
    assert "invalid payload on route 'jobs'" in caplog.text


async def test_retry_does_not_retry_an_unknown_content_type(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    async def emit() -> None:
        headers = {HEADER_CONTENT_TYPE: "application/x-nobody-decodes-this"}
        await kit.producer.send(OutgoingMessage(MemoryEventRoute(topic="jobs"), b"\x00", headers))

    await _retry_once_on(kit, caplog, emit)
    assert "application/x-nobody-decodes-this" in caplog.text


async def test_retry_does_not_retry_a_route_parameter_that_does_not_convert(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher()
    seen: list[int] = []

    @d.handler(
        topic="user.{user_id}.events", middlewares=[Retry(attempts=5, delay=0.001, jitter=0)]
    )
    async def on_user(user_id: int) -> None:
        seen.append(user_id)

    route = MemoryEventRoute(topic="user.ann.events")
    with caplog.at_level(logging.WARNING, logger="dispytch"):
        async with d:
            await kit.producer.send(OutgoingMessage(route, b"{}", {}))
            await kit.until(lambda: d.stats["rejected"] == 1, "the rejection")
    assert seen == []
    assert [r for r in caplog.records if "retrying in" in r.getMessage()] == []
    assert "RouteParamError" in caplog.text and "user_id='ann'" in caplog.text


def test_retry_gives_up_on_what_cannot_succeed_whatever_it_is_told() -> None:
    from dispytch.errors import PayloadError, PluginError, RouteParamError

    r = Retry(give_up_on=KeyError)
    for kind in (PayloadError, RouteParamError, PluginError, RequeueMessage, KeyError):
        assert issubclass(kind, r.give_up_on)


def test_retry_arguments_that_would_make_delays_shrink_or_negative_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Retry\(factor=\.\.\.\) must be at least 1"):
        Retry(factor=0.5)
    with pytest.raises(ValueError, match=r"must not be negative"):
        Retry(delay=-1)
