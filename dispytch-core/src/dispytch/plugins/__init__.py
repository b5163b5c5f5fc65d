"""Dispytch's plugin host: hook specifications, records, and the typed facade.

Third parties implement the hooks in :mod:`dispytch.plugins.hookspecs` with
:data:`hookimpl` and register the module through the ``dispytch`` entry-point group.
Nothing outside :mod:`dispytch.plugins.manager` calls ``pm.hook.*`` directly.
"""

from __future__ import annotations

from dispytch.plugins.hookspecs import hookimpl, hookspec
from dispytch.plugins.manager import (
    get_plugin_manager,
    middleware_factory,
    plugin_infos,
    reset_plugins,
    serializer_for,
    transport_for_url,
    transports,
)
from dispytch.plugins.records import (
    MiddlewareSpec,
    PluginInfo,
    SerializerSpec,
    TransportSpec,
)

__all__ = [
    "MiddlewareSpec",
    "PluginInfo",
    "SerializerSpec",
    "TransportSpec",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "middleware_factory",
    "plugin_infos",
    "reset_plugins",
    "serializer_for",
    "transport_for_url",
    "transports",
]
