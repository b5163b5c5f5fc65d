"""The plugin host: discovery, caching, conflicts, errors that say what to do."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging

import pytest
from dispytch import (
    Event,
    EventBase,
    EventDispatcher,
    EventEmitter,
    TopicRoute,
    TopicSubscription,
)
from dispytch.errors import PluginError, TransportNotFoundError
from dispytch.plugins import (
    MiddlewareSpec,
    SerializerSpec,
    TransportSpec,
    get_plugin_manager,
    hookimpl,
    load_failures,
    manager,
    middleware_factory,
    notify,
    plugin_infos,
    serializer_for,
    transport_for_url,
    transports,
)
from dispytch.serialization import JsonSerializer


def _factory(url, **options):
    return ("built", url, options)


def transport_plugin(name: str, *schemes: str):
    class Plugin:
        @hookimpl
        def dispytch_transports(self):
            return [
                TransportSpec(
                    name=name,
                    schemes=schemes or (name,),
                    producer_factory=_factory,
                    consumer_factory=_factory,
                )
            ]

    return Plugin()


GOOD_PLUGIN = """
from dispytch.plugins import TransportSpec, hookimpl

def _make(url, **options):
    return ("good", url, options)

@hookimpl
def dispytch_transports():
    return [TransportSpec(name="good", schemes=("good",), producer_factory=_make,
                          consumer_factory=_make, description="a good one")]
"""

BROKEN_PLUGIN = """
raise ImportError("boom: libfoo is missing")
"""


class Ping(EventBase):
    __route__ = TopicRoute(topic="ping")
    n: int


# -- built-ins ---------------------------------------------------------------------------


def test_builtins_are_ordinary_plugins():
    infos = {i.name: i for i in plugin_infos()}
    core = infos["builtin"]
    assert core.distribution == "dispytch-core"
    assert [t.name for t in core.transports] == ["memory"]
    assert {s.name for s in core.serializers} == {"json", "msgpack"}
    assert {m.name for m in core.middlewares} >= {
        "retry",
        "dead-letter",
        "lock",
        "filter",
        "timeout",
        "observe",
    }
    assert transport_for_url("memory://").name == "memory"
    assert transports()["memory"].name == "memory"


def test_discovery_is_lazy_and_cached(monkeypatch):
    calls = []
    real = importlib.metadata.entry_points

    def counting(**kw):
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", counting)
    assert not manager.loaded()  # importing dispytch loaded nothing
    transport_for_url("memory://")
    serializer_for("json")
    middleware_factory("retry")
    plugin_infos()
    assert calls == [{"group": "dispytch"}]


# -- entry points ------------------------------------------------------------------------


def test_broken_plugin_is_reported_by_name_and_the_others_still_load(site, caplog):
    site("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD_PLUGIN})
    site(
        "broken-plugin",
        "0.0.1",
        {"broken": "broken_plugin_mod"},
        {"broken_plugin_mod": BROKEN_PLUGIN},
    )
    with caplog.at_level(logging.WARNING, "dispytch.plugins"):
        spec = transport_for_url("good://somewhere")
    assert spec.producer_factory("good://x", a=1) == ("good", "good://x", {"a": 1})
    failures = [f for f in load_failures() if f.name == "broken"]
    assert len(failures) == 1
    assert failures[0].distribution == "broken-plugin"
    assert str(failures[0]) == (
        "Plugin 'broken' (from broken-plugin) failed to load: ImportError: boom: libfoo is missing"
    )
    assert "Plugin 'broken' (from broken-plugin) failed to load" in caplog.text
    with pytest.raises(
        TransportNotFoundError,
        match=r"(?s)Other plugins failed to load:.*"
        r"Plugin 'broken' \(from broken-plugin\).*libfoo is missing",
    ):
        transport_for_url("nothing-here://x")


def test_entry_point_plugin_is_listed_with_its_distribution(site):
    site("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD_PLUGIN})
    info = {i.name: i for i in plugin_infos()}["good"]
    assert (info.distribution, info.version, info.entry_point) == (
        "good-plugin",
        "1.2.3",
        "good_plugin_mod",
    )
    assert info.hooks == ("dispytch_transports",)
    assert [t.schemes for t in info.transports] == [("good",)]


def test_unknown_hook_name_in_a_plugin_is_a_load_failure_with_a_hint(site):
    site(
        "typo-plugin",
        "1.0",
        {"typo": "typo_plugin_mod"},
        {
            "typo_plugin_mod": """
        from dispytch.plugins import hookimpl

        @hookimpl
        def dispytch_transport():
            return []
    """
        },
    )
    (failure,) = [f for f in load_failures() if f.name == "typo"]
    assert "unknown hooks: 'dispytch_transport' (did you mean 'dispytch_transports'?)" in str(
        failure
    )


def test_one_plugin_name_in_two_distributions_is_reported(site):
    site("first-dist", "1.0", {"same": "same_a_mod"}, {"same_a_mod": GOOD_PLUGIN})
    site("second-dist", "1.0", {"same": "same_b_mod"}, {"same_b_mod": GOOD_PLUGIN})
    failures = [str(f) for f in load_failures() if f.name == "same"]
    assert len(failures) == 1
    assert "first-dist" in failures[0] or "second-dist" in failures[0]
    assert "is also used by" in failures[0]
    assert transport_for_url("good://").name == "good"  # one of them still loads


def test_a_plugin_may_not_call_itself_builtin(site):
    site("impostor", "1.0", {"builtin": "impostor_mod"}, {"impostor_mod": GOOD_PLUGIN})
    (failure,) = [f for f in load_failures() if f.name == "builtin"]
    assert "reserved for dispytch-core" in str(failure)
    assert {i.name: i for i in plugin_infos()}["builtin"].distribution == "dispytch-core"


# -- environment switches ----------------------------------------------------------------


def test_dispytch_plugins_none_loads_builtins_only(site, monkeypatch):
    site("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD_PLUGIN})
    monkeypatch.setenv("DISPYTCH_PLUGINS", "none")
    manager.reset_plugins()
    assert [i.name for i in plugin_infos()] == ["builtin"]
    assert load_failures() == []
    with pytest.raises(TransportNotFoundError, match=r"No transport serves 'good://'"):
        transport_for_url("good://x")


def test_dispytch_plugins_selects_by_name(site, monkeypatch, caplog):
    site("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD_PLUGIN})
    site(
        "broken-plugin",
        "0.0.1",
        {"broken": "broken_plugin_mod"},
        {"broken_plugin_mod": BROKEN_PLUGIN},
    )
    monkeypatch.setenv("DISPYTCH_PLUGINS", "good, nosuch")
    manager.reset_plugins()
    with caplog.at_level(logging.WARNING, "dispytch.plugins"):
        names = [i.name for i in plugin_infos()]
    assert names == ["builtin", "good"]
    assert load_failures() == []  # the broken one was never imported
    assert "DISPYTCH_PLUGINS names nosuch, which no installed distribution provides" in (
        caplog.text
    )


def test_dispytch_trace_hooks_shows_every_hook_call(monkeypatch, capsys, register):
    monkeypatch.setenv("DISPYTCH_TRACE_HOOKS", "1")
    manager.reset_plugins()

    class Observer:
        @hookimpl
        def dispytch_emitter_started(self, emitter):
            pass

    register(Observer(), name="observer")
    transport_for_url("memory://")  # a lookup
    notify("dispytch_emitter_started", emitter="E")  # a lifecycle notification
    err = capsys.readouterr().err
    assert (
        "[dispytch hooks] dispytch_transports [builtin] {} -> [[TransportSpec(name='memory'" in err
    )
    assert "[dispytch hooks] dispytch_emitter_started [observer] {'emitter': 'E'} -> []" in err


def test_dispytch_trace_hooks_shows_a_hook_that_raises(monkeypatch, capsys, register):
    monkeypatch.setenv("DISPYTCH_TRACE_HOOKS", "1")
    manager.reset_plugins()

    class Failing:
        @hookimpl
        def dispytch_dispatcher_stopped(self, dispatcher):
            raise RuntimeError("observer broke")

    register(Failing(), name="failing")
    notify("dispytch_dispatcher_stopped", dispatcher="D")
    err = capsys.readouterr().err
    assert (
        "[dispytch hooks] dispytch_dispatcher_stopped [failing] {'dispatcher': 'D'} "
        "raised RuntimeError: observer broke"
    ) in err


def test_without_the_switch_nothing_is_traced(capsys, register):
    transport_for_url("memory://")
    notify("dispytch_emitter_started", emitter="E")
    assert "[dispytch hooks]" not in capsys.readouterr().err


# -- conflicts ---------------------------------------------------------------------------


def test_two_plugins_claiming_one_scheme_is_an_error_naming_both(register):
    register(transport_plugin("alpha", "dup"), name="first")
    register(transport_plugin("beta", "dup"), name="second")
    expected = (
        r"URL scheme 'dup://' is claimed by two plugins: 'first' \(transport 'alpha'\) "
        r"and 'second' \(transport 'beta'\)\.\nUninstall one of them, or load only one with "
        r"DISPYTCH_PLUGINS\."
    )
    with pytest.raises(PluginError, match=expected):
        transport_for_url("dup://x")
    with pytest.raises(PluginError, match=expected):
        transports()
    # Other schemes keep working.
    assert transport_for_url("memory://").name == "memory"
    assert manager.transport_problems() and "'first'" in manager.transport_problems()[0]


def test_two_plugins_with_one_transport_name_is_an_error_naming_both(register):
    register(transport_plugin("memory", "other-memory"), name="copycat")
    expected = (
        r"Transport name 'memory' is claimed by two plugins: 'builtin' from dispytch-core "
        r"\(transport 'memory'\) and 'copycat' \(transport 'memory'\)"
    )
    with pytest.raises(PluginError, match=expected):
        transports()
    # Lookups go by scheme, and both schemes are undisputed.
    assert transport_for_url("memory://").producer_factory is not _factory
    assert transport_for_url("other-memory://").producer_factory is _factory


def test_registering_and_unregistering_refreshes_the_tables(register):
    plugin = register(transport_plugin("fresh"), name="fresh")
    assert transport_for_url("fresh://").name == "fresh"
    get_plugin_manager().unregister(plugin)
    with pytest.raises(TransportNotFoundError, match="No transport serves 'fresh://'"):
        transport_for_url("fresh://")


def test_a_failing_registration_hook_is_reported_and_the_others_still_work(register):
    class Failing:
        @hookimpl
        def dispytch_transports(self):
            raise RuntimeError("cannot describe myself")

    class WrongType:
        @hookimpl
        def dispytch_serializers(self):
            return ["json"]

    register(Failing(), name="failing")
    register(WrongType(), name="wrongtype")
    assert transport_for_url("memory://").name == "memory"
    assert serializer_for("json").content_type == "application/json"
    failures = {f.name: str(f) for f in load_failures()}
    assert failures["failing"] == (
        "Plugin 'failing' failed in its dispytch_transports hook: "
        "RuntimeError: cannot describe myself"
    )
    assert (
        "dispytch_serializers returned 'json'; return a list of SerializerSpec"
        in (failures["wrongtype"])
    )


# -- scheme not found --------------------------------------------------------------------


def test_unknown_first_party_scheme_names_the_distribution_to_install(monkeypatch):
    monkeypatch.setitem(manager.KNOWN_SCHEMES, "nats", "dispytch-nats")
    with pytest.raises(
        TransportNotFoundError,
        match=r"No transport serves 'nats://'\. Installed: .*memory.*\n"
        r"Install it with: pip install dispytch-nats",
    ):
        transport_for_url("nats://localhost:4222")


def test_installed_but_deselected_distribution_says_so(site, monkeypatch):
    site("dispytch-fake", "0.1.0", {"fake": "fake_good_mod"}, {"fake_good_mod": GOOD_PLUGIN})
    monkeypatch.setitem(manager.KNOWN_SCHEMES, "fake", "dispytch-fake")
    monkeypatch.setenv("DISPYTCH_PLUGINS", "none")
    manager.reset_plugins()
    with pytest.raises(
        TransportNotFoundError,
        match=r"No transport serves 'fake://'\. Installed: memory\.\n"
        r"dispytch-fake is installed but not loaded: DISPYTCH_PLUGINS='none' leaves it out\. "
        r"Add its plugin name or unset DISPYTCH_PLUGINS\.",
    ):
        transport_for_url("fake://x")


def test_installed_but_broken_distribution_says_to_reinstall(site, monkeypatch):
    site("dispytch-fake", "0.1.0", {"fake": "fake_broken_mod"}, {"fake_broken_mod": BROKEN_PLUGIN})
    monkeypatch.setitem(manager.KNOWN_SCHEMES, "fake", "dispytch-fake")
    with pytest.raises(
        TransportNotFoundError,
        match=r"dispytch-fake is installed but its plugin failed to load \(boom: libfoo is "
        r"missing\)\. Reinstall it with: pip install --force-reinstall dispytch-fake",
    ):
        transport_for_url("fake://x")


def test_typo_in_a_scheme_suggests_the_closest():
    with pytest.raises(
        TransportNotFoundError,
        match=r"No transport serves 'memroy://'\. Did you mean 'memory://'\?",
    ):
        transport_for_url("memroy://")


def test_typo_of_an_uninstalled_first_party_scheme_also_says_what_to_install(monkeypatch):
    monkeypatch.setenv("DISPYTCH_PLUGINS", "none")
    manager.reset_plugins()
    with pytest.raises(
        TransportNotFoundError,
        match=r"(?s)No transport serves 'kafak://'\. Did you mean 'kafka://'\?"
        r".*dispytch-kafka",
    ):
        transport_for_url("kafak://localhost:9092")


def test_unknown_third_party_scheme_says_how_to_find_one():
    with pytest.raises(
        TransportNotFoundError,
        match=r"No transport serves 'zzz://'\. Installed: .*\n"
        r"If a third-party plugin serves it, install that distribution and "
        r"check `dispytch plugins`\.",
    ):
        transport_for_url("zzz://x")


def test_url_without_scheme():
    with pytest.raises(
        TransportNotFoundError,
        match=r"'localhost:9092' has no scheme\. Write it as scheme://\.\.\., "
        r"e\.g\. 'memory://' or 'kafka://localhost:9092'\.",
    ):
        transport_for_url("localhost:9092")
    with pytest.raises(
        TransportNotFoundError, match=r"'memory:' has no scheme\. Write it as memory://\.\.\."
    ):
        transport_for_url("memory:")


def test_a_broker_name_instead_of_its_scheme_suggests_the_scheme(monkeypatch):
    monkeypatch.setenv("DISPYTCH_PLUGINS", "none")
    manager.reset_plugins()
    with pytest.raises(
        TransportNotFoundError,
        match=r"(?s)No transport serves 'rabbitmq://'\. Did you mean 'amqp://'\?"
        r".*dispytch-rabbitmq",
    ):
        transport_for_url("rabbitmq://guest:guest@localhost/")


# -- serializers and middleware ------------------------------------------------------------


def test_serializer_by_name_or_content_type_is_built_once():
    json_ser = serializer_for("json")
    assert isinstance(json_ser, JsonSerializer)
    assert serializer_for("application/json; charset=utf-8") is json_ser


def test_unknown_serializer_suggests_the_closest(monkeypatch):
    monkeypatch.setenv("DISPYTCH_PLUGINS", "none")  # built-ins only, whatever is installed
    with pytest.raises(
        PluginError,
        match=r"No serializer is registered as 'jsn'\. Did you "
        r"mean 'json'\? Known: json, msgpack\.\nA serializer"
        r" comes from a plugin",
    ):
        serializer_for("jsn")


def test_two_plugins_providing_one_serializer_is_an_error_naming_both(register):
    class Other:
        @hookimpl
        def dispytch_serializers(self):
            return [SerializerSpec(name="json", content_type="text/x-json", factory=JsonSerializer)]

    register(Other(), name="other")
    with pytest.raises(
        PluginError,
        match=r"Serializer name 'json' is claimed by two plugins: 'builtin' from dispytch-core "
        r"\(json, application/json\) and 'other' \(json, text/x-json\)\.\nUninstall one",
    ):
        serializer_for("json")
    # Only the disputed name: each content type still finds its serializer.
    assert serializer_for("application/json").content_type == "application/json"


def test_builtin_middleware_by_name_with_options():
    from dispytch.middleware import Retry

    retry = middleware_factory("retry")(attempts=5)
    assert isinstance(retry, Retry)


def test_unknown_middleware_suggests_the_closest():
    with pytest.raises(
        PluginError,
        match=r"No middleware is registered as 'retyr'\. Did you "
        r"mean 'retry'\? Known: .*dead-letter",
    ):
        middleware_factory("retyr")


def test_two_plugins_providing_one_middleware_is_an_error_naming_both(register):
    class Other:
        @hookimpl
        def dispytch_middlewares(self):
            return [MiddlewareSpec(name="retry", factory=lambda **kw: None)]

    register(Other(), name="other")
    with pytest.raises(
        PluginError,
        match=r"Middleware name 'retry' is claimed by two plugins: 'builtin' from "
        r"dispytch-core and 'other'\.\nUninstall one",
    ):
        middleware_factory("retry")
    assert middleware_factory("dead-letter") is not None


async def test_a_plugin_middleware_runs_only_where_a_stack_names_it(register):
    built: list[dict] = []
    seen: list[str] = []

    def make(**options):
        built.append(options)

        async def mw(ctx, call_next):
            seen.append(ctx.route)
            return await call_next(ctx)

        return mw

    class Plugin:
        @hookimpl
        def dispytch_middlewares(self):
            return [MiddlewareSpec(name="spy", factory=make)]

    register(Plugin(), name="spy-plugin")

    got: list[tuple[str, int]] = []
    done = asyncio.Event()
    url = "memory://plugins-mw-test"
    dispatcher = EventDispatcher.from_url(url)

    @dispatcher.handler(TopicSubscription(topic="ping"))
    async def plain(event: Event[Ping]):
        got.append(("plain", event.body.n))
        if len(got) == 2:
            done.set()

    @dispatcher.handler(TopicSubscription(topic="ping"), middlewares=[("spy", {"tag": "x"})])
    async def spied(event: Event[Ping]):
        got.append(("spied", event.body.n))
        if len(got) == 2:
            done.set()

    async with EventEmitter.from_url(url) as emitter, dispatcher:
        await emitter.emit(Ping(n=1))
        await asyncio.wait_for(done.wait(), 5)
    assert sorted(got) == [("plain", 1), ("spied", 1)]
    assert built == [{"tag": "x"}]  # built once, for the one handler that names it
    assert seen == ["ping"]


# -- lifecycle notify ----------------------------------------------------------------------


def test_notify_isolates_a_failing_observer(register, caplog):
    calls = []

    class Failing:
        @hookimpl
        def dispytch_dispatcher_started(self, dispatcher):
            raise RuntimeError("observer broke")

    class Fine:
        @hookimpl
        def dispytch_dispatcher_started(self, dispatcher):
            calls.append(dispatcher)

    register(Failing(), name="failing")
    register(Fine(), name="fine")
    with caplog.at_level(logging.ERROR, "dispytch.plugins"):
        notify("dispytch_dispatcher_started", dispatcher="D")
    assert calls == ["D"]
    assert "Plugin 'failing' failed in its dispytch_dispatcher_started hook" in caplog.text
    assert "observer broke" in caplog.text


def test_notify_says_that_async_hooks_are_not_awaited(register, caplog):
    class Async:
        @hookimpl
        async def dispytch_emitter_stopped(self, emitter):
            pass

    register(Async(), name="async-observer")
    with caplog.at_level(logging.ERROR, "dispytch.plugins"):
        notify("dispytch_emitter_stopped", emitter="E")
    assert "Plugin 'async-observer': dispytch_emitter_stopped returned an awaitable" in (
        caplog.text
    )


def test_notify_rejects_a_hook_that_is_not_a_lifecycle_hook():
    with pytest.raises(
        PluginError,
        match=r"'dispytch_transports' is not a lifecycle hook; "
        r"use one of dispytch_dispatcher_started",
    ):
        notify("dispytch_transports")


def test_notify_supports_pluggy_wrappers(register):
    order = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def dispytch_emitter_started(self, emitter):
            order.append("before")
            result = yield
            order.append("after")
            return result

    class Plain:
        @hookimpl
        def dispytch_emitter_started(self, emitter):
            order.append("plain")

    register(Wrapper(), name="wrapper")
    register(Plain(), name="plain")
    notify("dispytch_emitter_started", emitter="E")
    assert order == ["before", "plain", "after"]


async def test_no_hook_is_called_per_message(register):
    class Observer:
        @hookimpl
        def dispytch_dispatcher_started(self, dispatcher):
            pass

    register(Observer(), name="observer")
    url = "memory://plugins-per-message"
    n = 50
    handled: list[int] = []
    done = asyncio.Event()
    dispatcher = EventDispatcher.from_url(url, middlewares=[("retry", {"attempts": 2})])

    @dispatcher.handler(TopicSubscription(topic="ping"), middlewares=["observe"])
    async def on_ping(event: Event[Ping]):
        handled.append(event.body.n)
        if len(handled) == n:
            done.set()

    async with EventEmitter.from_url(url) as emitter, dispatcher:
        await emitter.emit(Ping(n=-1))  # warm up: decoders are built on first use
        pm = get_plugin_manager()
        hook_calls: list[str] = []
        # Every hook call goes through pluggy's execution, so monitoring sees them all.
        undo = pm.add_hookcall_monitoring(
            lambda name, impls, kwargs: hook_calls.append(name), lambda *args: None
        )
        try:
            for i in range(n - 1):
                await emitter.emit(Ping(n=i))
            await asyncio.wait_for(done.wait(), 5)
        finally:
            undo()
    assert sorted(handled) == [-1, *range(n - 1)]
    assert hook_calls == []
