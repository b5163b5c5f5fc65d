"""A rejected message carries why (``Message.error``), for transports that dead-letter."""

from __future__ import annotations

from dispytch import Event, EventBase, EventDispatcher
from dispytch.errors import PayloadError, UnknownRouteError
from dispytch.memory import MemoryEventRoute
from dispytch.routes import TopicSubscription
from dispytch.transport import OutgoingMessage

from .conftest import Kit


class Job(EventBase):
    __topic__ = "jobs"
    n: int


async def test_a_handler_failure_is_the_rejected_message_s_error(kit: Kit) -> None:
    d = kit.dispatcher()

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        raise RuntimeError(f"job {event.body.n} broke")

    async with d:
        await kit.emitter.emit(Job(n=7))
        await kit.until(lambda: len(kit.broker.rejected) == 1, "the rejection")
    error = kit.broker.rejected[0].error
    assert isinstance(error, RuntimeError) and str(error) == "job 7 broke"


async def test_an_invalid_payload_and_an_unknown_route_say_so(kit: Kit) -> None:
    consumer = kit.consumer()
    # The consumer also listens to a topic no handler takes (a user's own subscription).
    consumer.subscribe([TopicSubscription(topic="nowhere")])
    d = EventDispatcher(consumer)
    kit.dispatchers.append(d)

    @d.handler(topic="jobs.{kind}")
    async def work(event: Event[Job], kind: str) -> None:
        if kind == "never":
            raise AssertionError("not routed here")

    @d.handler(topic="other")
    async def other(event: Event[Job]) -> None: ...

    async with d:
        await kit.producer.send(
            OutgoingMessage(MemoryEventRoute(topic="jobs.a"), b'{"n": "x"}', {})
        )
        kit.broker.publish("nowhere", b"{}", {}, None)
        await kit.until(lambda: len(kit.broker.rejected) == 2, "both rejections")
    by_route = {m.route: m.error for m in kit.broker.rejected}
    assert isinstance(by_route["jobs.a"], PayloadError)
    assert "n:" in str(by_route["jobs.a"])
    assert isinstance(by_route["nowhere"], UnknownRouteError)
    assert "'nowhere'" in str(by_route["nowhere"])


async def test_a_handled_message_has_no_error(kit: Kit) -> None:
    d = kit.dispatcher()
    seen = []

    @d.handler(topic="jobs")
    async def work(event: Event[Job]) -> None:
        seen.append(event.message)

    async with d:
        await kit.emitter.emit(Job(n=1))
        await kit.until(lambda: len(seen) == 1, "the handling")
    assert seen[0].error is None
