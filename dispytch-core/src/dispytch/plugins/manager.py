"""The one place that talks to pluggy: discovery, conflicts, and a typed facade.

Entry points of the ``dispytch`` group are loaded once, lazily, on first use, and cached.
Each is loaded on its own, so one broken plugin is reported by name while the others
still load (pluggy's ``load_setuptools_entrypoints`` stops at the first failure). Core's
own transports, serializers and middleware are registered through the very same hooks
(:mod:`dispytch.plugins.builtin`).

Nothing here runs per message: the registration hooks are called once and their records
cached; the dispatch path only ever calls the plain factories those records hold.

Environment switches, read when plugins are first loaded (call :func:`reset_plugins` to
read them again):

- ``DISPYTCH_PLUGINS=none`` loads no entry-point plugin (core's built-ins only);
  ``DISPYTCH_PLUGINS=kafka,redis`` loads only the entry points of those names.
- ``DISPYTCH_TRACE_HOOKS=1`` writes every hook call, with its arguments and results, to
  standard error.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import pluggy

from dispytch.errors import PluginError, TransportNotFoundError
from dispytch.plugins import hookspecs
from dispytch.plugins.records import MiddlewareSpec, PluginInfo, SerializerSpec, TransportSpec

if TYPE_CHECKING:
    from dispytch.middleware.base import Middleware
    from dispytch.serialization import Serializer

log = logging.getLogger("dispytch.plugins")

ENTRY_POINT_GROUP = "dispytch"

#: The first-party distribution serving each well-known scheme, so that a missing one can
#: say what to install.
KNOWN_SCHEMES: dict[str, str] = {
    "kafka": "dispytch-kafka",
    "amqp": "dispytch-rabbitmq",
    "amqps": "dispytch-rabbitmq",
    "redis": "dispytch-redis",
    "rediss": "dispytch-redis",
    "redis+streams": "dispytch-redis",
    "rediss+streams": "dispytch-redis",
}

#: Names people reach for that are not URL schemes, and the scheme they mean.
SCHEME_ALIASES: dict[str, str] = {"rabbitmq": "amqp", "rabbit": "amqp", "mem": "memory"}

#: Hooks that hand out records once (called through :func:`_collect`).
REGISTRATION_HOOKS = ("dispytch_transports", "dispytch_serializers", "dispytch_middlewares")
#: Hooks that report lifecycle events (called through :func:`notify`).
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


class _State:
    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}
        self.pm = _PluginManager(self._cache.clear)
        self.pm.add_hookspecs(hookspecs)
        #: plugin name -> (distribution, version, entry point value)
        self.sources: dict[str, tuple[str | None, str | None, str | None]] = {}
        self.failures: list[LoadFailure] = []
        self.hook_failures: dict[tuple[str, str], LoadFailure] = {}
        self.selection: set[str] | None = None
        self.trace = False

    def cached(self, key: str, build: Callable[[], R]) -> R:
        try:
            return self._cache[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._cache[key] = build()
            return value


_lock = threading.RLock()
_state: _State | None = None


def _trace(message: str) -> None:
    sys.stderr.write(f"[dispytch hooks] {message}\n")


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


def _load() -> _State:
    from dispytch.plugins import builtin

    state = _State()
    state.trace = os.environ.get("DISPYTCH_TRACE_HOOKS", "").strip() not in ("", "0", "false")
    if state.trace:
        state.pm.trace.root.setwriter(lambda msg: _trace(msg.rstrip()))
        state.pm.enable_tracing()
    state.pm.register(builtin, name="builtin")
    state.sources["builtin"] = ("dispytch-core", _dist_version("dispytch-core"), None)

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
                hints = []
                for name in unknown:
                    close = difflib.get_close_matches(
                        name, [*REGISTRATION_HOOKS, *LIFECYCLE_HOOKS], n=1
                    )
                    hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
                raise PluginError(f"it implements unknown hooks: {', '.join(hints)}")
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


def _get() -> _State:
    global _state
    state = _state
    if state is None:
        with _lock:
            if _state is None:
                _state = _load()
            state = _state
    return state


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager, with built-ins and entry points loaded.

    Tests and embedding applications register a plugin object on it
    (``get_plugin_manager().register(MyPlugin(), name="mine")``) and unregister it
    afterwards; the facade's cached tables are refreshed on every (un)registration.
    """
    return _get().pm


def reset_plugins() -> None:
    """Forget everything loaded; the next use discovers plugins again.

    For tests, and for applications that changed ``DISPYTCH_PLUGINS`` at run time.
    """
    global _state
    with _lock:
        _state = None


def load_failures() -> list[LoadFailure]:
    """Plugins that failed to load, or whose registration hooks failed, with their errors.

    The registration hooks are called first, so that a hook that raises shows up here.
    """
    state = _get()
    for hook in REGISTRATION_HOOKS:
        _collect(hook)
    return [*state.failures, *state.hook_failures.values()]


def _collect(hook_name: str) -> list[tuple[str, Any]]:
    """Call one registration hook per plugin, keeping who returned what (cached).

    Each implementation is called on its own so that a plugin whose hook raises, or
    returns something other than the hook's record type, is reported by name while the
    other plugins' records are still used.
    """
    state = _get()
    return state.cached(f"collect:{hook_name}", lambda: _call_each(state, hook_name))


def _call_each(state: _State, hook_name: str) -> list[tuple[str, Any]]:
    caller = getattr(state.pm.hook, hook_name)
    record_type = _RECORD_TYPES[hook_name]
    out: list[tuple[str, Any]] = []
    for impl in caller.get_hookimpls():  # registration order (pluggy calls in reverse)
        if impl.hookwrapper or impl.wrapper:
            continue  # wrappers cannot contribute records
        plugin = impl.plugin_name
        try:
            result = impl.function()
            records = list(result or ())
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
        if state.trace:
            _trace(f"{hook_name} [{plugin}] -> {records!r}")
        out.extend((plugin, record) for record in records)
    return out


@dataclass(frozen=True)
class _TransportTable:
    by_scheme: dict[str, tuple[str, TransportSpec]]
    #: scheme (or transport name) -> the message naming both plugins
    conflicts: dict[str, str]


def _build_transports() -> _TransportTable:
    by_name: dict[str, tuple[str, TransportSpec]] = {}
    by_scheme: dict[str, tuple[str, TransportSpec]] = {}
    conflicts: dict[str, str] = {}
    for plugin, spec in _collect("dispytch_transports"):
        if spec.name in by_name and by_name[spec.name][1] != spec:
            owner = by_name[spec.name][0]
            conflicts[spec.name] = (
                f"Plugins {owner!r} and {plugin!r} both provide a transport named "
                f"{spec.name!r}. Uninstall one, or load only one with DISPYTCH_PLUGINS."
            )
        by_name.setdefault(spec.name, (plugin, spec))
        for scheme in spec.schemes:
            if scheme in by_scheme and by_scheme[scheme][1] != spec:
                other_plugin, other = by_scheme[scheme]
                conflicts[scheme] = (
                    f"URL scheme {scheme + '://'!r} is claimed by two plugins: "
                    f"{other_plugin!r} (transport {other.name!r}) and {plugin!r} "
                    f"(transport {spec.name!r}). Uninstall one, or load only one with "
                    "DISPYTCH_PLUGINS."
                )
                continue
            by_scheme.setdefault(scheme, (plugin, spec))
    return _TransportTable(by_scheme, conflicts)


def _transport_table() -> _TransportTable:
    return _get().cached("transports", _build_transports)


def transport_problems() -> list[str]:
    """Conflicts between installed transports (two plugins claiming a scheme or name)."""
    return list(_transport_table().conflicts.values())


def transports() -> dict[str, TransportSpec]:
    """Every installed transport, by URL scheme.

    Raises:
        PluginError: When two plugins claim one scheme or transport name (the message
            names both).
    """
    table = _transport_table()
    if table.conflicts:
        raise PluginError("\n".join(table.conflicts.values()))
    return {scheme: spec for scheme, (_, spec) in table.by_scheme.items()}


def transport_for_url(url: str) -> TransportSpec:
    """The transport serving ``url``'s scheme.

    Only the scheme is looked at; the transport's factories interpret the rest.

    Raises:
        TransportNotFoundError: When no plugin serves the scheme, naming the distribution
            to install, or the closest scheme when it looks like a typo.
        PluginError: When two plugins claim this scheme (the message names both).
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if not scheme:
        head = url.split(":", 1)[0].lower() if ":" in url else ""
        known = head in KNOWN_SCHEMES or head in _transport_table().by_scheme
        example = f"{head}://..." if known else "scheme://..."
        raise TransportNotFoundError(
            f"{url!r} has no scheme. Write it as {example}, e.g. 'memory://' or "
            "'kafka://localhost:9092'."
        )
    table = _transport_table()
    if scheme in table.conflicts:
        raise PluginError(table.conflicts[scheme])
    found = table.by_scheme.get(scheme)
    if found is not None:
        return found[1]
    raise TransportNotFoundError(_not_found_message(scheme, sorted(table.by_scheme)))


def _not_found_message(scheme: str, installed: list[str]) -> str:
    state = _get()
    first = f"No transport serves {scheme + '://'!r}."
    lines: list[str] = []
    dist = KNOWN_SCHEMES.get(scheme)
    suggestion: str | None = None
    if dist is None:
        suggestion = SCHEME_ALIASES.get(scheme)
        if suggestion is None:
            close = difflib.get_close_matches(scheme, [*installed, *KNOWN_SCHEMES], n=1)
            suggestion = close[0] if close else None
        if suggestion is not None:
            first += f" Did you mean {suggestion + '://'!r}?"
            if suggestion not in installed:
                dist = KNOWN_SCHEMES.get(suggestion)
    first += f" Installed: {', '.join(installed) or 'none'}."
    if dist is not None:
        lines.append(_install_hint(state, dist))
    elif suggestion is None:
        lines.append(
            "If a third-party plugin serves it, install that distribution and check "
            "`dispytch plugins`."
        )
    failures = [str(f) for f in load_failures() if dist is None or f.distribution != dist]
    if failures:
        lines.append("Other plugins failed to load:")
        lines.extend(f"  {f}" for f in failures)
    return "\n".join([first, *lines])


def _install_hint(state: _State, dist: str) -> str:
    failed = [f for f in state.failures if f.distribution == dist]
    if failed:
        return (
            f"{dist} is installed but its plugin failed to load ({failed[0].error}). "
            f"Reinstall it with: pip install --force-reinstall {dist}"
        )
    if any(src[0] == dist for src in state.sources.values()):
        return f"{dist} is installed and loaded but does not serve this scheme; upgrade it."
    if _dist_version(dist) is not None:
        return (
            f"{dist} is installed but not loaded: DISPYTCH_PLUGINS="
            f"{os.environ.get('DISPYTCH_PLUGINS', '')!r} leaves it out. Add its plugin name "
            "or unset DISPYTCH_PLUGINS."
        )
    return f"Install it with: pip install {dist}"


def _build_serializers() -> dict[str, SerializerSpec]:
    table: dict[str, SerializerSpec] = {}
    owners: dict[str, str] = {}
    for plugin, spec in _collect("dispytch_serializers"):
        for key in {spec.name, spec.content_type}:
            if key in table and table[key] != spec:
                raise PluginError(
                    f"Serializer {key!r} is provided by both {owners[key]!r} and "
                    f"{plugin!r}. Uninstall one, or load only one with DISPYTCH_PLUGINS."
                )
            table[key] = spec
            owners[key] = plugin
    return table


def serializers() -> dict[str, SerializerSpec]:
    """Every installed serializer, by name (content types are accepted by
    :func:`serializer_for` too).

    Raises:
        PluginError: When two plugins provide one name or content type.
    """
    table = _get().cached("serializers", _build_serializers)
    return {spec.name: spec for spec in table.values()}


def serializer_for(name_or_content_type: str) -> Serializer:
    """The serializer registered under a name (``"json"``) or content type.

    Content-type parameters are ignored (``"application/json; charset=utf-8"`` finds
    JSON). Each serializer is built once and shared.

    Raises:
        PluginError: When none is registered under it (with the closest known name), or
            when two plugins provide it.
    """
    state = _get()
    table = state.cached("serializers", _build_serializers)
    key = name_or_content_type.split(";", 1)[0].strip()
    spec = table.get(key) or table.get(key.lower())
    if spec is None:
        names = sorted({s.name for s in table.values()})
        close = difflib.get_close_matches(key, list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginError(
            f"No serializer is registered as {name_or_content_type!r}.{hint} "
            f"Known: {', '.join(names) or 'none'}.\n"
            "A serializer comes from a plugin: install the distribution that provides it "
            "and check `dispytch plugins`."
        )
    instances: dict[str, Serializer] = state.cached("serializer-instances", dict)
    inst = instances.get(spec.content_type)
    if inst is None:
        inst = instances[spec.content_type] = spec.factory()
    return inst


def _build_middlewares() -> dict[str, MiddlewareSpec]:
    table: dict[str, tuple[str, MiddlewareSpec]] = {}
    for plugin, spec in _collect("dispytch_middlewares"):
        if spec.name in table and table[spec.name][1] != spec:
            raise PluginError(
                f"Middleware name {spec.name!r} is provided by both {table[spec.name][0]!r} "
                f"and {plugin!r}. Uninstall one, or load only one with DISPYTCH_PLUGINS."
            )
        table.setdefault(spec.name, (plugin, spec))
    return {name: spec for name, (_, spec) in table.items()}


def middlewares() -> dict[str, MiddlewareSpec]:
    """Every named middleware, by name.

    Raises:
        PluginError: When two plugins provide one name.
    """
    return dict(_get().cached("middlewares", _build_middlewares))


def middleware_factory(name: str) -> Callable[..., Middleware]:
    """The factory of the middleware registered under ``name``.

    A stack entry such as ``("retry", {"attempts": 5})`` becomes
    ``middleware_factory("retry")(attempts=5)``.

    Raises:
        PluginError: When no plugin provides it (with the closest known name), or when
            two plugins provide it.
    """
    table = _get().cached("middlewares", _build_middlewares)
    spec = table.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginError(
            f"No middleware is registered as {name!r}.{hint} "
            f"Known: {', '.join(sorted(table)) or 'none'}.\n"
            "Named middleware comes from plugins: install the distribution that provides "
            "it and check `dispytch plugins`."
        )
    return spec.factory


def plugin_infos() -> list[PluginInfo]:
    """Everything ``dispytch plugins`` lists: one record per registered plugin.

    Plugins whose loading failed are not listed here; see :func:`load_failures`.
    """
    state = _get()
    grouped: dict[str, dict[str, list[Any]]] = {}
    for hook in REGISTRATION_HOOKS:
        for plugin, record in _collect(hook):
            grouped.setdefault(plugin, {}).setdefault(hook, []).append(record)
    infos = []
    for name, obj in state.pm.list_name_plugin():
        if obj is None:  # blocked
            continue
        dist, version, value = state.sources.get(name, (None, None, None))
        records = grouped.get(name, {})
        hooks = tuple(sorted(h.name for h in state.pm.get_hookcallers(obj) or ()))
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist,
                version=version,
                entry_point=value,
                transports=tuple(records.get("dispytch_transports", ())),
                serializers=tuple(records.get("dispytch_serializers", ())),
                middlewares=tuple(records.get("dispytch_middlewares", ())),
                hooks=hooks,
            )
        )
    return infos


def notify(hook_name: str, **kwargs: Any) -> None:
    """Call a lifecycle hook on every plugin that implements it.

    Each implementation is called on its own: an observer that raises is logged with
    its plugin's name and never affects the caller or the other observers. Hook
    implementations are synchronous; one that returns an awaitable is told so in the log
    (schedule your own task from the hook instead).

    Args:
        hook_name: One of the lifecycle hooks, e.g. ``"dispytch_dispatcher_started"``.
        **kwargs: The hook's arguments (``dispatcher=...`` or ``emitter=...``).

    Raises:
        PluginError: When ``hook_name`` is not a lifecycle hook (a programming error).
    """
    if hook_name not in LIFECYCLE_HOOKS:
        raise PluginError(
            f"{hook_name!r} is not a lifecycle hook; use one of {', '.join(LIFECYCLE_HOOKS)}."
        )
    state = _get()
    caller = getattr(state.pm.hook, hook_name)
    impls = caller.get_hookimpls()
    if not impls:
        return
    if any(i.hookwrapper or i.wrapper for i in impls):
        try:  # wrappers need pluggy's own calling convention
            caller(**kwargs)
        except Exception:
            log.exception("A plugin's %s hook failed", hook_name)
        return
    for impl in reversed(impls):
        if state.trace:
            _trace(f"{hook_name} [{impl.plugin_name}] {kwargs!r}")
        try:
            result = impl.function(**{a: kwargs[a] for a in impl.argnames})
        except Exception:
            log.exception("Plugin %r failed in its %s hook", impl.plugin_name, hook_name)
            continue
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            log.error(
                "Plugin %r: %s returned an awaitable, which Dispytch does not await. Make "
                "the hook a plain function and start your own task from it "
                "(asyncio.get_running_loop().create_task(...)).",
                impl.plugin_name,
                hook_name,
            )


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
