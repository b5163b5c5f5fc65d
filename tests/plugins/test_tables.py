"""One conflict policy for every plugin table, hooks called through pluggy (wrappers
honoured), and what ``dispytch plugins`` shows of it."""

from __future__ import annotations

import json
import logging

import pytest
from dispytch import EventEmitter
from dispytch.cli import main
from dispytch.errors import PluginError
from dispytch.memory import MemoryProducer
from dispytch.middleware import Retry
from dispytch.options import TransportOptions
from dispytch.plugins import (
    MiddlewareSpec,
    SerializerSpec,
    TransportSpec,
    get_plugin_manager,
    hookimpl,
    load_failures,
    middleware_factory,
    middlewares,
    notify,
    plugin_conflicts,
    serializer_for,
    serializers,
    transport_for_url,
    transports,
)
from dispytch.serialization import JsonSerializer
from dispytch.transport import Capabilities


def _factory(url, **options):
    return ("built", url, options)


def _transport(name: str, *schemes: str) -> TransportSpec:
    return TransportSpec(
        name=name, schemes=schemes, producer_factory=_factory, consumer_factory=_factory
    )


def _serializer(name: str, content_type: str) -> SerializerSpec:
    return SerializerSpec(name=name, content_type=content_type, factory=JsonSerializer)


class Provides:
    """An in-process plugin returning the given records from its registration hooks."""

    def __init__(self, *records: object) -> None:
        self.records = records

    @hookimpl
    def dispytch_transports(self):
        return [r for r in self.records if isinstance(r, TransportSpec)]

    @hookimpl
    def dispytch_serializers(self):
        return [r for r in self.records if isinstance(r, SerializerSpec)]

    @hookimpl
    def dispytch_middlewares(self):
        return [r for r in self.records if isinstance(r, MiddlewareSpec)]


def _cli_conflicts(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert main(["plugins", "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)["conflicts"]


# -- one policy, per kind ------------------------------------------------------------------


def test_a_disputed_scheme_fails_alone(register, capsys):
    register(Provides(_transport("alpha", "dup", "alpha")), name="first")
    register(Provides(_transport("beta", "dup", "beta")), name="second")
    message = (
        "URL scheme 'dup://' is claimed by two plugins: 'first' (transport 'alpha') and "
        "'second' (transport 'beta').\n"
        "Uninstall one of them, or load only one with DISPYTCH_PLUGINS."
    )
    with pytest.raises(PluginError) as caught:
        transport_for_url("dup://x")
    assert str(caught.value) == message
    # Every other scheme works, the two plugins' own undisputed schemes included.
    assert transport_for_url("alpha://").name == "alpha"
    assert transport_for_url("beta://").name == "beta"
    assert transport_for_url("memory://").name == "memory"
    with pytest.raises(PluginError, match="URL scheme 'dup://'"):
        transports()
    text, conflicts = _cli_conflicts(capsys)
    one_line = message.replace("\n", " ")
    assert conflicts == [one_line]
    assert f"Conflicts:\n  {one_line}\n" in text


def test_a_disputed_serializer_name_fails_alone(builtins_only, register, capsys):
    register(Provides(_serializer("cbor", "application/cbor")), name="cbor-a")
    register(Provides(_serializer("cbor", "application/x-cbor")), name="cbor-b")
    register(Provides(_serializer("yaml", "application/yaml")), name="yaml")
    message = (
        "Serializer name 'cbor' is claimed by two plugins: 'cbor-a' (cbor, application/cbor) "
        "and 'cbor-b' (cbor, application/x-cbor).\n"
        "Uninstall one of them, or load only one with DISPYTCH_PLUGINS."
    )
    with pytest.raises(PluginError) as caught:
        serializer_for("cbor")
    assert str(caught.value) == message
    # The undisputed keys: both content types, and every other serializer.
    assert serializer_for("application/cbor") is not serializer_for("application/x-cbor")
    assert serializer_for("application/json").content_type == "application/json"
    assert isinstance(serializer_for("yaml"), JsonSerializer)
    assert serializer_for("application/yaml") is serializer_for("yaml")
    emitter = EventEmitter(MemoryProducer(), serializer="json")
    assert emitter.serializer.content_type == "application/json"
    with pytest.raises(PluginError, match="Serializer name 'cbor'"):
        serializers()
    text, conflicts = _cli_conflicts(capsys)
    assert conflicts == [message.replace("\n", " ")]
    assert "Conflicts:\n  Serializer name 'cbor' is claimed by two plugins" in text


def test_a_disputed_content_type_fails_alone(register):
    register(Provides(_serializer("cbor", "application/cbor")), name="cbor-a")
    register(Provides(_serializer("cbor2", "application/cbor")), name="cbor-b")
    with pytest.raises(
        PluginError,
        match=r"^Serializer content type 'application/cbor' is claimed by two plugins: "
        r"'cbor-a' \(cbor, application/cbor\) and 'cbor-b' \(cbor2, application/cbor\)\.",
    ):
        serializer_for("application/cbor; v=2")
    assert serializer_for("cbor") is not serializer_for("cbor2")
    assert isinstance(serializer_for("json"), JsonSerializer)


def test_a_disputed_middleware_name_fails_alone(register, capsys):
    register(Provides(MiddlewareSpec("audit", lambda **kw: "a")), name="audit-a")
    register(Provides(MiddlewareSpec("audit", lambda **kw: "b")), name="audit-b")
    message = (
        "Middleware name 'audit' is claimed by two plugins: 'audit-a' and 'audit-b'.\n"
        "Uninstall one of them, or load only one with DISPYTCH_PLUGINS."
    )
    with pytest.raises(PluginError) as caught:
        middleware_factory("audit")
    assert str(caught.value) == message
    assert isinstance(middleware_factory("retry")(attempts=2), Retry)
    with pytest.raises(PluginError, match="Middleware name 'audit'"):
        middlewares()
    text, conflicts = _cli_conflicts(capsys)
    assert conflicts == [message.replace("\n", " ")]
    assert "Conflicts:\n  Middleware name 'audit' is claimed by two plugins" in text


def test_the_same_record_from_two_plugins_is_no_conflict(register):
    spec = _serializer("same", "application/x-same")
    register(Provides(spec), name="one")
    register(Provides(spec), name="two")
    assert serializer_for("same") is serializer_for("application/x-same")
    assert plugin_conflicts() == []


SERIALIZER_PLUGIN = """
from dispytch.plugins import SerializerSpec, hookimpl
from dispytch.serialization import JsonSerializer

@hookimpl
def dispytch_serializers():
    return [SerializerSpec(name="cbor", content_type="{content_type}", factory=JsonSerializer)]
"""


def test_a_conflict_names_both_distributions(site):
    for dist, mod, ctype in (
        ("dispytch-cbor-one", "cbor_one_mod", "application/cbor"),
        ("dispytch-cbor-two", "cbor_two_mod", "application/x-cbor"),
    ):
        source = SERIALIZER_PLUGIN.replace("{content_type}", ctype)
        site(dist, "1.0", {mod.removesuffix("_mod"): mod}, {mod: source})
    with pytest.raises(
        PluginError,
        match=r"^Serializer name 'cbor' is claimed by two plugins: 'cbor_one' from "
        r"dispytch-cbor-one \(cbor, application/cbor\) and 'cbor_two' from "
        r"dispytch-cbor-two \(cbor, application/x-cbor\)\.",
    ):
        serializer_for("cbor")
    assert isinstance(serializer_for("json"), JsonSerializer)


# -- hooks go through pluggy ---------------------------------------------------------------


def test_a_registration_hook_wrapper_is_honoured(builtins_only, register):
    calls: list[str] = []

    class HideObserve:
        @hookimpl(wrapper=True)
        def dispytch_middlewares(self):
            result = yield
            calls.append("wrapped")
            return [[spec for spec in specs if spec.name != "observe"] for specs in result]

    register(HideObserve(), name="hide-observe")
    with pytest.raises(PluginError, match="No middleware is registered as 'observe'"):
        middleware_factory("observe")
    assert calls == ["wrapped"]  # once per implementing plugin: builtin only
    assert isinstance(middleware_factory("retry")(), Retry)


def test_an_old_style_hookwrapper_is_honoured(builtins_only, register):
    seen: list[object] = []

    class Spy:
        @hookimpl(hookwrapper=True)
        def dispytch_serializers(self):
            outcome = yield
            seen.append(outcome.get_result())

    register(Spy(), name="spy")
    assert isinstance(serializer_for("json"), JsonSerializer)
    # The wrapper runs once per plugin that serves serializers (core's own, plus any
    # format plugin installed beside it): it saw core's result among them.
    names = [{spec.name for spec in specs} for result in seen for specs in result]
    assert {"json", "msgpack"} in names


def test_a_failing_registration_hook_does_not_stop_the_others_under_a_wrapper(register):
    wrapped: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def dispytch_transports(self):
            try:
                return (yield)
            finally:
                wrapped.append("done")

    class Failing:
        @hookimpl
        def dispytch_transports(self):
            raise RuntimeError("cannot describe myself")

    register(Wrapper(), name="wrapper")
    register(Failing(), name="failing")
    register(Provides(_transport("late", "late")), name="late")
    assert transport_for_url("late://").name == "late"
    assert transport_for_url("memory://").name == "memory"
    assert [str(f) for f in load_failures() if f.name == "failing"] == [
        "Plugin 'failing' failed in its dispytch_transports hook: "
        "RuntimeError: cannot describe myself"
    ]
    impls = get_plugin_manager().hook.dispytch_transports.get_hookimpls()
    plain = [impl.plugin_name for impl in impls if not impl.wrapper]
    assert {"builtin", "failing", "late"} <= set(plain)
    assert len(wrapped) == len(plain)  # each plugin's call wrapped, the failing one too


def test_a_lifecycle_wrapper_wraps_each_observer_and_a_failing_one_is_isolated(
    builtins_only, register, caplog
):
    order: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def dispytch_dispatcher_started(self, dispatcher):
            order.append("before")
            try:
                return (yield)
            finally:
                order.append("after")

    class Failing:
        @hookimpl
        def dispytch_dispatcher_started(self, dispatcher):
            order.append("failing")
            raise RuntimeError("observer broke")

    class Fine:
        @hookimpl
        def dispytch_dispatcher_started(self, dispatcher):
            order.append(f"fine {dispatcher}")

    register(Wrapper(), name="wrapper")
    register(Failing(), name="failing")
    register(Fine(), name="fine")
    with caplog.at_level(logging.ERROR, "dispytch.plugins"):
        notify("dispytch_dispatcher_started", dispatcher="D")
    # pluggy's order (last registered first), each observer inside the wrapper.
    assert order == ["before", "fine D", "after", "before", "failing", "after"]
    assert "Plugin 'failing' failed in its dispytch_dispatcher_started hook" in caplog.text


# -- what the listing shows ----------------------------------------------------------------


class SampleOptions(TransportOptions):
    """Options of the listed transport."""

    linger: float = 0.5
    group: str


def test_plugins_json_shows_capabilities_and_options(register, capsys):
    spec = TransportSpec(
        name="capable",
        schemes=("capable",),
        producer_factory=_factory,
        consumer_factory=_factory,
        capabilities=Capabilities(ordered_lanes=True, delayed_requeue=True, pause_lanes=True),
        options_model=SampleOptions,
    )
    register(Provides(spec), name="capable-plugin")
    assert main(["plugins", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (listed,) = next(p for p in report["plugins"] if p["name"] == "capable-plugin")["transports"]
    assert listed["capabilities"] == {
        "delivery": "at-least-once",
        "ordered_lanes": True,
        "requeue": True,
        "delayed_requeue": True,
        "pause_lanes": True,
        "lease_extension": False,
        "request_reply": False,
    }
    assert listed["options"] == SampleOptions.describe()
    assert [o["name"] for o in listed["options"]] == ["linger", "group"]
    assert {o["name"]: o["required"] for o in listed["options"]} == {
        "linger": False,
        "group": True,
    }
    memory = next(p for p in report["plugins"] if p["name"] == "builtin")["transports"][0]
    assert memory["capabilities"]["delivery"] == "at-least-once"
    assert memory["options"] == []
