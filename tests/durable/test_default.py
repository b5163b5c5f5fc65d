"""The module-level default (``dispytch.function`` / ``dispytch.run``), configured from
the environment, and the transports a Durable refuses."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import dispytch
import dispytch.durable as durable_mod
import pytest
from dispytch.durable import Durable, SQLiteJournalStore
from dispytch.errors import ConfigError


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "default.sqlite3"
    monkeypatch.setenv("DISPYTCH_DURABLE_STORE", f"sqlite:///{path}")
    monkeypatch.setenv("DISPYTCH_DURABLE_TRANSPORT", f"memory://default-{uuid.uuid4().hex}")
    monkeypatch.setattr(durable_mod, "_default", None)
    return path


def test_the_seed_example_runs_on_the_default(fresh_default: Path) -> None:
    @dispytch.function
    def greet(msg: str) -> str:
        return f"Hello, {msg}!"

    assert dispytch.run(greet("World")) == "Hello, World!"
    assert dispytch.run(greet("again")) == "Hello, again!"  # a second run, a new loop
    store = durable_mod.default().store
    assert isinstance(store, SQLiteJournalStore) and Path(store.path) == fresh_default
    assert fresh_default.exists()


def test_options_on_the_default(fresh_default: Path) -> None:
    @durable_mod.function(name="named.one", max_attempts=1)
    async def one() -> int:
        return 1

    assert one.name == "named.one" and one.max_attempts == 1
    assert durable_mod.run(one(), timeout=10) == 1


def test_import_dispytch_does_not_import_durable() -> None:
    code = "import sys, dispytch; print('dispytch.durable' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_at_most_once_transports_are_refused(tmp_path: Path) -> None:
    from dispytch.transport import Capabilities

    class AtMostOnce:
        capabilities = Capabilities(delivery="at-most-once")

    d = Durable(
        "memory://x",
        store=SQLiteJournalStore(tmp_path / "j"),
        consumer=AtMostOnce(),  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError, match="at-most-once"):
        d.worker()


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    d = Durable("memory://dup", store=SQLiteJournalStore(tmp_path / "j"))

    @d.function(name="same")
    def a() -> None: ...

    with pytest.raises(ValueError, match="'same' is registered already"):

        @d.function(name="same")
        def b() -> None: ...
