"""Dispytch's plugin host: hook specifications, records, and the typed facade.

Third parties implement the hooks in :mod:`dispytch.plugins.hookspecs` with
:data:`hookimpl` and register the module through the ``dispytch`` entry-point group::

    [project.entry-points.dispytch]
    sample = "dispytch_sample.plugin"

Nothing outside :mod:`dispytch.plugins.loading` calls ``pm.hook.*``: the rest of Dispytch
goes through the functions exported here (``dispytch.plugins.manager`` re-exports them
for older imports).
"""

from __future__ import annotations

from dispytch.plugins.hookspecs import hookimpl, hookspec
from dispytch.plugins.lifecycle import notify
from dispytch.plugins.loading import (
    ENTRY_POINT_GROUP,
    LoadFailure,
    get_plugin_manager,
    load_failures,
    reset_plugins,
)
from dispytch.plugins.records import (
    JournalStoreSpec,
    MiddlewareSpec,
    PluginInfo,
    SerializerSpec,
    TransportSpec,
)
from dispytch.plugins.tables import (
    journal_store_schemes,
    journal_store_spec,
    middleware_factory,
    middlewares,
    plugin_conflicts,
    plugin_infos,
    serializer_for,
    serializers,
    transport_for_url,
    transport_problems,
    transports,
)

__all__ = [
    "JournalStoreSpec",
    "journal_store_schemes",
    "journal_store_spec",
    "ENTRY_POINT_GROUP",
    "LoadFailure",
    "MiddlewareSpec",
    "PluginInfo",
    "SerializerSpec",
    "TransportSpec",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_failures",
    "middleware_factory",
    "middlewares",
    "notify",
    "plugin_conflicts",
    "plugin_infos",
    "reset_plugins",
    "serializer_for",
    "serializers",
    "transport_for_url",
    "transport_problems",
    "transports",
]
