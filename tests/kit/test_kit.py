"""The testing kit on a small service: swapping, recording, idle, retries, faults."""

from __future__ import annotations

import asyncio
from typing import Annotated

import pytest
from dispytch import (
    DeadLetter,
    Dependency,
    Event,
    EventBase,
    EventDispatcher,
    EventEmitter,
    HandlerContext,
    Retry,
    Router,
    Timeout,
    TopicRoute,
    TopicSubscription,
)
from dispytch.memory import MemoryConsumer, MemoryProducer
from dispytch.testing import Match, memory


class SignUp(EventBase):
    __route__ = TopicRoute(topic="signups")
    __event_type__ = "sign_up"
    email: str


class UserRegistered(EventBase):
    __route__ = TopicRoute(topic="users.{user_id}")
    __event_type__ = "user_registered"
    user_id: int
    email: str


class WelcomeSent(EventBase):
    __route__ = TopicRoute(topic="mail")
    __event_type__ = "welcome_sent"
    user_id: int


class Mailer:
    def __init__(self) -> None:
        self.sent: list[int] = []

    async def send(self, user_id: int) -> None:
        self.sent.append(user_id)


CURRENT: dict[str, Mailer] = {}


async def get_mailer() -> Mailer:
    return CURRENT["mailer"]


class Service:
    """A service as a user writes it: its own emitter and dispatcher, from URLs."""

    def __init__(self) -> None:
        self.emitter = EventEmitter.from_url("memory://never-used-by-tests")
        self.dispatcher = EventDispatcher.from_url("memory://never-used-by-tests")
        self.mailer = CURRENT["mailer"] = Mailer()
        self.seen: list[tuple[str, int]] = []  # (event id, the handler's try)
        self.deliveries: list[int] = []  # the broker's delivery attempt
        self.next_id = 0
        router = Router()

        @router.handler(TopicSubscription(topic="signups"))
        async def on_signup(event: Event[SignUp]) -> None:
            self.next_id += 1
            await self.emitter.emit(UserRegistered(user_id=self.next_id, email=event.body.email))

        @router.handler(
            TopicSubscription(topic="users.{user_id}"),
            middlewares=[
                DeadLetter(self.emitter, route=TopicRoute(topic="dead")),
                Retry(attempts=3, delay=30.0),
                Timeout(60.0),
            ],
        )
        async def on_registered(
            event: Event[UserRegistered],
            user_id: int,
            mail: Annotated[Mailer, Dependency(get_mailer)],
            ctx: HandlerContext,
        ) -> None:
            self.seen.append((event.headers["dispytch-event-id"], ctx.attempt))
            self.deliveries.append(event.attempt)
            if event.body.email.endswith("@slow"):
                await asyncio.sleep(3600)  # Timeout(60) cuts it
            await mail.send(user_id)
            await self.emitter.emit(WelcomeSent(user_id=user_id))

        self.dispatcher.add_router(router)


async def test_a_signup_flows_through_handlers_that_emit() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher) as kit:
        await kit.emit(SignUp(email="ada@example.com"))
        await kit.idle()
        kit.assert_emitted(UserRegistered, user_id=1, email="ada@example.com")
        kit.assert_emitted(WelcomeSent, user_id=1, times=1)
        kit.assert_emitted_in_order(UserRegistered, WelcomeSent)
        kit.assert_nothing_else_emitted()
    assert svc.mailer.sent == [1]
    # The originals are back afterwards.
    assert isinstance(svc.emitter.producer, MemoryProducer)
    assert type(svc.emitter.producer).__name__ == "MemoryProducer"
    assert type(svc.dispatcher.consumer) is MemoryConsumer


async def test_failures_list_what_was_emitted() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher) as kit:
        await kit.emit(SignUp(email="ada@example.com"))
        await kit.idle()
        with pytest.raises(AssertionError) as info:
            kit.assert_emitted(UserRegistered, user_id=2)
        text = str(info.value)
        assert "UserRegistered(user_id=2)" in text
        assert "emitted 0 time(s)" in text
        assert "user_registered on 'users.1'" in text and "welcome_sent on 'mail'" in text
        with pytest.raises(AssertionError, match="exactly 2 time"):
            kit.assert_emitted(WelcomeSent, times=2)
        with pytest.raises(AssertionError, match="no WelcomeSent"):
            kit.assert_not_emitted(WelcomeSent, user_id=1)
        kit.assert_not_emitted(WelcomeSent, user_id=5)
        with pytest.raises(AssertionError, match=r"no UserRegistered\(\) after number 2"):
            kit.assert_emitted_in_order(WelcomeSent, UserRegistered)
        kit.assert_emitted(WelcomeSent(user_id=1))  # an instance matches all its fields
        with pytest.raises(AssertionError, match="1 emission\\(s\\) no assertion expected"):
            kit.assert_nothing_else_emitted()
        kit.assert_emitted(Match(UserRegistered, email="ada@example.com"), topic=None)
        kit.assert_nothing_else_emitted()


async def test_retry_backoff_takes_no_real_time() -> None:
    svc = Service()
    fault = None
    async with memory(svc.emitter, svc.dispatcher) as kit:
        fault = kit.faults.fail(svc.mailer, "send", times=2)
        await kit.emit(SignUp(email="grace@example.com"))
        await kit.idle()
        kit.assert_emitted(WelcomeSent, user_id=1)
        assert [attempt for _, attempt in svc.seen] == [1, 2, 3]
        assert (
            kit.clock is not None and kit.clock.jumped > 5
        )  # the (jittered) 30 s retry delays, skipped
    assert fault.raised == 2 and fault.calls == 3
    assert "send" not in vars(svc.mailer)  # the fault was undone


async def test_exhausted_retries_dead_letter() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher) as kit:
        kit.faults.fail(svc.mailer, "send", times=10, error=ValueError("bounced"))
        await kit.emit(SignUp(email="nobody@example.com"))
        await kit.idle()
        kit.assert_not_emitted(WelcomeSent)
        [record] = [r for r in kit.emitted if r.topic == "dead"]
        assert record.headers["dispytch-error-type"].endswith("ValueError")
        assert "bounced" in record.headers["dispytch-error-message"]
        assert kit.dispatchers[0].stats["dead_lettered"] == 1


async def test_timeout_middleware_in_virtual_time() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher) as kit:
        await kit.emit(SignUp(email="sloth@slow"))
        await kit.idle()
        assert [attempt for _, attempt in svc.seen] == [1, 2, 3]  # each cut by Timeout(60)
        assert [r.topic for r in kit.emitted].count("dead") == 1


async def test_crash_before_ack_redelivers() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher) as kit:
        kit.faults.crash_before_ack(UserRegistered)
        await kit.emit(SignUp(email="ada@example.com"))
        await kit.idle()
        # Handled twice: the same event, delivered again with attempt 2 by the broker.
        (id1, _), (id2, _) = svc.seen
        assert id1 == id2 and svc.deliveries == [1, 2]
        kit.assert_emitted(WelcomeSent, user_id=1, times=2)


async def test_duplicate_delivery() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher) as kit:
        kit.faults.duplicate("users.{id}")
        await kit.emit(SignUp(email="ada@example.com"))
        await kit.idle()
        (id1, _), (id2, _) = svc.seen
        assert id1 == id2 and svc.deliveries == [1, 1]
        assert svc.mailer.sent == [1, 1]


async def test_idle_lists_what_is_pending() -> None:
    emitter = EventEmitter.from_url("memory://unused")
    dispatcher = EventDispatcher.from_url("memory://unused")
    release = asyncio.Event()

    @dispatcher.handler(TopicSubscription(topic="signups"))
    async def stuck(event: Event[SignUp]) -> None:
        await release.wait()

    async with memory(emitter, dispatcher) as kit:
        await kit.emit(SignUp(email="a@example.com"))
        await kit.emit(SignUp(email="b@example.com"))
        with pytest.raises(AssertionError) as info:
            await kit.idle(timeout=30)
        text = str(info.value)
        assert "2 message(s) pending" in text
        assert "sign_up on 'signups' (attempt 1)" in text
        release.set()
        await kit.idle()


async def test_bad_targets_and_running_dispatcher() -> None:
    with pytest.raises(TypeError, match="EventEmitter and EventDispatcher"):
        memory(object())  # type: ignore[arg-type]
    dispatcher = EventDispatcher.from_url("memory://kit-running")

    @dispatcher.handler(TopicSubscription(topic="x"))
    async def h(event: Event[SignUp]) -> None: ...

    async with dispatcher:
        with pytest.raises(RuntimeError, match="running already"):
            async with memory(dispatcher):
                pass


async def test_start_false_lets_the_service_start_itself() -> None:
    svc = Service()
    async with memory(svc.emitter, svc.dispatcher, start=False) as kit:
        assert not svc.dispatcher.running
        async with svc.emitter, svc.dispatcher:  # e.g. the service's own lifespan
            await kit.emit(SignUp(email="ada@example.com"))
            await kit.idle()
        kit.assert_emitted(WelcomeSent, user_id=1)
