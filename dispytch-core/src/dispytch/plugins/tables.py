"""The typed tables plugins fill: transports by URL scheme, serializers by name and
content type, middleware by name, and the data behind ``dispytch plugins``.

One conflict policy for every table: a key (a URL scheme, a transport name, a
serializer name or content type, a middleware name) claimed by two different records is
a conflict *on that key alone*. Looking that key up raises a
:class:`~dispytch.errors.PluginError` naming both plugins and their distributions; every
other key still works (a second "cbor" serializer never breaks
``EventEmitter(serializer="json")``); :func:`plugin_conflicts` lists every conflict, and
the functions returning a whole table raise, since they cannot return both.

Nothing here runs per message: the tables are built once from the registration hooks'
records and cached until a plugin is (un)registered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

from dispytch.errors import PluginError, TransportNotFoundError
from dispytch.plugins import hints
from dispytch.plugins.loading import (
    REGISTRATION_HOOKS,
    State,
    collect,
    dist_version,
    get_state,
    load_failures,
)
from dispytch.plugins.records import (
    JournalStoreSpec,
    MiddlewareSpec,
    PluginInfo,
    SerializerSpec,
    TransportSpec,
)

if TYPE_CHECKING:
    from dispytch.middleware.base import Middleware
    from dispytch.serialization import Serializer

T = TypeVar("T", TransportSpec, SerializerSpec, MiddlewareSpec, JournalStoreSpec)
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Table(Generic[K, T]):
    """Records by key, and the keys two plugins claim.

    Attributes:
        entries: key -> (plugin name, record), for every key nobody disputes.
        conflicts: key -> the message naming both claimants.
    """

    entries: dict[K, tuple[str, T]]
    conflicts: dict[K, str]

    def get(self, key: K) -> T | None:
        """The record under ``key``, or ``None``.

        Raises:
            PluginError: When two plugins claim ``key``.
        """
        problem = self.conflicts.get(key)
        if problem is not None:
            raise PluginError(problem)
        found = self.entries.get(key)
        return found[1] if found is not None else None

    def check(self) -> None:
        """Raise when any key of this table is disputed (for whole-table listings)."""
        if self.conflicts:
            raise PluginError("\n".join(dict.fromkeys(self.conflicts.values())))


def build_table(
    claims: Iterable[tuple[str, T]],
    keys: Callable[[T], Iterable[tuple[K, str]]],
    claimant: Callable[[str, T], str],
) -> Table[K, T]:
    """Build a table with the one conflict policy.

    Args:
        claims: ``(plugin, record)`` in registration order.
        keys: A record's keys, each with how a message names it
            (``(("scheme", "dup"), "URL scheme 'dup://'")``).
        claimant: How a message names a plugin and its record.
    """
    owners: dict[K, tuple[str, T]] = {}
    conflicts: dict[K, str] = {}
    for plugin, record in claims:
        for key, label in keys(record):
            owner = owners.get(key)
            if owner is None:
                owners[key] = (plugin, record)
            elif owner[1] != record and key not in conflicts:
                # The same record seen twice (one distribution on sys.path twice) is fine.
                first = claimant(*owner)
                conflicts[key] = hints.conflict(label, first, claimant(plugin, record))
    entries = {key: owner for key, owner in owners.items() if key not in conflicts}
    return Table(entries, conflicts)


def _claimant(state: State, detail: Callable[[T], str]) -> Callable[[str, T], str]:
    def describe(plugin: str, record: T) -> str:
        return hints.claimant(plugin, state.distribution_of(plugin), detail(record))

    return describe


# -- transports --------------------------------------------------------------------------

_Key = tuple[str, str]


def _transport_keys(spec: TransportSpec) -> list[tuple[_Key, str]]:
    keys: list[tuple[_Key, str]] = [(("name", spec.name), f"Transport name {spec.name!r}")]
    keys.extend((("scheme", s), f"URL scheme {s + '://'!r}") for s in spec.schemes)
    return keys


def _transport_table() -> Table[_Key, TransportSpec]:
    state = get_state()

    def build() -> Table[_Key, TransportSpec]:
        return build_table(
            collect("dispytch_transports"),
            _transport_keys,
            _claimant(state, lambda spec: f"transport {spec.name!r}"),
        )

    return state.cached("transports", build)


def transports() -> dict[str, TransportSpec]:
    """Every installed transport, by URL scheme.

    Raises:
        PluginError: When two plugins claim one scheme or transport name (the message
            names both); :func:`transport_for_url` still serves every other scheme.
    """
    table = _transport_table()
    table.check()
    return {key[1]: spec for key, (_, spec) in table.entries.items() if key[0] == "scheme"}


def transport_problems() -> list[str]:
    """Conflicts between installed transports (two plugins claiming a scheme or name)."""
    return [_one_line(text) for text in _transport_table().conflicts.values()]


def _served_schemes() -> list[str]:
    table = _transport_table()
    schemes = {key[1] for key in (*table.entries, *table.conflicts) if key[0] == "scheme"}
    return sorted(schemes)


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
        known = head in hints.KNOWN_SCHEMES or head in _served_schemes()
        raise TransportNotFoundError(hints.no_scheme(url, known))
    spec = _transport_table().get(("scheme", scheme))
    if spec is not None:
        return spec
    raise TransportNotFoundError(_not_found(scheme))


def _not_found(scheme: str) -> str:
    state = get_state()
    installed = _served_schemes()
    selection = os.environ.get("DISPYTCH_PLUGINS", "")
    hint_for = {}
    for dist in set(hints.KNOWN_SCHEMES.values()):
        failed = next((f for f in state.failures if f.distribution == dist), None)
        hint_for[dist] = hints.install_hint(
            dist,
            failed=str(failed.error) if failed is not None else None,
            loaded=any(src[0] == dist for src in state.sources.values()),
            installed=dist_version(dist) is not None,
            selection=selection,
        )
    failures = [(f.distribution, str(f)) for f in load_failures()]
    return hints.transport_not_found(scheme, installed, hint_for=hint_for, failures=failures)


# -- serializers -------------------------------------------------------------------------


def _serializer_table() -> Table[str, SerializerSpec]:
    state = get_state()

    def build() -> Table[str, SerializerSpec]:
        return build_table(
            collect("dispytch_serializers"),
            lambda spec: [
                (spec.name, f"Serializer name {spec.name!r}"),
                (spec.content_type, f"Serializer content type {spec.content_type!r}"),
            ],
            _claimant(state, lambda spec: f"{spec.name}, {spec.content_type}"),
        )

    return state.cached("serializers", build)


def serializers() -> dict[str, SerializerSpec]:
    """Every installed serializer, by name (content types are accepted by
    :func:`serializer_for` too).

    Raises:
        PluginError: When two plugins provide one name or content type;
            :func:`serializer_for` still finds every other one.
    """
    table = _serializer_table()
    table.check()
    return {spec.name: spec for _, spec in table.entries.values()}


def serializer_for(name_or_content_type: str) -> Serializer:
    """The serializer registered under a name (``"json"``) or content type.

    Content-type parameters are ignored (``"application/json; charset=utf-8"`` finds
    JSON). Each serializer is built once and shared.

    Raises:
        PluginError: When none is registered under it (with the closest known name), or
            when two plugins provide it (naming both).
    """
    state = get_state()
    table = _serializer_table()
    key = name_or_content_type.split(";", 1)[0].strip()
    spec = table.get(key)
    if spec is None and key.lower() != key:
        spec = table.get(key.lower())
    if spec is None:
        keys = [*table.entries, *table.conflicts]
        names = {s.name for _, s in table.entries.values()}
        raise PluginError(hints.serializer_not_found(name_or_content_type, keys, names))
    instances: dict[SerializerSpec, Serializer] = state.cached("serializer-instances", dict)
    inst = instances.get(spec)
    if inst is None:
        inst = instances[spec] = spec.factory()
    return inst


# -- middleware --------------------------------------------------------------------------


def _middleware_table() -> Table[str, MiddlewareSpec]:
    state = get_state()

    def build() -> Table[str, MiddlewareSpec]:
        return build_table(
            collect("dispytch_middlewares"),
            lambda spec: [(spec.name, f"Middleware name {spec.name!r}")],
            _claimant(state, lambda spec: ""),
        )

    return state.cached("middlewares", build)


def middlewares() -> dict[str, MiddlewareSpec]:
    """Every named middleware, by name.

    Raises:
        PluginError: When two plugins provide one name; :func:`middleware_factory` still
            finds every other one.
    """
    table = _middleware_table()
    table.check()
    return {name: spec for name, (_, spec) in table.entries.items()}


def middleware_factory(name: str) -> Callable[..., Middleware]:
    """The factory of the middleware registered under ``name``.

    A stack entry such as ``("retry", {"attempts": 5})`` becomes
    ``middleware_factory("retry")(attempts=5)``.

    Raises:
        PluginError: When no plugin provides it (with the closest known name), or when
            two plugins provide it (naming both).
    """
    table = _middleware_table()
    spec = table.get(name)
    if spec is None:
        raise PluginError(hints.middleware_not_found(name, [*table.entries, *table.conflicts]))
    return spec.factory


# -- journal stores ----------------------------------------------------------------------


def _journal_store_table() -> Table[str, JournalStoreSpec]:
    state = get_state()

    def build() -> Table[str, JournalStoreSpec]:
        return build_table(
            collect("dispytch_journal_stores"),
            lambda spec: [(s, f"Journal store scheme {s + '://'!r}") for s in spec.schemes],
            _claimant(state, lambda spec: f"journal store {spec.name!r}"),
        )

    return state.cached("journal_stores", build)


def journal_store_spec(scheme: str) -> JournalStoreSpec | None:
    """The journal store serving a URL scheme, or None when no plugin does.

    Raises:
        PluginError: When two plugins claim the scheme (the message names both).
    """
    return _journal_store_table().get(scheme.lower())


def journal_store_schemes() -> list[str]:
    """Every URL scheme a journal-store plugin serves."""
    table = _journal_store_table()
    return sorted({*table.entries, *table.conflicts})


# -- listing -----------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def plugin_conflicts() -> list[str]:
    """Every conflict in every table (what ``dispytch plugins`` reports), one line each."""
    found: list[str] = []
    for table in (
        _transport_table(),
        _serializer_table(),
        _middleware_table(),
        _journal_store_table(),
    ):
        found.extend(_one_line(text) for text in table.conflicts.values())
    return found


def plugin_infos() -> list[PluginInfo]:
    """Everything ``dispytch plugins`` lists: one record per registered plugin.

    Plugins whose loading failed are not listed here; see :func:`load_failures`.
    """
    state = get_state()
    grouped: dict[str, dict[str, list[Any]]] = {}
    for hook in REGISTRATION_HOOKS:
        for plugin, record in collect(hook):
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
