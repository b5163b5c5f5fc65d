"""Fixtures for the plugin-host tests.

Every test starts from a fresh plugin manager (``reset_plugins``) with the environment
switches cleared, and registers its small in-process plugins through ``register``, which
unregisters them again in teardown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dispytch.plugins import get_plugin_manager, reset_plugins

HERE = Path(__file__).parent
SAMPLE_ROOT = HERE / "sample_plugin"
SAMPLE_SRC = SAMPLE_ROOT / "src"
REPO = HERE.parent.parent


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("DISPYTCH_PLUGINS", raising=False)
    monkeypatch.delenv("DISPYTCH_TRACE_HOOKS", raising=False)
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def builtins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load core's own plugin only (``DISPYTCH_PLUGINS=none``), whatever else is
    installed: for tests that count hook calls or expect only the built-in records."""
    monkeypatch.setenv("DISPYTCH_PLUGINS", "none")
    reset_plugins()


@pytest.fixture
def register() -> Iterator[Callable[..., Any]]:
    """Register plugin objects on the manager; all are unregistered after the test."""
    registered: list[object] = []

    def _register(plugin: object, name: str | None = None) -> object:
        get_plugin_manager().register(plugin, name=name)
        registered.append(plugin)
        return plugin

    yield _register
    pm = get_plugin_manager()
    for plugin in registered:
        if pm.is_registered(plugin):
            pm.unregister(plugin)


@pytest.fixture
def sample_plugin(monkeypatch: pytest.MonkeyPatch, register: Callable[..., Any]) -> Any:
    """The sample third-party plugin, importable from its source and registered
    in-process (the installed-wheel path is tested by test_sample_installed.py)."""
    pm = get_plugin_manager()
    if pm.has_plugin("sample"):  # the distribution is installed: use it as it is
        return pm.get_plugin("sample")
    monkeypatch.syspath_prepend(str(SAMPLE_SRC))
    import dispytch_sample.plugin

    register(dispytch_sample.plugin, name="sample")
    return dispytch_sample.plugin


def make_dist(
    root: Path,
    name: str,
    version: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
) -> None:
    """Write an installed distribution (``*.dist-info`` plus modules) under ``root``.

    ``importlib.metadata`` finds it like any pip-installed one once ``root`` is on
    ``sys.path``, so discovery is tested through the real entry-point machinery.
    """
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    lines = ["[dispytch]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for mod, source in modules.items():
        path = root / (mod.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install fake distributions into a temporary directory on ``sys.path``."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    created: list[str] = []

    def _install(
        name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
    ) -> None:
        make_dist(root, name, version, entry_points, modules)
        created.extend(modules)
        import importlib

        importlib.invalidate_caches()
        reset_plugins()

    yield _install
    for mod in created:
        sys.modules.pop(mod, None)


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter of this venv."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
