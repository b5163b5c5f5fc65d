"""Commands and queries through a dispatcher on the memory transport: the same routers
as on a Bus, events after success, fire-and-forget commands, the clear errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dispytch import (
    Bus,
    Command,
    Event,
    EventCollector,
    EventDispatcher,
    EventEmitter,
    HandlerRegistrationError,
    RemoteError,
    Router,
)
from dispytch.cqrs import RequestReplyUnsupportedError, RequestTimeoutError
from dispytch.memory import MemoryBroker, MemoryConsumer, MemoryProducer
from dispytch.routes import TopicSubscription
from dispytch.transport import OutgoingMessage

from tests.cqrs.models import (
    AuditLogged,
    CountUsers,
    CreateUser,
    GetUser,
    LocalQuery,
    RenameUser,
    User,
    UserCreated,
)

WAIT = 5.0


async def until(pred: Any, what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not pred():
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    yield MemoryBroker(uuid.uuid4().hex)


def users(seen: list[Any]) -> Router:
    router = Router()
    names: dict[int, str] = {}

    @router.command(CreateUser)
    async def create(cmd: CreateUser, events: EventCollector) -> UserCreated:
        if cmd.name == "bad":
            events.add(AuditLogged(what="should never leave"))
            raise ValueError("bad name")
        uid = len(names) + 1
        names[uid] = cmd.name
        events.add(AuditLogged(what=f"created {uid}"))
        return UserCreated(id=uid, name=cmd.name)

    @router.query(GetUser)
    async def get(query: GetUser) -> User:
        return User(id=query.id, name=names[query.id])

    @router.handler(topic="cqrs.users.events")
    async def on_created(event: Event[UserCreated]) -> None:
        seen.append(event.body)

    @router.handler(topic="cqrs.audit")
    async def on_audit(event: Event[AuditLogged]) -> None:
        seen.append(event.body.what)

    return router


async def test_same_router_on_a_bus_and_a_dispatcher(broker: MemoryBroker) -> None:
    # In process.
    seen_bus: list[Any] = []
    bus = Bus()
    bus.add_router(users(seen_bus))
    async with bus:
        created = await bus.send(CreateUser(name="ann"))
        assert (await bus.ask(GetUser(id=created.id))).name == "ann"
        await bus.join()
    assert sorted(map(str, seen_bus)) == sorted(map(str, [created, "created 1"]))

    # The same router code behind a dispatcher, events emitted through the broker.
    seen: list[Any] = []
    events = EventEmitter(MemoryProducer(broker))
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"), emitter=events)
    dispatcher.add_router(users(seen))
    caller = EventEmitter(MemoryProducer(broker))
    async with events, dispatcher, caller:
        created = await caller.request(CreateUser(name="bo"), timeout=WAIT)
        assert created == UserCreated(id=1, name="bo")
        user = await caller.request(GetUser(id=1), timeout=WAIT)
        assert isinstance(user, User) and user.name == "bo"
        with pytest.raises(RemoteError, match="ValueError: bad name"):
            await caller.request(CreateUser(name="bad"), timeout=WAIT)
        await until(lambda: len(seen) >= 2, "the events of the command")
        await asyncio.sleep(0.05)  # anything else would arrive by now
    assert sorted(map(str, seen)) == sorted(map(str, [created, "created 1"]))
    assert dispatcher.stats["requests_answered"] == 2
    assert dispatcher.stats["requests_failed"] == 1


async def test_events_without_an_emitter_are_an_error_reply(broker: MemoryBroker) -> None:
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"))
    dispatcher.add_router(users([]))
    caller = EventEmitter(MemoryProducer(broker))
    async with dispatcher, caller:
        with pytest.raises(RemoteError, match="no emitter") as info:
            await caller.request(CreateUser(name="x"), timeout=WAIT)
    assert info.value.type == "EmitRejectedError"


async def test_fire_and_forget_command_with_emit(broker: MemoryBroker) -> None:
    done: list[str] = []
    seen: list[str] = []
    events = EventEmitter(MemoryProducer(broker))
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"), emitter=events)

    @dispatcher.command(RenameUser)
    async def rename(cmd: Command[RenameUser], collected: EventCollector) -> None:
        assert cmd.correlation_id is None and cmd.deadline is None
        if cmd.body.name == "fail":
            collected.add(AuditLogged(what="leak"))
            raise RuntimeError("rename failed")
        collected.add(AuditLogged(what=f"renamed {cmd.body.id}"))
        done.append(cmd.body.name)

    @dispatcher.handler(topic="cqrs.audit")
    async def on_audit(event: Event[AuditLogged]) -> None:
        seen.append(event.body.what)

    caller = EventEmitter(MemoryProducer(broker))
    async with events, dispatcher, caller:
        await caller.emit(RenameUser(id=1, name="fail"))
        await caller.emit(RenameUser(id=2, name="ok"))
        await until(lambda: seen == ["renamed 2"], "the command's event")
        await until(lambda: len(broker.rejected) == 1, "the failed command rejected")
    assert done == ["ok"]
    assert seen == ["renamed 2"]


async def test_envelope_carries_correlation_and_deadline(broker: MemoryBroker) -> None:
    got: list[Any] = []
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"))

    @dispatcher.query(GetUser)
    async def get(query: Command[GetUser]) -> User:
        got.append((query.correlation_id, query.deadline))
        return User(id=query.body.id, name="e")

    caller = EventEmitter(MemoryProducer(broker))
    async with dispatcher, caller:
        await caller.request(GetUser(id=5), timeout=30)
    correlation, deadline = got[0]
    assert correlation and deadline is not None


async def test_reply_uses_the_configured_serializer(broker: MemoryBroker) -> None:
    pytest.importorskip("msgpack")
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"), serializer="msgpack")

    @dispatcher.query(GetUser)
    async def get(query: GetUser) -> User:
        return User(id=query.id, name="packed")

    @dispatcher.query(CountUsers)
    async def count(query: CountUsers) -> int:
        return 12

    caller = EventEmitter(MemoryProducer(broker))
    content_types: list[str | None] = []
    async with dispatcher, caller:
        assert (await caller.request(GetUser(id=1), timeout=WAIT)).name == "packed"
        # Watch what arrives at the caller's one reply address.
        ((address, deliver),) = broker.reply_addresses.items()

        def spy(reply: Any) -> None:
            content_types.append(reply.headers.get("dispytch-content-type"))
            deliver(reply)

        broker.reply_addresses[address] = spy
        assert await caller.request(CountUsers(), timeout=WAIT) == 12
    assert content_types == ["application/msgpack"]


def test_capability_missing_is_a_clear_error() -> None:
    class Plain:
        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        async def send(self, message: OutgoingMessage) -> None: ...
        async def send_batch(self, messages: Any) -> None: ...

    emitter = EventEmitter(Plain())

    async def go() -> None:
        await emitter.request(GetUser(id=1), timeout=1)

    with pytest.raises(RequestReplyUnsupportedError, match="request_reply"):
        asyncio.run(go())


async def test_no_reply_when_the_consumer_cannot_reply(broker: MemoryBroker) -> None:
    class Mute(MemoryConsumer):
        """A consumer of a transport without request/reply."""

        reply_address = None  # type: ignore[assignment]

    # Not a ReplySender: the request runs as a plain message, and the caller times out.
    consumer = Mute(broker, group="svc")
    dispatcher = EventDispatcher(consumer)
    ran: list[int] = []

    @dispatcher.query(GetUser)
    async def get(query: GetUser) -> User:
        ran.append(query.id)
        return User(id=query.id, name="n")

    caller = EventEmitter(MemoryProducer(broker))
    async with dispatcher, caller:
        with pytest.raises(RequestTimeoutError, match="No reply"):
            await caller.request(GetUser(id=3), timeout=0.3)
    assert ran == [3]


async def test_dispatcher_refuses_two_handlers_and_local_queries(broker: MemoryBroker) -> None:
    a, b = Router(), Router()
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"))
    dispatcher.add_router(a)
    dispatcher.add_router(b)

    @a.query(GetUser)
    async def one(query: GetUser) -> User:
        raise AssertionError

    @b.query(GetUser, subscription=TopicSubscription(topic="elsewhere"))
    async def two(query: GetUser) -> User:
        raise AssertionError

    with pytest.raises(HandlerRegistrationError, match=r"one.*two"):
        await dispatcher.start()

    local = EventDispatcher(MemoryConsumer(broker, group="svc2"))

    @local.query(LocalQuery)
    async def echo(query: LocalQuery) -> str:
        return query.text

    with pytest.raises(HandlerRegistrationError, match="no route with a topic"):
        await local.start()


async def test_event_fast_path_is_unchanged_by_request_handlers(broker: MemoryBroker) -> None:
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"))

    @dispatcher.handler(topic="cqrs.users.events")
    async def on(event: Event[UserCreated]) -> None: ...

    @dispatcher.query(GetUser)
    async def get(query: Event[GetUser]) -> User:
        return User(id=query.body.id, name="ev")

    caller = EventEmitter(MemoryProducer(broker))
    async with dispatcher, caller:
        assert (await caller.request(GetUser(id=1), timeout=WAIT)).name == "ev"
        entries = {e.spec.name.rsplit(".", 1)[-1]: e for e in dispatcher._routes.entries}
    assert entries["on"].direct is not None  # the event handler keeps the short path
    assert entries["get"].direct is None  # the query is answered through the responder


async def test_error_details_over_the_wire(broker: MemoryBroker) -> None:
    class Busy(Exception):
        retryable = True

    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"))

    @dispatcher.query(GetUser)
    async def get(query: GetUser) -> User:
        if query.id == 1:
            raise Busy("try later")
        if query.id == 2:
            raise TimeoutError("db slow")
        if query.id == 3:
            raise PermissionError("x" * 5000)
        return "not a user"  # type: ignore[return-value]

    caller = EventEmitter(MemoryProducer(broker))
    async with dispatcher, caller:
        with pytest.raises(RemoteError) as busy:
            await caller.request(GetUser(id=1), timeout=WAIT)
        with pytest.raises(RemoteError) as slow:
            await caller.request(GetUser(id=2), timeout=WAIT)
        caller.register_error(PermissionError)
        with pytest.raises(PermissionError) as denied:
            await caller.request(GetUser(id=3), timeout=WAIT)
        with pytest.raises(RemoteError) as invalid:
            await caller.request(GetUser(id=4), timeout=WAIT)
    assert (busy.value.type, busy.value.retryable) == ("Busy", True)
    assert (slow.value.type, slow.value.retryable) == ("TimeoutError", True)
    assert len(str(denied.value)) == 1000  # the text is bounded in the reply
    assert invalid.value.type == "ValidationError" and not invalid.value.retryable


async def test_emitter_stop_fails_waiting_requests_and_restart_works(
    broker: MemoryBroker,
) -> None:
    from dispytch import NotStartedError

    gate = asyncio.Event()
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"))

    @dispatcher.query(GetUser)
    async def get(query: GetUser) -> User:
        if query.id == 1:
            await gate.wait()
        return User(id=query.id, name="r")

    caller = EventEmitter(MemoryProducer(broker))
    async with dispatcher:
        await caller.start()
        waiting = asyncio.ensure_future(caller.request(GetUser(id=1), timeout=60))
        await until(lambda: caller._requester is not None and caller._requester.pending, "sent")
        await caller.stop()
        with pytest.raises(NotStartedError, match="stopped while request"):
            await waiting  # at once, not after its 60 s
        gate.set()
        await caller.start()  # a new reply address on the next request
        assert (await caller.request(GetUser(id=2), timeout=WAIT)).name == "r"
        await caller.stop()


async def test_one_reply_address_for_many_requests(broker: MemoryBroker) -> None:
    dispatcher = EventDispatcher(MemoryConsumer(broker, group="svc"), max_in_flight=32)

    @dispatcher.query(GetUser)
    async def get(query: GetUser) -> User:
        await asyncio.sleep(0.01)
        return User(id=query.id, name="m")

    caller = EventEmitter(MemoryProducer(broker))
    async with dispatcher, caller:
        replies = await asyncio.gather(
            *(caller.request(GetUser(id=i), timeout=WAIT) for i in range(50))
        )
        assert len(broker.reply_addresses) == 1
    assert [r.id for r in replies] == list(range(50))
    assert not broker.reply_addresses  # closed with the emitter
