"""One test per hook (named ``test_hook_<hook>``), plus the guard tests that keep the
hookspecs, their docs and these tests in step (the datasette habit)."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import pytest
from dispytch import Event, EventBase, EventDispatcher, EventEmitter, TopicRoute, TopicSubscription
from dispytch.memory import MemoryConsumer, MemoryProducer
from dispytch.plugins import (
    MiddlewareSpec,
    SerializerSpec,
    TransportSpec,
    hookimpl,
    hookspecs,
    manager,
    transport_for_url,
)
from dispytch.transport import HEADER_CONTENT_TYPE
from pydantic import BaseModel

HERE = Path(__file__).parent
DOCS = HERE.parent.parent / "docs" / "plugins.md"


def all_hookspecs() -> dict[str, object]:
    return {
        name: func
        for name, func in vars(hookspecs).items()
        if name.startswith("dispytch_") and callable(func)
    }


def signature_text(name: str, func: object) -> str:
    params = ", ".join(inspect.signature(func).parameters)  # type: ignore[arg-type]
    return f"{name}({params})"


class Note(EventBase):
    __route__ = TopicRoute(topic="hooks.note")
    text: str


# -- guard tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(all_hookspecs()))
def test_every_hookspec_is_documented_where_it_is_declared(name):
    doc = inspect.getdoc(all_hookspecs()[name]) or ""
    for section in ("Added in ", "Args:", "Returns:", "Example::"):
        assert section in doc, f"{name}'s docstring lacks {section!r}"
    summary = doc.splitlines()[0]
    assert summary.endswith("."), f"{name}: the first line is a one-sentence summary"


@pytest.mark.parametrize("name", sorted(all_hookspecs()))
def test_every_hook_is_documented_in_docs_with_its_signature(name):
    text = DOCS.read_text()
    assert signature_text(name, all_hookspecs()[name]) in text, (
        f"docs/plugins.md must show {signature_text(name, all_hookspecs()[name])}"
    )


def test_every_hook_has_a_test_named_for_it():
    names = set()
    for path in HERE.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    missing = [h for h in all_hookspecs() if f"test_hook_{h}" not in names]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


def test_the_manager_knows_every_hook():
    assert set(all_hookspecs()) == {*manager.REGISTRATION_HOOKS, *manager.LIFECYCLE_HOOKS}


# -- one test per hook -----------------------------------------------------------------------


def test_hook_dispytch_transports(register):
    made = []

    def producer(url, **options):
        made.append(("producer", url, options))
        return MemoryProducer()

    def consumer(url, **options):
        made.append(("consumer", url, options))
        return MemoryConsumer()

    class Plugin:
        @hookimpl
        def dispytch_transports(self):
            return [
                TransportSpec(
                    name="loop",
                    schemes=["loop", "loops"],
                    producer_factory=producer,
                    consumer_factory=consumer,
                    description="test transport",
                )
            ]

    register(Plugin(), name="loop-plugin")
    spec = transport_for_url("LOOPS://host/x")
    assert spec.name == "loop" and spec.schemes == ("loop", "loops")  # lists become tuples
    EventEmitter.from_url("loop://a", linger=1)
    EventDispatcher.from_url("loop://b", group="g")
    assert made == [
        ("producer", "loop://a", {"linger": 1}),
        ("consumer", "loop://b", {"group": "g"}),
    ]


class Upper:
    """A toy format: JSON, upper-cased on the wire (so the test sees it was used)."""

    content_type = "application/x-upper-json"

    def encode(self, event: BaseModel) -> bytes:
        return event.model_dump_json().upper().encode()

    def decoder(self, target):
        def decode(payload: bytes):
            return target.model_validate_json(payload.decode().lower())

        return decode


async def test_hook_dispytch_serializers(register):
    class Plugin:
        @hookimpl
        def dispytch_serializers(self):
            return [SerializerSpec(name="upper", content_type=Upper.content_type, factory=Upper)]

    register(Plugin(), name="upper-plugin")
    url = "memory://hooks-serializers"
    got: list[tuple[str, bytes, str]] = []
    done = asyncio.Event()
    dispatcher = EventDispatcher.from_url(url)

    @dispatcher.handler(TopicSubscription(topic="hooks.note"))
    async def on_note(event: Event[Note]):
        got.append((event.body.text, event.message.payload, event.headers[HEADER_CONTENT_TYPE]))
        done.set()

    async with EventEmitter.from_url(url, serializer="upper") as emitter, dispatcher:
        await emitter.emit(Note(text="hi"))
        await asyncio.wait_for(done.wait(), 5)
    assert got == [("hi", b'{"TEXT":"HI"}', "application/x-upper-json")]


async def test_hook_dispytch_middlewares(register):
    calls: list[tuple[str, str]] = []

    def tagger(tag: str):
        async def mw(ctx, call_next):
            calls.append((tag, ctx.route))
            return await call_next(ctx)

        return mw

    class Plugin:
        @hookimpl
        def dispytch_middlewares(self):
            return [MiddlewareSpec(name="tag", factory=tagger, description="tags")]

    register(Plugin(), name="tag-plugin")
    url = "memory://hooks-middlewares"
    done = asyncio.Event()
    dispatcher = EventDispatcher.from_url(url, middlewares=[("tag", {"tag": "outer"})])

    @dispatcher.handler(TopicSubscription(topic="hooks.note"), middlewares=["retry"])
    async def on_note(event: Event[Note]):
        done.set()

    async with EventEmitter.from_url(url) as emitter, dispatcher:
        await emitter.emit(Note(text="x"))
        await asyncio.wait_for(done.wait(), 5)
    assert calls == [("outer", "hooks.note")]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    @hookimpl
    def dispytch_dispatcher_started(self, dispatcher):
        self.events.append(("dispatcher_started", dispatcher))

    @hookimpl
    def dispytch_dispatcher_stopped(self, dispatcher):
        self.events.append(("dispatcher_stopped", dispatcher))

    @hookimpl
    def dispytch_emitter_started(self, emitter):
        self.events.append(("emitter_started", emitter))

    @hookimpl
    def dispytch_emitter_stopped(self, emitter):
        self.events.append(("emitter_stopped", emitter))


async def _dispatcher_cycle(register) -> tuple[Recorder, EventDispatcher]:
    recorder = register(Recorder(), name="recorder")
    dispatcher = EventDispatcher.from_url("memory://hooks-lifecycle")

    @dispatcher.handler(TopicSubscription(topic="hooks.note"))
    async def on_note(event: Event[Note]):
        pass

    await dispatcher.start()
    assert recorder.events == [("dispatcher_started", dispatcher)]
    await dispatcher.stop()
    return recorder, dispatcher


async def test_hook_dispytch_dispatcher_started(register):
    recorder, dispatcher = await _dispatcher_cycle(register)
    assert recorder.events[0] == ("dispatcher_started", dispatcher)


async def test_hook_dispytch_dispatcher_stopped(register):
    recorder, dispatcher = await _dispatcher_cycle(register)
    assert recorder.events == [
        ("dispatcher_started", dispatcher),
        ("dispatcher_stopped", dispatcher),
    ]
    assert not dispatcher.running


async def _emitter_cycle(register) -> tuple[Recorder, EventEmitter]:
    recorder = register(Recorder(), name="recorder")
    emitter = EventEmitter.from_url("memory://hooks-lifecycle")
    async with emitter:
        assert recorder.events == [("emitter_started", emitter)]
    return recorder, emitter


async def test_hook_dispytch_emitter_started(register):
    recorder, emitter = await _emitter_cycle(register)
    assert recorder.events[0] == ("emitter_started", emitter)


async def test_hook_dispytch_emitter_stopped(register):
    recorder, emitter = await _emitter_cycle(register)
    assert recorder.events == [("emitter_started", emitter), ("emitter_stopped", emitter)]


def test_hook_dispytch_journal_stores(register, tmp_path):
    from dispytch.durable import Durable, SQLiteJournalStore, journal_store_for_url
    from dispytch.errors import ConfigError, PluginError
    from dispytch.plugins import JournalStoreSpec, journal_store_schemes

    made = []

    def factory(url):
        made.append(url)
        return SQLiteJournalStore(tmp_path / "plugged.sqlite3")

    class Plugin:
        @hookimpl
        def dispytch_journal_stores(self):
            return [JournalStoreSpec(name="plugged", schemes=["plugged"], factory=factory)]

    with pytest.raises(ConfigError, match="No journal store serves 'plugged'"):
        journal_store_for_url("plugged://x")
    register(Plugin(), name="plugged-plugin")
    assert "plugged" in journal_store_schemes()
    durable = Durable("memory://hooks-journal", store="PLUGGED://db/1")
    assert isinstance(durable.store, SQLiteJournalStore) and made == ["PLUGGED://db/1"]

    class Rival:
        @hookimpl
        def dispytch_journal_stores(self):
            return [JournalStoreSpec(name="rival", schemes=["plugged"], factory=factory)]

    register(Rival(), name="rival-plugin")
    with pytest.raises(PluginError, match="plugged"):
        journal_store_for_url("plugged://x")
    with pytest.raises(ValueError, match="lower case"):
        JournalStoreSpec(name="bad", schemes=["Bad://"], factory=factory)
