"""The one place that talks to pluggy: discovery, conflicts, and a typed facade.

Entry points of the ``dispytch`` group are loaded once, lazily, on first use. Each is
loaded on its own, so one broken plugin is reported by name while the others still load
(pluggy's ``load_setuptools_entrypoints`` stops at the first failure).

Environment switches, read when plugins are first loaded:

- ``DISPYTCH_PLUGINS=none`` loads no third-party plugin (built-ins only);
  ``DISPYTCH_PLUGINS=kafka,redis`` loads only those entry points.
- ``DISPYTCH_TRACE_HOOKS=1`` logs every hook call at DEBUG on ``dispytch.plugins``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
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

#: Where first-party schemes live, so a missing one can say what to install.
KNOWN_SCHEMES = {
    "kafka": "dispytch-kafka",
    "amqp": "dispytch-rabbitmq",
    "amqps": "dispytch-rabbitmq",
    "redis": "dispytch-redis",
    "rediss": "dispytch-redis",
    "redis+streams": "dispytch-redis",
}

R = TypeVar("R")


@dataclass(frozen=True)
class LoadFailure:
    """An entry point that could not be loaded."""

    name: str
    value: str
    distribution: str | None
    error: BaseException

    def __str__(self) -> str:
        dist = f" (from {self.distribution})" if self.distribution else ""
        return (
            f"Plugin {self.name!r}{dist} failed to load: "
            f"{type(self.error).__name__}: {self.error}"
        )


class _State:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.sources: dict[str, tuple[str | None, str | None]] = {}
        self.failures: list[LoadFailure] = []
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, build: Callable[[], R]) -> R:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]  # type: ignore[no-any-return]

    def invalidate(self) -> None:
        self._cache.clear()


_lock = threading.Lock()
_state: _State | None = None


def _load() -> _State:
    from dispytch.plugins import builtin

    state = _State()
    state.pm.register(builtin, name="builtin")
    state.sources["builtin"] = ("dispytch-core", _dist_version("dispytch-core"))
    if os.environ.get("DISPYTCH_TRACE_HOOKS"):
        state.pm.trace.root.setwriter(lambda msg: log.debug("%s", msg.rstrip()))
        state.pm.enable_tracing()
    selection = os.environ.get("DISPYTCH_PLUGINS", "").strip()
    wanted: set[str] | None = None
    if selection.lower() == "none":
        wanted = set()
    elif selection:
        wanted = {s.strip() for s in selection.split(",") if s.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if wanted is not None and ep.name not in wanted:
            continue
        if state.pm.has_plugin(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else None
        try:
            plugin = ep.load()
            state.pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            failure = LoadFailure(ep.name, ep.value, dist, exc)
            state.failures.append(failure)
            log.warning("%s", failure)
            continue
        state.sources[ep.name] = (dist, ep.dist.version if ep.dist is not None else None)
    return state


def _get() -> _State:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def get_plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager, with built-ins and entry points loaded.

    Tests use it to register a small plugin object and unregister it afterwards (then call
    :func:`reset_plugins` with ``keep=True`` or re-read through the facade).
    """
    state = _get()
    state.invalidate()
    return state.pm


def reset_plugins() -> None:
    """Forget everything loaded; the next use loads plugins again (tests, reloads)."""
    global _state
    with _lock:
        _state = None


def load_failures() -> list[LoadFailure]:
    """Entry points that failed to load, with their errors."""
    return list(_get().failures)


def _collect(hook_name: str) -> list[tuple[str, Any]]:
    """Call one registration hook per plugin, keeping who returned what."""
    state = _get()
    caller = getattr(state.pm.hook, hook_name)
    out: list[tuple[str, Any]] = []
    for impl in reversed(caller.get_hookimpls()):  # registration order
        result = impl.function(*[] if not impl.argnames else [])
        for record in result or ():
            out.append((impl.plugin_name, record))
    return out


def _build_transports() -> dict[str, tuple[str, TransportSpec]]:
    by_name: dict[str, tuple[str, TransportSpec]] = {}
    by_scheme: dict[str, tuple[str, TransportSpec]] = {}
    for plugin, spec in _collect("dispytch_transports"):
        if not isinstance(spec, TransportSpec):
            raise PluginError(
                f"Plugin {plugin!r} returned {spec!r} from dispytch_transports; "
                "return TransportSpec records."
            )
        if spec.name in by_name:
            other = by_name[spec.name][0]
            raise PluginError(
                f"Plugins {other!r} and {plugin!r} both provide a transport named "
                f"{spec.name!r}. Uninstall one, or load only one with DISPYTCH_PLUGINS."
            )
        for scheme in spec.schemes:
            if scheme in by_scheme:
                other_plugin, other = by_scheme[scheme]
                raise PluginError(
                    f"URL scheme {scheme + '://'!r} is claimed by two plugins: "
                    f"{other_plugin!r} (transport {other.name!r}) and {plugin!r} "
                    f"(transport {spec.name!r}). Uninstall one, or load only one with "
                    "DISPYTCH_PLUGINS."
                )
            by_scheme[scheme] = (plugin, spec)
        by_name[spec.name] = (plugin, spec)
    return by_scheme


def transports() -> dict[str, TransportSpec]:
    """Every installed transport, by scheme.

    Raises:
        PluginError: When two plugins claim one scheme or name.
    """
    state = _get()
    table = state.cached("transports", _build_transports)
    return {scheme: spec for scheme, (_, spec) in table.items()}


def transport_for_url(url: str) -> TransportSpec:
    """The transport serving ``url``'s scheme.

    Raises:
        TransportNotFoundError: Naming the distribution to install, or the closest scheme
            when it looks like a typo.
    """
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise TransportNotFoundError(
            f"{url!r} has no scheme. Write it as scheme://..., e.g. memory:// or "
            "kafka://localhost:9092."
        )
    table = transports()
    if scheme in table:
        return table[scheme]
    installed = ", ".join(sorted(table)) or "none"
    lines = [f"No transport serves {scheme + '://'!r}."]
    if scheme in KNOWN_SCHEMES:
        lines.append(f"Install it with: pip install {KNOWN_SCHEMES[scheme]}")
    else:
        close = difflib.get_close_matches(scheme, list(table) + list(KNOWN_SCHEMES), n=1)
        if close:
            lines[0] += f" Did you mean {close[0]!r}?"
    lines.append(f"Installed schemes: {installed}.")
    failures = [str(f) for f in load_failures()]
    if failures:
        lines.append("Plugins that failed to load: " + "; ".join(failures))
    raise TransportNotFoundError("\n".join(lines))


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


_instances: dict[str, Serializer] = {}


def serializer_for(name_or_content_type: str) -> Serializer:
    """The serializer registered under a name (``"json"``) or content type.

    Raises:
        PluginError: When none is registered under it.
    """
    table = _get().cached("serializers", _build_serializers)
    spec = table.get(name_or_content_type)
    if spec is None:
        known = ", ".join(sorted({s.name for s in table.values()}))
        extra = ""
        if name_or_content_type in ("msgpack", "application/msgpack"):
            extra = "\nInstall it with: pip install 'dispytch-core[msgpack]'"
        raise PluginError(
            f"No serializer is registered as {name_or_content_type!r}. Known: {known}.{extra}"
        )
    inst = _instances.get(spec.content_type)
    if inst is None:
        inst = spec.factory()
        _instances[spec.content_type] = inst
    return inst


def _build_middlewares() -> dict[str, MiddlewareSpec]:
    table: dict[str, tuple[str, MiddlewareSpec]] = {}
    for plugin, spec in _collect("dispytch_middlewares"):
        if spec.name in table:
            raise PluginError(
                f"Middleware name {spec.name!r} is provided by both {table[spec.name][0]!r} "
                f"and {plugin!r}."
            )
        table[spec.name] = (plugin, spec)
    return {name: spec for name, (_, spec) in table.items()}


def middleware_factory(name: str) -> Callable[..., Middleware]:
    """The factory of the middleware registered under ``name``.

    Raises:
        PluginError: When no plugin provides it (with the closest known names).
    """
    table = _get().cached("middlewares", _build_middlewares)
    spec = table.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginError(
            f"No middleware is registered as {name!r}.{hint} "
            f"Known: {', '.join(sorted(table)) or 'none'}."
        )
    return spec.factory


def plugin_infos() -> list[PluginInfo]:
    """Everything ``dispytch plugins`` lists, one record per registered plugin."""
    state = _get()
    transports_by: dict[str, list[TransportSpec]] = {}
    for plugin, spec in _collect("dispytch_transports"):
        transports_by.setdefault(plugin, []).append(spec)
    serializers_by: dict[str, list[SerializerSpec]] = {}
    for plugin, spec in _collect("dispytch_serializers"):
        serializers_by.setdefault(plugin, []).append(spec)
    middlewares_by: dict[str, list[MiddlewareSpec]] = {}
    for plugin, spec in _collect("dispytch_middlewares"):
        middlewares_by.setdefault(plugin, []).append(spec)
    infos = []
    for name, plugin in state.pm.list_name_plugin():
        dist, version = state.sources.get(name, (None, None))
        hooks = tuple(
            sorted(h.name for h in state.pm.get_hookcallers(plugin) or ())
        )
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist,
                version=version,
                transports=tuple(transports_by.get(name, ())),
                serializers=tuple(serializers_by.get(name, ())),
                middlewares=tuple(middlewares_by.get(name, ())),
                hooks=hooks,
            )
        )
    return infos


def notify(hook_name: str, **kwargs: Any) -> None:
    """Call a lifecycle hook; a failing observer is logged, never fatal to the caller."""
    caller = getattr(_get().pm.hook, hook_name)
    try:
        caller(**kwargs)
    except Exception:
        log.exception("A plugin's %s hook failed", hook_name)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
