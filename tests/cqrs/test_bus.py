"""The in-process Bus: one handler per type, typed replies, errors as themselves, events
only after success, class handlers, per-key order, DI and middleware."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dispytch import (
    Acknowledger,
    Bus,
    CallNext,
    Command,
    Dependency,
    Event,
    EventCollector,
    HandlerContext,
    HandlerRegistrationError,
    NotStartedError,
    Query,
    Retry,
    Router,
)
from dispytch.cqrs import NoHandlerError
from pydantic import ValidationError

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


class Repo:
    def __init__(self) -> None:
        self.users: dict[int, str] = {}

    def add(self, name: str) -> int:
        uid = len(self.users) + 1
        self.users[uid] = name
        return uid


def users_router(repo: Repo, seen: list[Any]) -> Router:
    router = Router()

    def get_repo() -> Repo:
        return repo

    @router.command(CreateUser)
    async def create(cmd: CreateUser, r: Repo = Dependency(get_repo)) -> UserCreated:
        return UserCreated(id=r.add(cmd.name), name=cmd.name)

    @router.query(GetUser)
    async def get(query: GetUser) -> User:
        return User(id=query.id, name=repo.users[query.id])

    @router.handler(topic="cqrs.users.events")
    async def on_created(event: Event[UserCreated]) -> None:
        seen.append(event.body)

    return router


async def test_send_ask_publish_typed_round_trip() -> None:
    repo, seen = Repo(), []
    bus = Bus()
    bus.add_router(users_router(repo, seen))
    async with bus:
        created = await bus.send(CreateUser(name="ann"))
        assert created == UserCreated(id=1, name="ann")
        user = await bus.ask(GetUser(id=1))
        assert isinstance(user, User) and user.name == "ann"
        await bus.join()
        # the returned event was published once, after the command succeeded
        assert seen == [UserCreated(id=1, name="ann")]
        await bus.publish(UserCreated(id=9, name="zed"))
        assert seen[-1].id == 9


async def test_the_object_is_passed_as_is() -> None:
    bus = Bus()
    got: list[Any] = []

    @bus.query(GetUser)
    async def get(query: GetUser) -> User:
        got.append(query)
        return User(id=query.id, name="x")

    q = GetUser(id=3)
    async with bus:
        await bus.ask(q)
    assert got[0] is q  # not serialised, not copied


async def test_second_handler_is_an_error_naming_both() -> None:
    router = Router()

    @router.command(CreateUser)
    async def first(cmd: CreateUser) -> UserCreated:
        raise AssertionError

    with pytest.raises(HandlerRegistrationError, match=r"first.*second"):

        @router.command(CreateUser)
        async def second(cmd: CreateUser) -> UserCreated:
            raise AssertionError

    # across routers: found when they meet
    other = Router()

    @other.command(CreateUser)
    async def third(cmd: CreateUser) -> UserCreated:
        raise AssertionError

    with pytest.raises(HandlerRegistrationError, match=r"first.*third"):
        router.include_router(other)

    # nested later into a router that is already included: found at start
    root, a, b = Router(), Router(), Router()
    root.include_router(a)
    root.include_router(b)
    bus = Bus()
    bus.add_router(root)

    @a.query(GetUser)
    async def qa(query: GetUser) -> User:
        raise AssertionError

    @b.query(GetUser)
    async def qb(query: GetUser) -> User:
        raise AssertionError

    with pytest.raises(HandlerRegistrationError, match=r"qa.*qb"):
        await bus.start()


def test_registration_checks_the_kind() -> None:
    router = Router()
    with pytest.raises(HandlerRegistrationError, match="QueryBase subclass"):
        router.query(CreateUser)
    with pytest.raises(HandlerRegistrationError, match="CommandBase subclass"):
        router.command(UserCreated)


async def test_reply_is_validated_against_the_return_annotation() -> None:
    bus = Bus()

    @bus.query(CountUsers)
    async def count(query: CountUsers) -> int:
        return "many"  # type: ignore[return-value]

    async with bus:
        with pytest.raises(ValidationError):
            await bus.ask(CountUsers())


async def test_reply_coerced_to_the_declared_type() -> None:
    bus = Bus()

    @bus.query(GetUser)
    async def get(query: GetUser) -> User:
        return {"id": query.id, "name": "dict"}  # type: ignore[return-value]

    async with bus:
        user = await bus.ask(GetUser(id=2))
    assert user == User(id=2, name="dict")


async def test_handler_error_reaches_the_caller_as_itself() -> None:
    bus = Bus()

    class Taken(Exception):
        pass

    @bus.command(CreateUser)
    async def create(cmd: CreateUser) -> UserCreated:
        raise Taken(cmd.name)

    async with bus:
        with pytest.raises(Taken, match="ann"):
            await bus.send(CreateUser(name="ann"))


async def test_unknown_type_and_kind_mismatch() -> None:
    bus = Bus()

    @bus.query(GetUser)
    async def get(query: GetUser) -> User:
        return User(id=1, name="a")

    async with bus:
        with pytest.raises(NoHandlerError, match="CreateUser"):
            await bus.send(CreateUser(name="x"))
        with pytest.raises(NoHandlerError, match="command handler for GetUser"):
            await bus.send(GetUser(id=1))
        with pytest.raises(TypeError, match="command or query"):
            await bus.publish(CreateUser(name="x"))


async def test_not_started_and_register_after_start() -> None:
    bus = Bus()

    @bus.query(CountUsers)
    async def count(query: CountUsers) -> int:
        return 1

    with pytest.raises(NotStartedError):
        await bus.ask(CountUsers())
    await bus.start()
    with pytest.raises(RuntimeError, match="before the bus starts"):
        bus.query(GetUser)
    assert await bus.ask(CountUsers()) == 1
    await bus.stop()
    with pytest.raises(NotStartedError):
        await bus.ask(CountUsers())


async def test_sync_handlers_and_envelopes() -> None:
    bus = Bus()

    @bus.query(CountUsers)
    def count(query: CountUsers) -> int:  # sync: runs in a worker thread
        return 7

    @bus.query(GetUser)
    async def get(query: Query[GetUser]) -> User:
        assert query.route == "cqrs.users.queries"
        assert query.type == "GetUser"
        return User(id=query.body.id, name="env")

    @bus.command(RenameUser)
    async def rename(cmd: Command[RenameUser]) -> None:
        assert isinstance(cmd, Command)
        assert cmd.body.name == "bo"

    async with bus:
        assert await bus.ask(CountUsers()) == 7
        assert (await bus.ask(GetUser(id=4))).name == "env"
        assert await bus.send(RenameUser(id=1, name="bo")) is None


async def test_class_handlers_get_dependencies_per_message() -> None:
    made: list[Repo] = []

    def get_repo() -> Repo:
        repo = Repo()
        made.append(repo)
        return repo

    router = Router()

    @router.command(CreateUser)
    class CreateHandler:
        def __init__(self, repo: Repo = Dependency(get_repo)) -> None:
            self.repo = repo

        async def handle(self, cmd: CreateUser) -> UserCreated:
            return UserCreated(id=self.repo.add(cmd.name), name=cmd.name)

    @router.query(CountUsers)
    class Counter:
        async def __call__(self, query: CountUsers) -> int:
            return 42

    bus = Bus()
    bus.add_router(router)
    async with bus:
        assert (await bus.send(CreateUser(name="a"))).id == 1
        assert (await bus.send(CreateUser(name="b"))).id == 1  # a new instance, a new repo
        assert await bus.ask(CountUsers()) == 42
    assert len(made) == 2


def test_class_without_handle_is_rejected() -> None:
    router = Router()
    with pytest.raises(HandlerRegistrationError, match=r"no handle\(\)"):

        @router.query(CountUsers)
        class Nothing:
            pass


async def test_collected_events_only_after_success_and_never_leak() -> None:
    bus = Bus()
    seen: list[str] = []

    @bus.command(CreateUser)
    async def create(cmd: CreateUser, events: EventCollector) -> UserCreated:
        events.add(AuditLogged(what=f"emitted while {cmd.name}"))
        if cmd.name == "fail":
            raise ValueError("boom")
        return UserCreated(id=1, name=cmd.name)

    @bus.handler(topic="cqrs.audit")
    async def audit(event: Event[AuditLogged]) -> None:
        seen.append(event.body.what)

    @bus.handler(topic="cqrs.users.events")
    async def created(event: Event[UserCreated]) -> None:
        seen.append(f"created {event.body.name}")

    async with bus:
        with pytest.raises(ValueError, match="boom"):
            await bus.send(CreateUser(name="fail"))
        await bus.join()
        assert seen == []  # nothing from the failed handling
        await bus.send(CreateUser(name="ok"))
        await bus.join()
    # the failed handling's event did not come out with the next one (iambus leak)
    assert sorted(seen) == ["created ok", "emitted while ok"]


async def test_returned_list_of_events_and_retry_starts_clean() -> None:
    attempts: list[int] = []
    seen: list[str] = []
    bus = Bus()

    @bus.command(CreateUser, middlewares=[Retry(attempts=3, delay=0.0, jitter=0.0)])
    async def create(cmd: CreateUser, events: EventCollector, ctx: HandlerContext) -> Any:
        attempts.append(ctx.attempt)
        events.add(AuditLogged(what=f"attempt {ctx.attempt}"))
        if ctx.attempt < 3:
            raise ConnectionError("flaky")
        return [UserCreated(id=1, name="a"), UserCreated(id=2, name="b")]

    @bus.handler(topic="x")
    async def on(event: Event[AuditLogged]) -> None:
        seen.append(event.body.what)

    @bus.handler(topic="y")
    async def on_user(event: Event[UserCreated]) -> None:
        seen.append(event.body.name)

    async with bus:
        await bus.send(CreateUser(name="a"))
        await bus.join()
    assert attempts == [1, 2, 3]
    assert sorted(seen) == ["a", "attempt 3", "b"]


async def test_middleware_levels_wrap_commands_and_queries() -> None:
    order: list[str] = []

    def mw(label: str) -> Any:
        async def step(ctx: HandlerContext, call_next: CallNext) -> Any:
            order.append(f"{label}>")
            result = await call_next(ctx)
            order.append(f"<{label}")
            return result

        return step

    router = Router(middlewares=[mw("router")])

    @router.query(GetUser, middlewares=[mw("handler")])
    async def get(query: GetUser, ctx: HandlerContext) -> User:
        order.append(f"handler {ctx.handler.name.rsplit('.', 1)[-1]}")
        return User(id=query.id, name="m")

    bus = Bus(middlewares=[mw("bus")])
    bus.add_router(router)
    async with bus:
        await bus.ask(GetUser(id=1))
    assert order == ["bus>", "router>", "handler>", "handler get", "<handler", "<router", "<bus"]


async def test_event_handler_failure_is_isolated_and_counted() -> None:
    bus = Bus()
    ran: list[str] = []

    @bus.handler(topic="t")
    async def bad(event: Event[UserCreated]) -> None:
        raise RuntimeError("bad handler")

    @bus.handler(topic="t")
    async def good(event: Event[UserCreated]) -> None:
        ran.append("good")

    async with bus:
        await bus.publish(UserCreated(id=1, name="a"))
    assert ran == ["good"]
    assert bus.stats["failed_handlers"] == 1
    assert bus.stats["events_handled"] == 1


async def test_events_match_by_class_including_subclasses() -> None:
    class Special(UserCreated):
        pass

    bus = Bus()
    got: list[str] = []

    @bus.handler(topic="t")
    async def base(event: Event[UserCreated]) -> None:
        got.append(type(event.body).__name__)

    @bus.handler(topic="t")
    async def audit(event: Event[AuditLogged]) -> None:
        got.append("audit")

    async with bus:
        await bus.publish(Special(id=1, name="s"))
        await bus.publish(UserCreated(id=1, name="u"))
    assert got == ["Special", "UserCreated"]


async def test_per_key_order_and_parallel_across_keys() -> None:
    bus = Bus()
    log: list[tuple[str, int]] = []
    running = 0
    peak = 0

    @bus.command(RenameUser)
    async def rename(cmd: RenameUser) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (cmd.id % 3))
        log.append((cmd.name, cmd.id))
        running -= 1

    async with bus:
        calls = [
            bus.send(RenameUser(id=i, name=key), key=key) for i in range(30) for key in ("a", "b")
        ]
        await asyncio.gather(*calls)
    for key in ("a", "b"):
        assert [i for k, i in log if k == key] == list(range(30))
    assert peak == 2  # the two keys ran side by side, each one at a time
    assert not bus._lanes  # nothing kept per key once its lane drained


async def test_cancelled_waiter_keeps_the_lane_order() -> None:
    bus = Bus()
    gate = asyncio.Event()
    running: list[int] = []

    @bus.command(RenameUser)
    async def rename(cmd: RenameUser) -> None:
        running.append(cmd.id)
        if cmd.id == 1:
            await gate.wait()
        assert len(running) == len(set(running))

    async with bus:
        first = asyncio.ensure_future(bus.send(RenameUser(id=1, name="x"), key="k"))
        second = asyncio.ensure_future(bus.send(RenameUser(id=2, name="x"), key="k"))
        third = asyncio.ensure_future(bus.send(RenameUser(id=3, name="x"), key="k"))
        await asyncio.sleep(0.01)
        second.cancel()
        await asyncio.sleep(0.01)
        assert running == [1]  # the third still waits for the first
        gate.set()
        await asyncio.gather(first, third)
        with pytest.raises(asyncio.CancelledError):
            await second
    assert running == [1, 3]


async def test_events_from_keyed_command_follow_it_on_its_key() -> None:
    bus = Bus()
    order: list[str] = []

    @bus.command(CreateUser)
    async def create(cmd: CreateUser) -> UserCreated:
        order.append(f"cmd {cmd.name}")
        return UserCreated(id=1, name=cmd.name)

    @bus.handler(topic="t")
    async def on(event: Event[UserCreated]) -> None:
        order.append(f"event {event.body.name}")

    async with bus:
        await asyncio.gather(
            bus.send(CreateUser(name="1"), key="k"), bus.send(CreateUser(name="2"), key="k")
        )
        await bus.join()
    assert order.index("event 1") < order.index("cmd 2") or order == [
        "cmd 1",
        "cmd 2",
        "event 1",
        "event 2",
    ]
    assert order.index("cmd 1") < order.index("event 1")
    assert order.index("cmd 2") < order.index("event 2")


async def test_stop_waits_for_running_calls() -> None:
    bus = Bus()
    done: list[int] = []

    @bus.query(CountUsers)
    async def count(query: CountUsers) -> int:
        await asyncio.sleep(0.05)
        done.append(1)
        return 1

    await bus.start()
    call = asyncio.ensure_future(bus.ask(CountUsers()))
    await asyncio.sleep(0)
    await bus.stop()
    assert done == [1]
    assert await call == 1


async def test_local_only_query_runs_on_a_bus() -> None:
    bus = Bus()

    @bus.query(LocalQuery)
    async def echo(query: LocalQuery) -> str:
        return query.text.upper()

    async with bus:
        assert await bus.ask(LocalQuery(text="hi")) == "HI"


async def test_validation_off_takes_the_fast_path() -> None:
    bus = Bus(validate_replies=False)

    @bus.query(CountUsers)
    async def count(query: CountUsers) -> int:
        return "not checked"  # type: ignore[return-value]

    async with bus:
        assert await bus.ask(CountUsers()) == "not checked"
    assert bus._requests[CountUsers].fast is not None


async def test_dependencies_are_made_per_message() -> None:
    calls = {"factory": 0}

    def session() -> object:
        calls["factory"] += 1
        return object()

    bus = Bus()
    seen: list[object] = []

    @bus.query(CountUsers)
    async def count(query: CountUsers, db: object = Dependency(session)) -> int:
        seen.append(db)
        return len(seen)

    async with bus:
        for _ in range(3):
            await bus.ask(CountUsers())
    assert calls["factory"] == 3  # iambus resolves its Factory once, at bind time
    assert len({id(s) for s in seen}) == 3


async def test_acknowledger_has_no_meaning_on_a_bus() -> None:
    bus = Bus()

    @bus.query(CountUsers)
    async def count(query: CountUsers, ack: Acknowledger) -> int:
        raise AssertionError("not reached")

    async with bus:
        with pytest.raises(TypeError, match="no broker delivery"):
            await bus.ask(CountUsers())


async def test_fast_path_validates_and_publishes_returned_events() -> None:
    bus = Bus()
    seen: list[int] = []

    @bus.command(CreateUser)
    async def create(cmd: CreateUser) -> UserCreated:
        return {"id": 5, "name": cmd.name}  # type: ignore[return-value]

    @bus.handler(topic="t")
    async def on(event: Event[UserCreated]) -> None:
        seen.append(event.body.id)

    async with bus:
        assert bus._requests[CreateUser].fast is not None
        reply = await bus.send(CreateUser(name="f"))
        assert reply == UserCreated(id=5, name="f")  # validated into the annotation
        await bus.join()
    assert seen == [5]


async def test_stop_cancels_background_events_after_its_timeout() -> None:
    bus = Bus()
    started = asyncio.Event()
    cancelled: list[bool] = []

    @bus.command(CreateUser)
    async def create(cmd: CreateUser) -> UserCreated:
        return UserCreated(id=1, name=cmd.name)

    @bus.handler(topic="t")
    async def stuck(event: Event[UserCreated]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    await bus.start()
    await bus.send(CreateUser(name="s"))
    await asyncio.wait_for(started.wait(), 5)
    await bus.stop(timeout=0.05)
    assert cancelled == [True]
    assert not bus._tasks


async def test_publish_with_a_key_keeps_order() -> None:
    bus = Bus()
    got: list[int] = []

    @bus.handler(topic="t")
    async def on(event: Event[UserCreated]) -> None:
        await asyncio.sleep(0.001 * ((7 - event.body.id) % 3))
        got.append(event.body.id)

    async with bus:
        await asyncio.gather(
            *(bus.publish(UserCreated(id=i, name="k"), key="user-1") for i in range(20))
        )
    assert got == list(range(20))
