"""Discovery stays cheap: importing Dispytch and loading every plugin imports no broker
library. Each check runs in a fresh interpreter, so nothing this test process imported
counts."""

from __future__ import annotations

import importlib.util
import json

import pytest

from .conftest import run_python

BROKER_LIBS = ("aiokafka", "aio_pika", "aiormq", "redis", "kafka")

PROBE = """
import json, sys
{body}
print(json.dumps({{
    "heavy": sorted(m for m in {libs!r} if m in sys.modules),
    **result,
}}))
"""


def probe(body: str, **env: str) -> dict:
    out = run_python(PROBE.format(body=body, libs=BROKER_LIBS), env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_dispytch_imports_no_broker_library_and_loads_no_plugin():
    result = probe("""
import dispytch
from dispytch import EventDispatcher, EventEmitter, EventBase, Event
from dispytch.plugins import manager
result = {"loaded": manager.loaded()}
""")
    assert result == {"heavy": [], "loaded": False}


def test_loading_every_plugin_imports_no_broker_library():
    result = probe("""
from dispytch.plugins import load_failures, plugin_infos, transport_for_url, transports
infos = plugin_infos()
for scheme in transports():
    transport_for_url(scheme + "://localhost")
result = {"loaded": [i.name for i in infos], "failures": [str(f) for f in load_failures()]}
""")
    assert result["heavy"] == [], f"plugin discovery imported {result['heavy']}"
    assert "builtin" in result["loaded"]


def test_listing_plugins_imports_no_broker_library():
    result = probe("""
import contextlib, io
from dispytch.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["plugins", "--json"])
result = {"code": code}
""")
    assert result == {"heavy": [], "code": 0}


@pytest.mark.parametrize("name", ["kafka", "rabbitmq", "redis"])
def test_first_party_plugin_registers_through_its_entry_point(name):
    if importlib.util.find_spec(f"dispytch.{name}") is None:
        pytest.skip(f"dispytch-{name} is not installed")
    try:
        found = importlib.util.find_spec(f"dispytch.{name}.plugin") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        pytest.skip(f"dispytch.{name}.plugin is not written yet")
    result = probe(
        f"""
from dispytch.plugins import load_failures, plugin_infos
infos = {{i.name: i for i in plugin_infos()}}
info = infos.get({name!r})
result = {{
    "schemes": sorted(s for t in info.transports for s in t.schemes) if info else None,
    "distribution": info.distribution if info else None,
    "failures": [str(f) for f in load_failures() if f.name == {name!r}],
}}
""",
        DISPYTCH_PLUGINS=name,
    )
    assert result["failures"] == []
    assert result["distribution"] == f"dispytch-{name}"
    assert result["schemes"], f"dispytch-{name} registers no transport"
    assert result["heavy"] == [], f"loading the {name} plugin imported {result['heavy']}"
