"""The dispatcher's parts alone, without a consumer or a broker: the route table,
settlement and the decoder cache."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from dispytch import Event, Router
from dispytch.backoff import Backoff
from dispytch.context import CallNext, HandlerContext, MessageState
from dispytch.dispatch import AckPolicy, RouteTable, Settler
from dispytch.errors import PluginError, RequeueMessage, UnknownContentTypeError
from dispytch.message import HEADER_EVENT_TYPE, Message
from dispytch.serialization import DecoderCache, JsonSerializer, Serializer, media_type
from dispytch.transport import Capabilities
from pydantic import BaseModel


class Job(BaseModel):
    n: int


# -- route table -----------------------------------------------------------------------------


async def _mw(ctx: HandlerContext, call_next: CallNext) -> Any:
    return await call_next(ctx)


def test_route_table_matches_static_and_patterns_and_bounds_its_cache() -> None:
    router = Router()

    @router.handler(topic="orders")
    async def plain(event: Event[Job]) -> None: ...

    @router.handler(topic="orders.{region}", middlewares=[_mw])
    async def regional(event: Event[Job], region: str) -> None: ...

    table = RouteTable(router.walk(), cache_limit=2)
    assert len(table) == 2
    [(entry, params)] = table.match("orders")
    assert entry.name.endswith("plain") and params == {}
    assert entry.direct is not None and entry.model is Job  # the fast path
    [(entry, params)] = table.match("orders.eu")
    assert entry.name.endswith("regional") and params == {"region": "eu"}
    assert entry.direct is None  # wrapped in middleware: the long way
    assert list(entry.event_types) == [Job]
    assert table.match("nothing") == ()
    for region in ("a", "b", "c", "d"):
        assert table.match(f"orders.{region}")[0][1] == {"region": region}
    assert len(table._cache) <= 2


def test_dispatcher_middlewares_take_the_fast_path_away() -> None:
    router = Router()

    @router.handler(topic="t")
    async def plain(event: Event[Job]) -> None: ...

    [(entry, _)] = RouteTable(router.walk(), [_mw]).match("t")
    assert entry.direct is None


# -- settlement ------------------------------------------------------------------------------


class Settlements:
    """Records what the settler asks a consumer to do (no broker involved)."""

    def __init__(self, capabilities: Capabilities = Capabilities()) -> None:
        self.capabilities = capabilities
        self.calls: list[tuple[str, bytes, dict[str, Any]]] = []

    def subscribe(self, subscriptions: Any) -> None: ...
    async def start(self) -> None: ...
    def listen(self) -> Any: ...
    async def stop(self) -> None: ...
    async def close(self) -> None: ...

    async def ack(self, message: Message) -> None:
        self.calls.append(("ack", message.payload, {}))

    async def nack(self, message: Message, *, requeue: bool, **kw: Any) -> None:
        self.calls.append(("requeue" if requeue else "reject", message.payload, kw))


def _settler(
    policy: AckPolicy, caps: Capabilities = Capabilities(), **kw: Any
) -> tuple[Settler, Settlements, list[int]]:
    consumer = Settlements(caps)
    woken: list[int] = []
    settler = Settler(
        consumer,  # type: ignore[arg-type]
        policy,
        Counter(),
        capabilities=caps,
        requeue_backoff=Backoff(initial=0.0, cap=0.0),
        max_unsettled=kw.pop("max_unsettled", 2),
        wake=lambda: woken.append(1),
    )
    return settler, consumer, woken


def _msg(n: int, **kw: Any) -> Message:
    return Message(f'{{"n":{n}}}'.encode(), route="jobs", **kw)


async def _conclude(settler: Settler, msg: Message, **kw: Any) -> None:
    settler.inflight.add(msg)
    shared = kw.pop("shared", None)
    ran = kw.pop("ran", 1)
    requeue = kw.pop("requeue", False)
    failed = kw.pop("failed", None)
    await settler.conclude(msg, shared, ran, requeue, failed, **kw)


async def test_after_policy_outcomes_to_settlements() -> None:
    settler, consumer, _ = _settler(AckPolicy.AFTER)
    await _conclude(settler, _msg(1))  # handled
    await _conclude(settler, _msg(2), failed=RuntimeError("x"))
    await _conclude(settler, _msg(3), requeue=True)
    await _conclude(settler, _msg(4), dead=True)
    await _conclude(settler, _msg(5), filtered=1)
    await _conclude(settler, _msg(6, headers={HEADER_EVENT_TYPE: "t"}), ran=0)  # skipped
    assert [c[0] for c in consumer.calls] == ["ack", "reject", "requeue", "ack", "ack", "ack"]
    assert settler.stats == Counter(
        handled=1, rejected=1, requeued=1, dead_lettered=1, filtered=1, skipped=1
    )
    assert settler.inflight == set()


async def test_before_policy_only_counts() -> None:
    settler, consumer, _ = _settler(AckPolicy.BEFORE)
    await _conclude(settler, _msg(1), failed=RuntimeError("x"))
    await _conclude(settler, _msg(2))
    assert consumer.calls == [] and settler.inflight == set()
    assert settler.stats == Counter(rejected=1, handled=1)


async def test_requeue_is_delayed_by_the_broker_when_it_can() -> None:
    caps = Capabilities(delayed_requeue=True)
    consumer = Settlements(caps)
    settler = Settler(
        consumer,  # type: ignore[arg-type]
        AckPolicy.AFTER,
        Counter(),
        capabilities=caps,
        requeue_backoff=Backoff(initial=0.5, factor=2.0, cap=3.0),
        max_unsettled=1,
    )
    await _conclude(settler, _msg(1, attempt=3), requeue=True)
    assert consumer.calls == [("requeue", b'{"n":1}', {"delay": 2.0})]


async def test_failures_are_told_apart() -> None:
    settler, _, _ = _settler(AckPolicy.AFTER)
    assert settler.failed("h", _msg(1), RequeueMessage("again"), 1) is True
    assert settler.failed("h", _msg(1), RuntimeError("no"), 1) is False
    err = UnknownContentTypeError("x", content_type="a/b", served=())
    assert settler.failed("h", _msg(1), err, 1) is False
    assert settler.stats == Counter(failed_handlers=2, invalid_payload=1)


async def test_manual_holds_what_nobody_settled_and_frees_it_when_settled() -> None:
    settler, consumer, woken = _settler(AckPolicy.MANUAL, max_unsettled=2)
    msgs = [_msg(i) for i in range(3)]
    acks = []
    for m in msgs:
        shared = MessageState(m)
        shared.acknowledger = settler.acknowledger_for(m)
        acks.append(shared.acknowledger)
        await _conclude(settler, m, shared=shared)
    assert consumer.calls == [] and len(settler.unsettled) == 3 and settler.unsettled_full
    assert settler.stats["held_unsettled"] == 3
    await acks[1].ack()  # long after its handler returned
    assert woken and len(settler.unsettled) == 2 and msgs[1] not in settler.inflight
    assert consumer.calls == [("ack", b'{"n":1}', {})]
    assert await settler.hand_back() == 2  # on stop
    await acks[0].ack()  # too late: handed back already, not settled twice
    assert [c[0] for c in consumer.calls] == ["ack", "requeue", "requeue"]
    assert settler.unsettled == set() and settler.inflight == set()


async def test_manual_settles_what_no_handler_could_see() -> None:
    settler, consumer, _ = _settler(AckPolicy.MANUAL)
    await _conclude(settler, _msg(1), ran=0)  # skipped
    await settler.unknown_route(_msg(2))
    assert [c[0] for c in consumer.calls] == ["ack", "reject"]


# -- decoder cache ---------------------------------------------------------------------------


def test_media_type_drops_parameters_and_case() -> None:
    assert media_type(None) == "application/json"
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert media_type("  ") == "application/json"


def test_decoder_cache_is_keyed_by_media_type_and_bounded() -> None:
    lookups: list[str] = []
    json = JsonSerializer()

    def lookup(content_type: str) -> Serializer:
        lookups.append(content_type)
        if content_type != "application/json":
            raise PluginError(f"No serializer is registered as {content_type!r}.")
        return json

    cache = DecoderCache(lookup, lambda: ["application/json"], limit=4)
    plain = cache.decoder("application/json", Job)
    for i in range(100):  # headers that vary without end
        assert cache.decoder(f"application/json; v={i}", Job) is plain
    assert len(cache) == 1 and len(cache._by_header) <= 4
    assert lookups == ["application/json"]
    for _ in range(3):
        with pytest.raises(UnknownContentTypeError, match="served: application/json"):
            cache.decoder("text/xml; charset=x", Job)
    assert lookups == ["application/json", "text/xml"]  # unknown ones are remembered
    assert cache.decode(_msg(7), Job) == Job(n=7)
