"""The ``dispytch`` command: ``--version``, ``plugins [--json]``, ``run module:attribute``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from dispytch import __version__
from dispytch.cli import main
from dispytch.plugins import MiddlewareSpec, SerializerSpec, TransportSpec, hookimpl
from dispytch.serialization import JsonSerializer
from dispytch.transport import DEFAULT_CAPABILITIES

DISPYTCH = str(Path(sys.executable).with_name("dispytch"))
TIMEOUT = 30.0


def _make(url, **options):
    raise AssertionError("listing plugins must not build clients")


class ListedPlugin:
    @hookimpl
    def dispytch_transports(self):
        return [
            TransportSpec(
                name="listed",
                schemes=("listed", "listed+tls"),
                producer_factory=_make,
                consumer_factory=_make,
                description="a listed transport",
            )
        ]

    @hookimpl
    def dispytch_serializers(self):
        return [
            SerializerSpec(
                name="listed-json",
                content_type="application/x-listed",
                factory=JsonSerializer,
                description="listed format",
            )
        ]

    @hookimpl
    def dispytch_middlewares(self):
        return [MiddlewareSpec(name="listed-mw", factory=lambda **kw: None)]


class BrokenHook:
    @hookimpl
    def dispytch_middlewares(self):
        raise RuntimeError("no middleware today")


# -- --version and plugins ----------------------------------------------------------------


def test_version_from_the_console_script():
    out = subprocess.run(
        [DISPYTCH, "--version"], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert out.stdout.startswith(f"dispytch {__version__} (Python ")


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: dispytch" in capsys.readouterr().out


def test_plugins_lists_each_plugin_with_what_it_provides(capsys, register):
    register(ListedPlugin(), name="listed-plugin")
    register(BrokenHook(), name="broken-hook")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"builtin: dispytch-core {__version__}\n" in out
    assert "  transport memory (memory://) - in-process broker" in out
    assert "  serializer json (application/json) - JSON through pydantic-core" in out
    assert "  middlewares: retry, dead-letter, lock, filter, timeout, observe\n" in out
    assert "listed-plugin: (registered in-process)\n" in out
    assert "  hooks: dispytch_middlewares, dispytch_serializers, dispytch_transports\n" in out
    assert "  transport listed (listed://, listed+tls://) - a listed transport\n" in out
    assert "  serializer listed-json (application/x-listed) - listed format\n" in out
    assert "  middlewares: listed-mw\n" in out
    assert "Failed to load:\n" in out
    assert "  broken-hook in dispytch_middlewares: RuntimeError: no middleware today\n" in out


def test_plugins_json_is_scriptable(capsys, register):
    register(ListedPlugin(), name="listed-plugin")
    assert main(["plugins", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"plugins", "failures", "conflicts", "selection"}
    assert report["selection"] is None
    by_name = {p["name"]: p for p in report["plugins"]}
    assert by_name["builtin"]["distribution"] == "dispytch-core"
    assert by_name["builtin"]["version"] == __version__
    assert by_name["listed-plugin"] == {
        "name": "listed-plugin",
        "distribution": None,
        "version": None,
        "entry_point": None,
        "hooks": ["dispytch_middlewares", "dispytch_serializers", "dispytch_transports"],
        "transports": [
            {
                "name": "listed",
                "schemes": ["listed", "listed+tls"],
                "description": "a listed transport",
                "capabilities": DEFAULT_CAPABILITIES.to_dict(),
                "options": [],
            }
        ],
        "serializers": [
            {
                "name": "listed-json",
                "content_type": "application/x-listed",
                "description": "listed format",
            }
        ],
        "middlewares": [{"name": "listed-mw", "description": ""}],
    }


def test_plugins_shows_conflicts(capsys, register):
    class Clash:
        @hookimpl
        def dispytch_transports(self):
            return [
                TransportSpec(
                    name="clash",
                    schemes=("memory",),
                    producer_factory=_make,
                    consumer_factory=_make,
                )
            ]

    register(Clash(), name="clash")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert (
        "Conflicts:\n  URL scheme 'memory://' is claimed by two plugins: 'builtin' from "
        "dispytch-core (transport 'memory') and 'clash' (transport 'clash'). Uninstall one "
        "of them, or load only one with DISPYTCH_PLUGINS.\n"
    ) in out


def test_plugins_from_the_console_script_reports_entry_point_failures(site):
    site(
        "dispytch-broken",
        "0.3.0",
        {"broken": "cli_broken_mod"},
        {"cli_broken_mod": "raise ImportError('needs libbroken')\n"},
    )
    root = Path(sys.path[0])  # the site fixture put its directory first
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path[1:]])}
    out = subprocess.run(
        [DISPYTCH, "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=True,
    )
    report = json.loads(out.stdout)
    (failure,) = [f for f in report["failures"] if f["name"] == "broken"]
    assert failure == {
        "name": "broken",
        "entry_point": "cli_broken_mod",
        "distribution": "dispytch-broken",
        "hook": None,
        "error": "ImportError: needs libbroken",
    }
    assert "builtin" in {p["name"] for p in report["plugins"]}
    assert "failed to load" not in out.stderr  # reported once, in the listing


# -- run: errors -------------------------------------------------------------------------------


def _module(tmp_path: Path, source: str) -> str:
    name = f"cliapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return name


APP_HEADER = """
    import asyncio
    from pydantic import BaseModel
    from dispytch import Event, EventBase, EventDispatcher, EventEmitter, TopicRoute
    from dispytch import TopicSubscription
    from dispytch.plugins import get_plugin_manager, hookimpl


    class Ping(EventBase):
        __route__ = TopicRoute(topic="cli.ping")
        n: int
"""


def test_run_rejects_a_target_without_colon(capsys):
    assert main(["run", "just_a_module"]) == 2
    assert capsys.readouterr().err == (
        "dispytch: error: 'just_a_module' is not of the form module:attribute, e.g. "
        "myapp.service:dispatcher.\n"
    )


def test_run_reports_a_missing_module(capsys, tmp_path):
    assert main(["run", "no_such_module_xyz:dispatcher", "--app-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "dispytch: error: Could not import module 'no_such_module_xyz' "
        f"(looked in {tmp_path} and sys.path). Check the name, or pass "
        "--app-dir"
    )


def test_run_reports_a_missing_attribute(capsys, tmp_path):
    name = _module(tmp_path, "dispatcher = None\nother = 1\n")
    assert main(["run", f"{name}:dispacher", "--app-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"dispytch: error: Module {name!r} has no attribute 'dispacher'. "
        "It has: dispatcher, other.\n"
    )


def test_run_rejects_what_is_not_a_dispatcher(capsys, tmp_path):
    name = _module(tmp_path, "number = 3\ndef factory():\n    return 'nope'\n")
    assert main(["run", f"{name}:number", "--app-dir", str(tmp_path)]) == 2
    assert "is a int, not an EventDispatcher or a factory returning one" in (
        capsys.readouterr().err
    )
    assert main(["run", f"{name}:factory", "--app-dir", str(tmp_path)]) == 2
    assert f"{name}:factory() returned a str; it must return an EventDispatcher." in (
        capsys.readouterr().err
    )


def test_run_does_not_hide_an_import_error_inside_the_module(tmp_path):
    name = _module(tmp_path, "import no_such_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        main(["run", f"{name}:dispatcher", "--app-dir", str(tmp_path)])


# -- run: factories, in-process ------------------------------------------------------------------

SELF_STOPPING = (
    APP_HEADER
    + """

    handled = []


    class StopWhenDone:
        @hookimpl
        def dispytch_dispatcher_started(self, dispatcher):
            asyncio.get_running_loop().create_task(self.drive(dispatcher))

        async def drive(self, dispatcher):
            async with EventEmitter.from_url(dispatcher.url) as emitter:
                await emitter.emit(Ping(n=7))
            for _ in range(1000):  # bounded: 10 s at most
                if handled:
                    break
                await asyncio.sleep(0.01)
            await dispatcher.stop()


    def build(url):
        dispatcher = EventDispatcher.from_url(url)
        dispatcher.url = url

        @dispatcher.handler(TopicSubscription(topic="cli.ping"))
        async def on_ping(event: Event[Ping]):
            handled.append(event.body.n)

        return dispatcher


    def sync_factory():
        return build("memory://cli-sync")


    async def async_factory():
        await asyncio.sleep(0)
        return build("memory://cli-async")
"""
)


@pytest.mark.parametrize("attr", ["sync_factory", "async_factory"])
def test_run_accepts_sync_and_async_factories(tmp_path, register, attr, monkeypatch):
    name = _module(tmp_path, SELF_STOPPING)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    register(module.StopWhenDone(), name="stopper")
    assert main(["run", f"{name}:{attr}", "--app-dir", str(tmp_path)]) == 0
    assert module.handled == [7]


# -- run: the real thing, as a subprocess receiving SIGTERM ------------------------------------

SERVICE = (
    APP_HEADER
    + """
    import sys

    dispatcher = EventDispatcher.from_url("memory://cli-service")


    @dispatcher.handler(TopicSubscription(topic="cli.ping"))
    async def on_ping(event: Event[Ping]):
        print(f"started {event.body.n}", flush=True)
        await asyncio.sleep(0.3)  # still in flight when SIGTERM arrives
        print(f"finished {event.body.n}", flush=True)


    class EmitOnStart:
        @hookimpl
        def dispytch_dispatcher_started(self, dispatcher):
            asyncio.get_running_loop().create_task(self.emit())

        async def emit(self):
            async with EventEmitter.from_url("memory://cli-service") as emitter:
                await emitter.emit(Ping(n=1))

        @hookimpl
        def dispytch_dispatcher_stopped(self, dispatcher):
            print(f"stopped handled={dispatcher.stats['handled']}", flush=True)


    get_plugin_manager().register(EmitOnStart(), name="emit-on-start")
"""
)


async def _readline(stream: asyncio.StreamReader) -> str:
    line = await asyncio.wait_for(stream.readline(), TIMEOUT)
    return line.decode().rstrip("\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_stops_gracefully_on_a_signal(tmp_path, signum):
    name = _module(tmp_path, SERVICE)
    proc = await asyncio.create_subprocess_exec(
        DISPYTCH,
        "run",
        f"{name}:dispatcher",
        "--app-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DISPYTCH_PLUGINS": "none"},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert await _readline(proc.stdout) == "started 1"
        proc.send_signal(signum)
        rest = await asyncio.wait_for(proc.stdout.read(), TIMEOUT)
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
        err = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    # The in-flight handler finished before the dispatcher closed.
    assert rest.decode().splitlines() == ["finished 1", "stopped handled=1"]
    assert f"Received {signal.Signals(signum).name}: stopping gracefully." in err
    assert "Stopped." in err


FAILS_TO_START = (
    APP_HEADER
    + """
    from dispytch.memory import MemoryConsumer


    class Unreachable(MemoryConsumer):
        async def start(self):
            raise ConnectionRefusedError("broker down")


    dispatcher = EventDispatcher(Unreachable())
"""
)


def test_run_reports_a_dispatcher_that_fails_to_start(tmp_path, caplog):
    name = _module(tmp_path, FAILS_TO_START)
    assert main(["run", f"{name}:dispatcher", "--app-dir", str(tmp_path)]) == 1
    assert f"Could not start {name}:dispatcher." in caplog.text
    assert "ConnectionRefusedError: broker down" in caplog.text


SLOW_SERVICE = (
    APP_HEADER
    + """
    dispatcher = EventDispatcher.from_url("memory://cli-slow", stop_timeout=60)


    @dispatcher.handler(TopicSubscription(topic="cli.ping"))
    async def on_ping(event: Event[Ping]):
        print("started", flush=True)
        await asyncio.sleep(60)


    class EmitOnStart:
        @hookimpl
        def dispytch_dispatcher_started(self, dispatcher):
            asyncio.get_running_loop().create_task(self.emit())

        async def emit(self):
            async with EventEmitter.from_url("memory://cli-slow") as emitter:
                await emitter.emit(Ping(n=1))


    get_plugin_manager().register(EmitOnStart(), name="emit-on-start")
"""
)


async def _start_slow(tmp_path: Path, *extra: str) -> asyncio.subprocess.Process:
    name = _module(tmp_path, SLOW_SERVICE)
    proc = await asyncio.create_subprocess_exec(
        DISPYTCH,
        "run",
        f"{name}:dispatcher",
        "--app-dir",
        str(tmp_path),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DISPYTCH_PLUGINS": "none"},
    )
    assert proc.stdout is not None
    assert await _readline(proc.stdout) == "started"
    return proc


async def _stderr_until(proc: asyncio.subprocess.Process, text: str) -> str:
    assert proc.stderr is not None
    seen = ""
    while text not in seen:
        line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
        assert line, f"stderr ended before {text!r}: {seen}"
        seen += line.decode()
    return seen


async def test_run_second_signal_cuts_the_graceful_stop_short(tmp_path):
    proc = await _start_slow(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        await _stderr_until(proc, "Received SIGTERM: stopping gracefully.")
        proc.send_signal(signal.SIGINT)
        err = await _stderr_until(proc, "stop interrupted by a second signal")
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 1
    assert "Received SIGINT again: cutting the graceful stop short." in err


async def test_run_stop_timeout_bounds_the_graceful_stop(tmp_path):
    proc = await _start_slow(tmp_path, "--stop-timeout", "0.2")
    try:
        proc.send_signal(signal.SIGTERM)
        err = await _stderr_until(proc, "Stopped.")
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    assert "still in flight" in err  # handed back to the broker, not lost


def test_plugins_mentions_an_active_selection(capsys, monkeypatch):
    monkeypatch.setenv("DISPYTCH_PLUGINS", "none")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("builtin: dispytch-core")
    assert out.endswith("\nDISPYTCH_PLUGINS=none limits which entry points are loaded.\n")
