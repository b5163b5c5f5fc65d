"""Dispytch's plugin host: hook specifications, records, and the typed facade.

Third parties implement the hooks in :mod:`dispytch.plugins.hookspecs` with
:data:`hookimpl` and register the module through the ``dispytch`` entry-point group::

    [project.entry-points.dispytch]
    sample = "dispytch_sample.plugin"

Nothing outside :mod:`dispytch.plugins.manager` calls ``pm.hook.*`` directly: the rest of
Dispytch goes through the functions exported here.
"""

from __future__ import annotations

from dispytch.plugins.hookspecs import hookimpl, hookspec
from dispytch.plugins.manager import (
    ENTRY_POINT_GROUP,
    LoadFailure,
    get_plugin_manager,
    load_failures,
    middleware_factory,
    middlewares,
    notify,
    plugin_infos,
    reset_plugins,
    serializer_for,
    serializers,
    transport_for_url,
    transport_problems,
    transports,
)
from dispytch.plugins.records import (
    MiddlewareSpec,
    PluginInfo,
    SerializerSpec,
    TransportSpec,
)

__all__ = [
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
    "plugin_infos",
    "reset_plugins",
    "serializer_for",
    "serializers",
    "transport_for_url",
    "transport_problems",
    "transports",
]
