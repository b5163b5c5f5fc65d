"""Failure paths that always end, on the memory transport: a handler raising
``CancelledError`` itself or another ``BaseException``, skipped and invalid messages, a
consumer that closes, and requeue without holding a slot."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from dispytch import Event, EventBase, EventDispatcher
from dispytch.context import CallNext, HandlerContext
from dispytch.errors import ConsumerClosedError, RequeueMessage, UnknownContentTypeError
from dispytch.memory import MemoryConsumer
from dispytch.transport import HEADER_CONTENT_TYPE, HEADER_EVENT_TYPE, Capabilities, Message

from tests.core.test_dispatcher import RecordingConsumer

if TYPE_CHECKING:
    from tests.core.conftest import Kit


class Job(EventBase):
    __topic__ = "jobs"
    __event_type__ = "job"
    n: int


class Abort(BaseException):
    """Like KeyboardInterrupt: not an Exception."""


async def _passthrough(ctx: HandlerContext, call_next: CallNext) -> Any:
    return await call_next(ctx)


@pytest.mark.parametrize("raised", [asyncio.CancelledError, Abort], ids=["cancelled", "base"])
@pytest.mark.parametrize("path", ["direct", "middleware"])
async def test_a_handler_raising_a_base_exception_is_settled_and_frees_its_slot(
    kit: Kit, caplog: pytest.LogCaptureFixture, raised: type[BaseException], path: str
) -> None:
    mws = [_passthrough] if path == "middleware" else []
    d = kit.dispatcher(ordered=True, max_in_flight=8, middlewares=mws)
    total = 40  # five times the slots: a leaked slot would stop the reader
    good: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        if event.body.n < total:
            raise raised("from the handler itself")
        good.append(event.body.n)

    with caplog.at_level(logging.ERROR, logger="dispytch.dispatcher"):
        async with d:
            for i in range(total + 1):
                await kit.emitter.emit(Job(n=i))
            await kit.until(lambda: good == [total], "the message after the failures")
            assert d.in_flight == 0  # every slot came back
    assert d.stats["rejected"] == total and d.stats["aborted_handlers"] == total
    assert len(kit.broker.rejected) == total  # settled by the failure policy
    assert kit.unacked() == 0 and kit.queued() == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == total
    assert raised.__name__ in errors[0].getMessage()
    assert "on route 'jobs'" in errors[0].getMessage()


async def test_a_handler_cancelled_by_stop_is_handed_back_not_rejected(kit: Kit) -> None:
    d = kit.dispatcher()
    started = asyncio.Event()

    @d.handler(topic="jobs")
    async def slow(event: Event[Job]) -> None:
        started.set()
        await asyncio.Event().wait()

    await d.start()
    await kit.emitter.emit(Job(n=1))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(d.stop(timeout=0.05), 5)
    assert kit.broker.rejected == [] and d.stats["rejected"] == 0
    assert kit.queued() == 1  # handed back for redelivery


async def test_skipped_is_logged_at_info_with_route_and_event_type(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher()

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None: ...

    with caplog.at_level(logging.INFO, logger="dispytch.dispatcher"):
        async with d:
            kit.broker.publish("jobs", b'{"n":1}', {HEADER_EVENT_TYPE: "other"}, None)
            await kit.until(lambda: d.stats["skipped"] == 1, "the skip")
    lines = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "'other'" in lines[0].getMessage() and "'jobs'" in lines[0].getMessage()
    assert kit.unacked() == 0 and kit.broker.rejected == []


async def test_invalid_payload_and_unknown_content_type_log_one_line_without_traceback(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    d = kit.dispatcher()
    ok: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        ok.append(event.body.n)

    with caplog.at_level(logging.ERROR, logger="dispytch.dispatcher"):
        async with d:
            kit.broker.publish("jobs", b'{"n":"x"}', {}, None)
            kit.broker.publish("jobs", b"<n>1</n>", {HEADER_CONTENT_TYPE: "text/xml"}, None)
            await kit.emitter.emit(Job(n=2))
            await kit.until(lambda: ok == [2] and d.stats["invalid_payload"] == 2, "all")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    for record in errors:
        assert record.exc_info is None  # no traceback: one line per bad message
        assert "\n" not in record.getMessage()
    text = [r.getMessage() for r in errors]
    assert "route 'jobs' (9 bytes" in text[0] and "n: " in text[0]
    assert "'text/xml'" in text[1] and "application/json" in text[1]  # what is served
    assert len(kit.broker.rejected) == 2


async def test_unknown_content_type_is_a_payload_error_naming_what_is_served(kit: Kit) -> None:
    d = kit.dispatcher()
    msg = Message(b"x", route="r", headers={HEADER_CONTENT_TYPE: "Text/XML; charset=utf-8"})
    with pytest.raises(UnknownContentTypeError) as info:
        d.decode(msg, Job)
    assert info.value.content_type == "text/xml"
    assert "application/json" in info.value.served
    assert "route 'r' (1 bytes)" in str(info.value)
    assert "Install the serializer plugin" in str(info.value).splitlines()[1]


class ClosingConsumer(MemoryConsumer):
    """Yields one message, then its channel is closed under it."""

    async def listen(self) -> AsyncIterator[Message]:
        async for msg in super().listen():
            yield msg
            raise ConsumerClosedError("the channel was closed by the broker")


async def test_consumer_closed_stops_the_dispatcher_and_wait_raises(kit: Kit) -> None:
    d = EventDispatcher(ClosingConsumer(kit.broker, group="g"), stop_timeout=2.0)
    kit.dispatchers.append(d)
    got: list[int] = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        got.append(event.body.n)

    await kit.emitter.emit(Job(n=1))
    await d.start()
    with pytest.raises(ConsumerClosedError, match="closed by the broker"):
        await asyncio.wait_for(d.wait(), 5)
    assert not d.running
    assert got == [1] and kit.unacked() == 0
    assert isinstance(d.failure, ConsumerClosedError)


class CapableConsumer(RecordingConsumer):
    """Records nacks with their delay, and declares given capabilities."""

    def __init__(self, *a: Any, capabilities: Capabilities, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.capabilities = capabilities
        self.delays: list[float | None] = []

    async def nack(self, message: Message, *, requeue: bool, delay: float | None = None) -> None:
        self.delays.append(delay)
        await super().nack(message, requeue=requeue)


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        (Capabilities(delayed_requeue=True), 30.0),  # the broker waits, not a slot
        (Capabilities(requeue=False), None),  # a no-op requeue: no wait at all
    ],
    ids=["delayed-requeue", "no-requeue"],
)
async def test_requeue_does_not_sleep_holding_a_slot(
    kit: Kit, caps: Capabilities, expected: float | None
) -> None:
    consumer = CapableConsumer(kit.broker, group="g", capabilities=caps)
    # A delay far beyond the test's wait: were it slept, the nack would never be seen.
    d = EventDispatcher(consumer, requeue_delay=30.0, max_requeue_delay=60.0, stop_timeout=1)
    kit.dispatchers.append(d)
    assert d.requeue_delay == 30.0 and d.max_requeue_delay == 60.0

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        if event.attempt == 1:
            raise RequeueMessage("not yet")

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: consumer.delays, "the requeue")
        # (the memory broker redelivers it either way: the second attempt is handled)
        await kit.until(lambda: d.stats["handled"] == 1 and d.in_flight == 0, "the redelivery")
    assert consumer.delays[0] == expected
    assert consumer.settled[0] == ("requeue", b'{"n":1}')
    assert d.stats["requeued"] >= 1


SYSTEM_EXIT_APP = """
import asyncio, atexit, sys
from dispytch import Event, EventBase, EventDispatcher, EventEmitter
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryProducer

broker = MemoryBroker("exit")


class Job(EventBase):
    __topic__ = "jobs"
    n: int


dispatcher = EventDispatcher(MemoryConsumer(broker), stop_timeout=1)


@dispatcher.handler(topic="jobs")
async def work(event: Event[Job]) -> None:
    sys.exit(3)


@atexit.register
def report() -> None:
    print("rejected", len(broker.rejected), "unacked", broker.pending("default"), flush=True)


async def main() -> None:
    async with EventEmitter(MemoryProducer(broker)) as emitter:
        await emitter.emit(Job(n=1))
    await dispatcher.start()
    await asyncio.sleep(30)  # the handler's SystemExit ends this much sooner


asyncio.run(main())
"""


async def test_system_exit_from_a_handler_settles_first_then_exits(tmp_path: Any) -> None:
    script = tmp_path / "exit_app.py"
    script.write_text(SYSTEM_EXIT_APP)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 3, err.decode()
    # Settled by the failure policy (rejected) before SystemExit went on up.
    assert "rejected 1 unacked 0" in out.decode()
    assert "SystemExit" in err.decode()  # logged at ERROR
