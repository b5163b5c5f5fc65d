"""Loading plugins: the pluggy manager, the environment switches, entry points, and the
one way hooks are called.

Entry points of the ``dispytch`` group are loaded once, lazily, on first use, and cached.
Each is loaded on its own, so one broken plugin is reported by name while the others
still load (pluggy's ``load_setuptools_entrypoints`` stops at the first failure and
silently skips a second distribution using the same name). Core's own transports,
serializers and middleware are registered through the very same hooks
(:mod:`dispytch.plugins.builtin`).

Hooks are called through pluggy itself (:func:`call_each`), one plugin at a time, so that
hook wrappers and call monitoring see every call while a plugin whose hook raises is
reported by name and does not stop the others.

Environment switches, read when plugins are first loaded (call :func:`reset_plugins` to
read them again):

- ``DISPYTCH_PLUGINS=none`` loads no entry-point plugin (core's built-ins only);
  ``DISPYTCH_PLUGINS=kafka,redis`` loads only the entry points of those names.
- ``DISPYTCH_TRACE_HOOKS=1`` writes every hook call, with its plugins, arguments and
  result, to standard error.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pluggy

from dispytch.errors import PluginError
from dispytch.plugins import builtin, hints, hookspecs
from dispytch.plugins.records import (
    JournalStoreSpec,
    MiddlewareSpec,
    SerializerSpec,
    TransportSpec,
)

log = logging.getLogger("dispytch.plugins")

ENTRY_POINT_GROUP = "dispytch"

#: Hooks that hand out records once (called through :func:`collect`).
REGISTRATION_HOOKS = (
    "dispytch_transports",
    "dispytch_serializers",
    "dispytch_middlewares",
    "dispytch_journal_stores",
)
#: Hooks that report lifecycle events (called through :func:`dispytch.plugins.notify`).
LIFECYCLE_HOOKS = (
    "dispytch_dispatcher_started",
    "dispytch_dispatcher_stopped",
    "dispytch_emitter_started",
    "dispytch_emitter_stopped",
)

_RECORD_TYPES: dict[str, type] = {
    "dispytch_transports": TransportSpec,
    "dispytch_serializers": SerializerSpec,
    "dispytch_middlewares": MiddlewareSpec,
    "dispytch_journal_stores": JournalStoreSpec,
}

R = TypeVar("R")


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded, or whose registration hook failed.

    Attributes:
        name: The entry-point (plugin) name.
        value: The entry point's ``module:attribute``, or the plugin's repr.
        distribution: The distribution that ships it, when known.
        error: What went wrong.
        hook: The registration hook that failed, or ``None`` when loading failed.
    """

    name: str
    value: str
    distribution: str | None
    error: BaseException
    hook: str | None = None

    def __str__(self) -> str:
        dist = f" (from {self.distribution})" if self.distribution else ""
        where = f"failed in its {self.hook} hook" if self.hook else "failed to load"
        return f"Plugin {self.name!r}{dist} {where}: {type(self.error).__name__}: {self.error}"


class _PluginManager(pluggy.PluginManager):
    """A pluggy manager that forgets Dispytch's cached tables when plugins change.

    Tests register small plugin objects on it and unregister them afterwards; the facade
    then sees the change without anyone having to remember to clear a cache.
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__(hookspecs.PROJECT)
        self._on_change = on_change

    def register(self, plugin: object, name: str | None = None) -> str | None:
        result = super().register(plugin, name)
        self._on_change()
        return result

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        result = super().unregister(plugin, name)
        self._on_change()
        return result


class State:
    """Everything loaded: the manager, where each plugin came from, what failed.

    Attributes:
        pm: The pluggy manager.
        sources: plugin name -> (distribution, version, entry point value).
        failures: Plugins that failed to load.
        hook_failures: (plugin, hook) -> the failure of a registration hook.
        selection: The entry-point names ``DISPYTCH_PLUGINS`` selects (``None``: all).
        trace: Whether ``DISPYTCH_TRACE_HOOKS`` is on.
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}
        self.pm = _PluginManager(self._cache.clear)
        self.pm.add_hookspecs(hookspecs)
        self.sources: dict[str, tuple[str | None, str | None, str | None]] = {}
        self.failures: list[LoadFailure] = []
        self.hook_failures: dict[tuple[str, str], LoadFailure] = {}
        self.selection: set[str] | None = None
        self.trace = False

    def cached(self, key: str, build: Callable[[], R]) -> R:
        """``build()``'s value, built once until plugins are (un)registered."""
        try:
            return self._cache[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._cache[key] = build()
            return value

    def distribution_of(self, plugin: str) -> str | None:
        """The distribution that ships ``plugin``; ``None`` for one registered in-process."""
        return self.sources.get(plugin, (None, None, None))[0]


_lock = threading.RLock()
_state: State | None = None


def _trace_line(message: str) -> None:
    sys.stderr.write(f"[dispytch hooks] {message}\n")


def _trace_after(
    outcome: pluggy.Result[Any],
    hook_name: str,
    hook_impls: Sequence[pluggy.HookImpl],
    kwargs: Mapping[str, Any],
) -> None:
    plugins = ", ".join(impl.plugin_name for impl in hook_impls)
    if outcome.exception is not None:
        result = f"raised {type(outcome.exception).__name__}: {outcome.exception}"
    else:
        result = f"-> {outcome.get_result()!r}"
    _trace_line(f"{hook_name} [{plugins}] {dict(kwargs)!r} {result}")


def _parse_selection(raw: str) -> set[str] | None:
    raw = raw.strip()
    if not raw or raw.lower() == "all":
        return None
    if raw.lower() == "none":
        return set()
    return {part.strip() for part in raw.split(",") if part.strip()}


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hook implementations of ``plugin`` that match no hookspec (typos, mostly)."""
    unknown = []
    for attr in dir(plugin):
        if not attr.startswith("dispytch_"):
            continue
        if pm.parse_hookimpl_opts(plugin, attr) is None:
            continue
        if getattr(hookspecs, attr, None) is None:
            unknown.append(attr)
    return unknown


def _load() -> State:
    state = State()
    state.trace = os.environ.get("DISPYTCH_TRACE_HOOKS", "").strip() not in ("", "0", "false")
    if state.trace:
        # Monitoring wraps pluggy's own hook execution, so it sees every call made through
        # pm.hook (ours and anybody else's), with the plugins that took part.
        state.pm.add_hookcall_monitoring(lambda *args: None, _trace_after)
    state.pm.register(builtin, name="builtin")
    state.sources["builtin"] = ("dispytch-core", dist_version("dispytch-core"), None)

    state.selection = _parse_selection(os.environ.get("DISPYTCH_PLUGINS", ""))
    seen: dict[str, str | None] = {}
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    for ep in eps:
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if state.selection is not None and ep.name not in state.selection:
            continue
        if ep.name in seen:
            if seen[ep.name] != dist:
                # Two distributions use one plugin name: loading either silently would hide
                # the other, so report it.
                state.failures.append(
                    LoadFailure(
                        ep.name,
                        ep.value,
                        dist,
                        PluginError(
                            f"the plugin name {ep.name!r} is also used by "
                            f"{seen[ep.name] or 'another distribution'}; uninstall one of them"
                        ),
                    )
                )
            continue  # the same distribution seen twice on sys.path (editable installs)
        seen[ep.name] = dist
        if ep.name == "builtin":
            state.failures.append(
                LoadFailure(
                    ep.name,
                    ep.value,
                    dist,
                    PluginError("the name 'builtin' is reserved for dispytch-core"),
                )
            )
            continue
        try:
            plugin = ep.load()
            unknown = _unknown_hooks(state.pm, plugin)
            if unknown:
                raise PluginError(
                    hints.unknown_hooks(unknown, [*REGISTRATION_HOOKS, *LIFECYCLE_HOOKS])
                )
            state.pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            failure = LoadFailure(ep.name, ep.value, dist, exc)
            state.failures.append(failure)
            log.warning("%s", failure)
            continue
        state.sources[ep.name] = (dist, version, ep.value)
    if state.selection:
        missing = state.selection - set(seen)
        if missing:
            log.warning(
                "DISPYTCH_PLUGINS names %s, which no installed distribution provides "
                "(installed entry points: %s).",
                ", ".join(sorted(missing)),
                ", ".join(sorted({e.name for e in eps})) or "none",
            )
    return state


def get_state() -> State:
    """The loaded state; plugins are discovered on the first call."""
    global _state
    state = _state
    if state is None:
        with _lock:
            if _state is None:
                _state = _load()
            state = _state
    return state


def loaded() -> bool:
    """Whether plugins were discovered yet (importing Dispytch must not do it)."""
    return _state is not None


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager, with built-ins and entry points loaded.

    Tests and embedding applications register a plugin object on it
    (``get_plugin_manager().register(MyPlugin(), name="mine")``) and unregister it
    afterwards; the facade's cached tables are refreshed on every (un)registration.
    """
    return get_state().pm


def reset_plugins() -> None:
    """Forget everything loaded; the next use discovers plugins again.

    For tests, and for applications that changed ``DISPYTCH_PLUGINS`` at run time.
    """
    global _state
    with _lock:
        _state = None


def call_each(
    pm: pluggy.PluginManager, hook_name: str, kwargs: Mapping[str, Any]
) -> Iterator[tuple[pluggy.HookImpl, list[Any] | Exception]]:
    """Call ``hook_name`` through pluggy once per implementing plugin.

    pluggy stops a hook call at the first implementation that raises, and its results
    do not say which plugin returned what. So each plain implementation is called on its
    own, through ``pm.subset_hook_caller`` (pluggy's public API for calling a subset of
    the plugins): the call goes through pluggy's own execution, so every wrapper
    (``wrapper=True`` and old-style ``hookwrapper=True``) runs around it, call
    monitoring and ``DISPYTCH_TRACE_HOOKS`` see it, and an exception (from the
    implementation or a wrapper around it) is that plugin's alone. Wrappers therefore run
    once per implementing plugin rather than once per hook call.

    Implementations are called in pluggy's order (the last registered first).

    Yields:
        Each plain implementation with pluggy's result list (``[]`` when it returned
        ``None``) or the exception its call raised.
    """
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    plain = [impl for impl in impls if not (impl.wrapper or impl.hookwrapper)]
    for impl in reversed(plain):
        others = [other.plugin for other in plain if other is not impl]
        try:
            caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
            results = caller(**kwargs)
        except Exception as exc:  # one plugin's failure is its own
            yield impl, exc
        else:
            yield impl, list(results)


def collect(hook_name: str) -> list[tuple[str, Any]]:
    """Call one registration hook per plugin, keeping who returned what (cached).

    A plugin whose hook raises, or returns something other than the hook's record type,
    is reported by name (see :func:`load_failures`) while the other plugins' records are
    still used. Records are returned in registration order (core's built-ins first).
    """
    state = get_state()
    return state.cached(f"collect:{hook_name}", lambda: _collect(state, hook_name))


def _collect(state: State, hook_name: str) -> list[tuple[str, Any]]:
    record_type = _RECORD_TYPES[hook_name]
    out: list[tuple[str, Any]] = []
    for impl, result in reversed(list(call_each(state.pm, hook_name, {}))):
        plugin = impl.plugin_name
        try:
            if isinstance(result, Exception):
                raise result
            records = [record for returned in result for record in (returned or ())]
            for record in records:
                if not isinstance(record, record_type):
                    raise PluginError(
                        f"{hook_name} returned {record!r}; return a list of "
                        f"{record_type.__name__} records"
                    )
        except Exception as exc:
            key = (plugin, hook_name)
            if key not in state.hook_failures:
                dist, _, value = state.sources.get(plugin, (None, None, None))
                failure = LoadFailure(plugin, value or repr(impl.plugin), dist, exc, hook_name)
                state.hook_failures[key] = failure
                log.warning("%s", failure)
            continue
        out.extend((plugin, record) for record in records)
    return out


def load_failures() -> list[LoadFailure]:
    """Plugins that failed to load, or whose registration hooks failed, with their errors.

    The registration hooks are called first, so that a hook that raises shows up here.
    """
    state = get_state()
    for hook in REGISTRATION_HOOKS:
        collect(hook)
    return [*state.failures, *state.hook_failures.values()]


def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or ``None``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
