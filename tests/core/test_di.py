"""Dependency injection: every dependency kind, teardown, nesting, caching, the ways to
declare a dependency, what dependencies may take, and errors reported at registration."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from dispytch import (
    Dependency,
    Event,
    EventBase,
    EventDispatcher,
    HandlerContext,
    HandlerRegistrationError,
    Message,
    Router,
)
from dispytch.di import HandlerPlan
from pydantic import BaseModel

if TYPE_CHECKING:
    from tests.core.conftest import Kit


class Body(BaseModel):
    user_id: int
    name: str


class Created(EventBase):
    __topic__ = "user.{user_id}.created"
    user_id: int
    name: str


def created(i: int = 1) -> Created:
    return Created(user_id=i, name=f"u{i}")


# A journal of what dependencies did, reset per test by the fixture below.
LOG: list[str] = []


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    LOG.clear()


def sync_dep() -> str:
    LOG.append(f"sync in {threading.current_thread() is threading.main_thread()}")
    return "sync"


async def async_dep() -> str:
    return "async"


def gen_dep() -> Iterator[str]:
    LOG.append("gen enter")
    try:
        yield "gen"
    finally:
        LOG.append("gen exit")


async def agen_dep() -> AsyncIterator[str]:
    LOG.append("agen enter")
    try:
        yield "agen"
    except ValueError:
        LOG.append("agen saw ValueError")
        raise
    finally:
        LOG.append("agen exit")


async def run_one(
    kit: Kit, register: Callable[[EventDispatcher], None], event: EventBase | None = None
) -> EventDispatcher:
    """Register a handler with ``register(dispatcher)``, emit one event, wait until it
    is settled; returns the dispatcher."""
    d = kit.dispatcher()
    register(d)
    async with d:
        await kit.emitter.emit(event or created())
        await kit.until(
            lambda: (
                kit.unacked() == 0
                and kit.queued() == 0
                and sum(d.stats[k] for k in ("handled", "rejected", "filtered", "dead_lettered"))
            ),
            "the message to be settled",
        )
    return d


async def test_every_dependency_kind(kit: Kit) -> None:
    got: list[tuple[str, ...]] = []

    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created")
        async def handle(
            a: Annotated[str, Dependency(sync_dep)],
            b: Annotated[str, Dependency(async_dep)],
            c: Annotated[str, Dependency(gen_dep)],
            e: Annotated[str, Dependency(agen_dep)],
        ) -> None:
            LOG.append("handler")
            got.append((a, b, c, e))

    d = await run_one(kit, register)
    assert got == [("sync", "async", "gen", "agen")]
    assert d.stats["handled"] == 1
    # Sync dependencies run in a worker thread; teardown comes after the handler, in
    # reverse order of set-up.
    assert LOG == ["sync in False", "gen enter", "agen enter", "handler", "agen exit", "gen exit"]


async def test_teardown_runs_when_the_handler_fails(kit: Kit) -> None:
    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created")
        async def handle(
            c: Annotated[str, Dependency(gen_dep)],
            e: Annotated[str, Dependency(agen_dep)],
        ) -> None:
            LOG.append("handler")
            raise ValueError("boom")

    d = await run_one(kit, register)
    assert d.stats["rejected"] == 1
    assert LOG == [
        "gen enter",
        "agen enter",
        "handler",
        "agen saw ValueError",
        "agen exit",
        "gen exit",
    ]
    assert len(kit.broker.rejected) == 1


async def test_sync_handler_with_sync_generator_dependency(kit: Kit) -> None:
    seen: list[tuple[str, int, bool]] = []

    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created")
        def handle(event: Event[Body], c: Annotated[str, Dependency(gen_dep)]) -> None:
            seen.append(
                (c, event.body.user_id, threading.current_thread() is threading.main_thread())
            )

    await run_one(kit, register, created(5))
    assert seen == [("gen", 5, False)]
    assert LOG == ["gen enter", "gen exit"]


# -- nesting and caching -----------------------------------------------------------------

CALLS: dict[str, int] = {}


def count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


async def settings() -> dict[str, str]:
    count("settings")
    return {"dsn": "memory"}


async def db(cfg: Annotated[dict[str, str], Dependency(settings)]) -> str:
    count("db")
    return f"db({cfg['dsn']})"


async def repo(conn: Annotated[str, Dependency(db)]) -> str:
    count("repo")
    return f"repo({conn})"


def fresh_token() -> object:
    count("fresh")
    return object()


async def test_nested_dependencies_and_per_event_cache(kit: Kit) -> None:
    CALLS.clear()
    got: list[tuple[str, str, dict[str, str]]] = []

    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created")
        async def handle(
            r: Annotated[str, Dependency(repo)],
            conn: Annotated[str, Dependency(db)],
            cfg: dict[str, str] = Dependency(settings),  # the FastAPI idiom
        ) -> None:
            got.append((r, conn, cfg))

    d = kit.dispatcher()
    register(d)
    async with d:
        await kit.emitter.emit(created(1))
        await kit.emitter.emit(created(2))
        await kit.until(lambda: len(got) == 2, "two events")
    assert got[0] == ("repo(db(memory))", "db(memory)", {"dsn": "memory"})
    # Each dependency ran once per event, although three parameters need `settings`.
    assert CALLS == {"settings": 2, "db": 2, "repo": 2}


async def test_use_cache_false_makes_a_new_value_each_time(kit: Kit) -> None:
    CALLS.clear()
    got: list[tuple[object, object, object, object]] = []

    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created")
        async def handle(
            a: Annotated[object, Dependency(fresh_token, use_cache=False)],
            b: Annotated[object, Dependency(fresh_token, use_cache=False)],
            c: Annotated[object, Dependency(fresh_token)],
            e: Annotated[object, Dependency(fresh_token)],
        ) -> None:
            got.append((a, b, c, e))

    await run_one(kit, register)
    a, b, c, e = got[0]
    assert a is not b
    assert c is e
    assert CALLS == {"fresh": 3}


async def test_dependency_as_default_value(kit: Kit) -> None:
    got: list[str] = []

    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created")
        async def handle(x: str = Dependency(async_dep)) -> None:
            got.append(x)

    await run_one(kit, register)
    assert got == ["async"]


# -- what dependencies may take ----------------------------------------------------------


async def user_label(event: Event[Body], user_id: int) -> str:
    return f"{event.body.name}#{user_id}:{type(user_id).__name__}"


def message_route(message: Message) -> str:
    return message.route


async def handler_name(ctx: HandlerContext) -> str:
    return ctx.handler.name


async def test_dependencies_take_events_route_params_message_and_context(kit: Kit) -> None:
    got: list[tuple[str, str, str, int]] = []

    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created", name="labeller")
        async def handle(
            label: Annotated[str, Dependency(user_label)],
            route: Annotated[str, Dependency(message_route)],
            who: Annotated[str, Dependency(handler_name)],
            event: Event[Body],
        ) -> None:
            got.append((label, route, who, event.body.user_id))

    await run_one(kit, register, created(9))
    assert got == [("u9#9:int", "user.9.created", "labeller", 9)]


def test_plan_lists_event_types_and_route_params() -> None:
    async def handle(label: Annotated[str, Dependency(user_label)]) -> None: ...

    plan = HandlerPlan(handle, handler_name="h", route_names=("user_id",))
    assert plan.event_types == [Body]
    assert plan.route_params == {"user_id"}
    assert not plan.needs_teardown


async def _only_event(event: Event[Body]) -> None: ...


async def _only_event_by_name(*, event: Event[Body]) -> None: ...


async def _event_and_message(event: Event[Body], message: Message) -> None: ...


async def _event_and_dependency(
    event: Event[Body], label: Annotated[str, Dependency(async_dep)]
) -> None: ...


async def _event_and_default(event: Event[Body], retries: int = 3) -> None: ...


def _sync_event(event: Event[Body]) -> None: ...


async def _no_event() -> None: ...


def test_plan_calls_an_event_only_handler_directly() -> None:
    plan = HandlerPlan(_only_event, handler_name="h")
    assert plan.direct is _only_event


@pytest.mark.parametrize(
    "handler",
    [_event_and_message, _event_and_dependency, _event_and_default, _sync_event, _no_event],
)
def test_plan_walks_handlers_that_take_more_than_the_event(handler: Any) -> None:
    assert HandlerPlan(handler, handler_name="h").direct is None


async def test_plan_passes_a_keyword_only_event_by_name(kit: Kit) -> None:
    got: list[int] = []

    async def handle(*, event: Event[Created]) -> None:
        got.append(event.body.user_id)

    plan = HandlerPlan(handle, handler_name="h")
    assert plan.direct is not None and plan.direct is not handle

    def register(d: EventDispatcher) -> None:
        d.handler(topic="user.{user_id}.created")(handle)

    d = await run_one(kit, register, created(4))
    assert got == [4]
    assert d.stats["handled"] == 1


async def test_middleware_sees_the_context_of_an_event_only_handler(kit: Kit) -> None:
    seen: list[tuple[str, int]] = []

    async def spy(ctx: HandlerContext, call_next: Any) -> Any:
        result = await call_next(ctx)
        seen.append(
            (ctx.handler.name.rsplit(".", 1)[-1], ctx.event.body.user_id if ctx.event else -1)
        )
        return result

    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created", middlewares=[spy])
        async def handle(event: Event[Created]) -> None: ...

    await run_one(kit, register, created(6))
    assert seen == [("handle", 6)]


# -- errors at registration -------------------------------------------------------------


def _make_cycle() -> tuple[Any, Any]:
    def first(x: Any = None) -> str:
        return "a"

    def second(y: str = Dependency(first)) -> str:
        return y

    # Close the loop: first now depends on second.
    first.__defaults__ = (Dependency(second),)
    return first, second


def test_cycle_is_reported_at_registration_naming_the_chain() -> None:
    first, _ = _make_cycle()
    router = Router()

    async def handle(v: str = Dependency(first)) -> None: ...

    with pytest.raises(
        HandlerRegistrationError,
        match=r"Handler 'my_handler': dependency cycle .*first -> .*second -> .*first",
    ):
        router.handler(topic="t", name="my_handler")(handle)


def test_self_dependency_is_a_cycle() -> None:
    def me(x: Any = None) -> str:
        return "me"

    me.__defaults__ = (Dependency(me),)

    async def handle(v: str = Dependency(me)) -> None: ...

    with pytest.raises(HandlerRegistrationError, match="dependency cycle"):
        Router().handler(topic="t")(handle)


def test_unresolvable_handler_parameter_names_handler_and_parameter() -> None:
    async def on_thing(event: Event[Body], mystery: int) -> None: ...

    with pytest.raises(
        HandlerRegistrationError,
        match=r"Handler '.*on_thing': cannot fill parameter 'mystery'\. .*"
        r"Route placeholders available: user_id",
    ):
        Router().handler(topic="user.{user_id}")(on_thing)


def needs_unknown(unknown_thing: str) -> str:
    return unknown_thing


def test_unresolvable_dependency_parameter_names_the_dependency() -> None:
    async def on_thing(v: Annotated[str, Dependency(needs_unknown)]) -> None: ...

    with pytest.raises(
        HandlerRegistrationError,
        match=r"cannot fill parameter 'unknown_thing' \(in dependency needs_unknown\)",
    ):
        Router().handler(topic="t")(on_thing)


def test_bare_event_annotation_is_rejected() -> None:
    async def on_thing(event: Event) -> None: ...  # type: ignore[type-arg]

    with pytest.raises(HandlerRegistrationError, match=r"write `Event\[MyModel\]`"):
        Router().handler(topic="t")(on_thing)


def test_unresolvable_annotation_is_reported() -> None:
    async def on_thing(event: Event[NotDefinedAnywhere]) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(HandlerRegistrationError, match="cannot resolve the annotations"):
        Router().handler(topic="t")(on_thing)


def test_dependency_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="Dependency needs a callable"):
        Dependency(42)  # type: ignore[arg-type]


def test_handler_needs_a_subscription() -> None:
    with pytest.raises(HandlerRegistrationError, match="needs a subscription"):
        Router().handler()
    with pytest.raises(HandlerRegistrationError, match="not both"):
        Router().handler(object(), topic="t")  # type: ignore[arg-type]
    with pytest.raises(HandlerRegistrationError, match="is not a subscription"):
        Router().handler("orders")  # type: ignore[arg-type]


# -- sync code never blocks the loop ----------------------------------------------------


async def test_sync_handler_does_not_block_the_event_loop(kit: Kit) -> None:
    release = threading.Event()
    entered = threading.Event()
    ticks: list[int] = []

    d = kit.dispatcher()

    @d.handler(topic="user.{user_id}.created")
    def slow(event: Event[Body]) -> None:
        entered.set()
        # Blocks its thread until the loop proves it is still running.
        assert release.wait(5.0), "the loop never released the sync handler"

    async with d:
        await kit.emitter.emit(created())
        await kit.until(entered.is_set, "the sync handler to start")
        for i in range(5):
            await asyncio.sleep(0)
            ticks.append(i)
        release.set()
        await kit.until(lambda: d.stats["handled"] == 1, "the handler to finish")
    assert ticks == [0, 1, 2, 3, 4]


def blocking_dep() -> str:
    BLOCK_ENTERED.set()
    assert BLOCK_RELEASE.wait(5.0), "the loop never released the sync dependency"
    return "done"


BLOCK_ENTERED = threading.Event()
BLOCK_RELEASE = threading.Event()


async def test_sync_dependency_does_not_block_the_event_loop(kit: Kit) -> None:
    BLOCK_ENTERED.clear()
    BLOCK_RELEASE.clear()
    got: list[str] = []
    d = kit.dispatcher()

    @d.handler(topic="user.{user_id}.created")
    async def handle(v: Annotated[str, Dependency(blocking_dep)]) -> None:
        got.append(v)

    async with d:
        await kit.emitter.emit(created())
        await kit.until(BLOCK_ENTERED.is_set, "the sync dependency to start")
        other = asyncio.create_task(asyncio.sleep(0, result="progress"))
        assert await asyncio.wait_for(other, 5.0) == "progress"
        BLOCK_RELEASE.set()
        await kit.until(lambda: got, "the handler")
    assert got == ["done"]


# -- classes, callable objects and partials as dependencies ---------------------------


def get_dsn() -> str:
    return "memory://"


class Repository:
    """A class dependency whose constructor has dependencies of its own."""

    def __init__(self, dsn: Annotated[str, Dependency(get_dsn)], user_id: int) -> None:
        self.dsn = dsn
        self.user_id = user_id


class NameOf:
    """A callable object dependency (async ``__call__`` taking the event)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def __call__(self, event: Event[Body]) -> str:
        return self.prefix + event.body.name


def scaled(factor: int, user_id: int) -> int:
    return factor * user_id


async def test_classes_callable_objects_and_partials_as_dependencies(kit: Kit) -> None:
    got: list[tuple[str, int, str, int]] = []

    def register(d: EventDispatcher) -> None:
        @d.handler(topic="user.{user_id}.created")
        async def handle(
            repo: Annotated[Repository, Dependency(Repository)],
            name: Annotated[str, Dependency(NameOf("name:"))],
            big: Annotated[int, Dependency(functools.partial(scaled, 10))],
        ) -> None:
            got.append((repo.dsn, repo.user_id, name, big))

    await run_one(kit, register, created(4))
    assert got == [("memory://", 4, "name:u4", 40)]


def test_positional_only_parameters_are_refused_at_registration() -> None:
    async def on_thing(event: Event[Body], /) -> None: ...

    with pytest.raises(
        HandlerRegistrationError, match=r"parameter 'event' of .*on_thing is positional-only"
    ):
        Router().handler(topic="t")(on_thing)
